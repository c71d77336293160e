"""``nextbest bench-scale``: its accounting on made-up records (unit), then end to end with
2,000 customers, the first worker's recovery and a second worker's join, on a real embedded
broker and real worker processes (integration). No timing assertions (the figures are the
bench's business, BENCHMARKS.md): the accounting must add up and every probe cart event must get
exactly one decision."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from agents.runtime.settings import Settings
from agents.tools.bench_scale import (
    Output,
    Phase,
    Probe,
    _decides_again,
    changelog_to_read,
    figures,
    log_marks,
)
from tests.harness import DATA_FILE

SCENARIOS = ("recovery", "join")


def test_a_partition_decides_again_at_the_end_of_its_longest_silence() -> None:
    times = [9.0, 9.5, 10.2, 10.4, 14.0, 14.1, 14.3, 30.0]
    assert _decides_again(times, at=10.0, end=20.0) == (14.0, pytest.approx(3.6))
    assert _decides_again(times, at=14.5, end=20.0) == (None, None)  # nothing until the end
    assert _decides_again([12.0, 12.1], at=10.0, end=20.0) == (12.0, 2.0)  # none before


def _decision(partition: int, at: float, cart: str, action: str = "none", **extra: object):
    value = {"cart_event_id": cart, "action": action, "decision_id": f"d-{cart}", **extra}
    return Output.of(True, partition, at, orjson.dumps(value))


def _offer(at: float, cart: str, decided_at: float, percent: int = 5) -> Output:
    value = {"cart_event_id": cart, "offer_id": f"o-{cart}", "decided_at": decided_at}
    return Output.of(False, 0, at, orjson.dumps({**value, "percent_off": percent}))


def test_the_accounting_of_a_phase() -> None:
    settings = Settings(partitions=2)
    probes = [Probe(f"c{i}", i % 2, 100.0 + i) for i in range(6)] + [Probe("late", 1, 200.0)]
    outputs = [
        _decision(0, 100.1, "c0"),
        _decision(1, 101.1, "c1"),
        _decision(0, 102.1, "c2"),
        _decision(0, 102.2, "c2"),  # redelivered, the same record
        # c3: lost
        _decision(0, 104.1, "c4", "pct-5"),
        _decision(0, 104.2, "c4", "pct-10"),  # the same decision id, another action
        _decision(1, 105.1, "c5", "pct-5", propensity=0.5),
        _decision(1, 105.2, "c5", "pct-5", propensity=0.4),  # another record, the same action
        _decision(1, 200.5, "late"),
        _offer(104.1, "c4", decided_at=104.1),
        _offer(104.3, "c4", decided_at=104.3),  # sent again: identical but decided_at
        _offer(105.1, "c5", decided_at=105.1),
        _offer(105.2, "c5", decided_at=105.2, percent=10),  # sent again, different
    ]
    phases = [Phase("recovery", 99.0, True), Phase("setup", 150.0, False)]
    first, second = figures(phases, probes, outputs, settings, end=210.0)
    assert (first.probes, first.lost, first.repeated, first.different, first.actions) == (
        6, 1, 1, 2, 1,
    )  # fmt: skip
    assert (first.offers, first.offers_repeated, first.offers_different) == (2, 1, 1)
    # partition 0's longest silence ends at 102.1 (2.0 s), partition 1's at 105.1 (4.0 s)
    assert (first.seconds, first.slowest, first.stall) == (pytest.approx(6.1), 1, pytest.approx(4))
    assert (second.probes, second.lost, second.seconds) == (1, 0, None)  # setup: not timed


FAUST_LOG = """\
[2026-12-07 05:01:59,570] [1] [INFO] Executing _on_partitions_assigned
[2026-12-07 05:02:00,757] [1] [INFO] [^---Recovery]: Highwater for active changelog partitions:
+Highwater - Active--------------------+-----------+-----------+
| topic                                | partition | highwater |
+--------------------------------------+-----------+-----------+
| bench-scale-customers-changelog      | 0         | 24910     |
| 〃                                   | 1         | 24952     |
| bench-scale-journey-timers-changelog | 0         | -1        |
| 〃                                   | 1         | -1        |
+--------------------------------------+-----------+-----------+
[2026-12-07 05:02:00,760] [1] [INFO] [^---Recovery]: active offsets at start of reading:
+Reading Starts At - Active------------+-----------+--------+
| topic                                | partition | offset |
+--------------------------------------+-----------+--------+
| bench-scale-customers-changelog      | 0         | -1     |
| 〃                                   | 1         | 24000  |
+--------------------------------------+-----------+--------+
[2026-12-07 05:02:00,800] [1] [INFO] [^---Recovery]: Restoring state from changelog topics...
[2026-12-07 05:02:10,800] [1] [INFO] [^---Recovery]: Done reading from changelog topics
"""


def test_what_the_taking_worker_read_and_when_from_its_log(tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    log.write_text(FAUST_LOG)
    start = log_marks(log, 0.0)["assigned"]
    assert changelog_to_read(log, start, "bench-scale-customers-changelog") == 24911 + 952
    marks = log_marks(log, start)
    assert marks["restored"] - marks["restoring"] == pytest.approx(10.0)
    assert "rejoin" not in marks
    assert changelog_to_read(log, start + 60, "bench-scale-customers-changelog") is None


BATCH_LOG = """\
[2026-12-07 05:01:59,570] [1] [INFO] Executing _on_partitions_assigned
[2026-12-07 05:02:00,757] [1] [INFO] [^---Recovery]: Highwater for active changelog partitions:
+Highwater - Active--------------------+-----------+-----------+
| topic                                | partition | highwater |
+--------------------------------------+-----------+-----------+
| bench-scale-customers-changelog      | 0         | 24910     |
| 〃                                   | 1         | 24952     |
+--------------------------------------+-----------+-----------+
[2026-12-07 05:02:00,758] [1] [INFO] Batch recovery of active changelog partitions started: 2
[2026-12-07 05:02:03,258] [1] [INFO] Batch recovery of active changelog partitions read 49900 \
records (127000000 bytes) of 4 partitions in 2.5 s (19960 records/s); by topic: \
bench-scale-customers-changelog=49800, bench-scale-journey-timers-changelog=100
[2026-12-07 05:02:03,260] [1] [INFO] [^---Recovery]: active offsets at start of reading:
+Reading Starts At - Active------------+-----------+--------+
| topic                                | partition | offset |
+--------------------------------------+-----------+--------+
| bench-scale-customers-changelog      | 0         | 24910  |
| 〃                                   | 1         | 24890  |
+--------------------------------------+-----------+--------+
[2026-12-07 05:02:03,300] [1] [INFO] [^---Recovery]: Restoring state from changelog topics...
[2026-12-07 05:02:03,800] [1] [INFO] [^---Recovery]: Done reading from changelog topics
"""


def test_a_batch_recovery_counts_with_what_faust_read_after_it(tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    log.write_text(BATCH_LOG)
    start = log_marks(log, 0.0)["assigned"]
    # the batch read 49,800 of the customers' records; Faust the 62 written meanwhile
    assert changelog_to_read(log, start, "bench-scale-customers-changelog") == 49800 + 62
    marks = log_marks(log, start)
    assert marks["batched"] - marks["batch"] == pytest.approx(2.5)
    assert marks["restored"] - marks["restoring"] == pytest.approx(0.5)


@pytest.fixture(scope="module")
def output() -> str:
    if not DATA_FILE.exists():
        pytest.skip(f"{DATA_FILE} not found")
    command = [
        sys.executable, "-m", "agents.tools.cli", "bench-scale", "--file", str(DATA_FILE),
        "--customers", "2000", "--scenarios", ",".join(SCENARIOS), "--timeout", "180",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _row(output: str, section: str, name: str) -> list[str]:
    """The cells after ``name`` on its line in the table that starts with ``section``."""
    text = output[output.index(section) :]
    match = re.search(rf"^  {re.escape(name)}\s+(.*)$", text, re.MULTILINE)
    assert match, f"no row {name!r} under {section!r} in:\n{output}"
    return match.group(1).split()


@pytest.mark.integration
def test_every_partition_decides_again_after_each_change(output: str) -> None:
    for name in SCENARIOS:
        cells = _row(output, "scenario ", name)
        seconds, partition = float(cells[0]), cells[1]
        assert seconds > 0 and re.fullmatch(r"\(p\d\)", partition), cells
    recovery = _row(output, "scenario ", "recovery")
    assert recovery[3] == "2,000"  # the first worker read every customer's record


@pytest.mark.integration
def test_every_probe_is_decided_once(output: str) -> None:
    sent = int(re.search(r"in all: ([\d,]+) probes sent \(0 not delivered, 0 on", output)[1]
               .replace(",", ""))  # fmt: skip
    counted = 0
    for name in SCENARIOS:
        probes, lost, _repeated, different, offers, twice = _row(output, "probes sent in", name)
        assert int(probes.replace(",", "")) > 0
        assert (lost, different, twice) == ("0", "0/0", "0/0")
        counted += int(probes.replace(",", ""))
    assert counted == sent  # every probe sent belongs to a phase
    decisions = int(re.search(r"([\d,]+) decision records", output)[1].replace(",", ""))
    assert decisions >= sent
    assert "bar: every probe decided once, no decision id with two records" in output
    assert re.search(r"no offer id twice: met$", output, re.MULTILINE)
