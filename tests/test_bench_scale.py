"""``nextbest bench-scale`` end to end with 2,000 customers: the first worker's recovery and a
second worker's join, on a real embedded broker and real worker processes. No timing
assertions (the figures are the bench's business, BENCHMARKS.md): the accounting must add up and
every probe cart event must get exactly one decision."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.harness import DATA_FILE

pytestmark = pytest.mark.integration

SCENARIOS = ("recovery", "join")


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


def test_every_partition_decides_again_after_each_change(output: str) -> None:
    for name in SCENARIOS:
        cells = _row(output, "scenario ", name)
        seconds, partition = float(cells[0]), cells[1]
        assert seconds > 0 and re.fullmatch(r"\(p\d\)", partition), cells
    recovery = _row(output, "scenario ", "recovery")
    assert recovery[3] == "2,000"  # the first worker read every customer's record


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
