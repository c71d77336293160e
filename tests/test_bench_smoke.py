"""``nextbest bench`` end to end with tiny numbers: every row is printed, with plausible figures.
No timing assertions: the figures are the bench's business (BENCHMARKS.md)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.harness import DATA_FILE

pytestmark = pytest.mark.integration

CONFIGS = ("rules", "promotion")  # without the model: training one is minutes
REFERENCES = ("(a)", "(b)", "(c)", "(c+)")
NUMBER = r"([\d,.]+|-)"


@pytest.fixture(scope="module")
def output() -> str:
    if not DATA_FILE.exists():
        pytest.skip(f"{DATA_FILE} not found")
    command = [
        sys.executable, "-m", "agents.tools.cli", "bench", "--file", str(DATA_FILE),
        "--events", "300", "--rounds", "1", "--rate", "200", "--latency-seconds", "3",
        "--configs", ",".join(CONFIGS),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _number(cell: str) -> float | None:
    return None if cell == "-" else float(cell.replace(",", ""))


def _row(output: str, section: str, name: str) -> str:
    """The line of ``name`` in the section that starts with ``section``."""
    text = output[output.index(section) :]
    match = re.search(rf"^  {re.escape(name)} .*$", text, re.MULTILINE)
    assert match, f"no row {name!r} under {section!r} in:\n{output}"
    return match.group(0)


def test_a_throughput_row_for_every_reference_and_configuration(output: str) -> None:
    for name in (*REFERENCES, *CONFIGS):
        row = _row(output, "throughput, median", name)
        median, rounds = re.search(rf"{NUMBER}\s+rounds {NUMBER}$", row).groups()
        assert _number(median) == _number(rounds) > 0  # one round: its figure is the median
    for name in CONFIGS:
        ratios = _row(output, "ratios of the medians", name)
        assert len(re.findall(r"\d+\.\d\d \(", ratios)) == 4 - (name == "rules")  # not vs itself
    assert "bar: promotion / rules" not in output  # the bar is promotion+model's
    assert re.search(r"bar: rules / \(b\) >= 0\.40: \d+\.\d\d (met|NOT met)", output)


def _latency(output: str, name: str) -> tuple[float, float | None, float | None, float]:
    """carts, decisions, decisions' p50, offers of a latency row."""
    row = _row(output, "latency at", name)
    cells = [_number(c) for c in re.findall(NUMBER, row[len(name) + 2 :])]
    assert len(cells) == 9, row
    return cells[0], cells[1], cells[2], cells[5]


def test_a_latency_row_for_every_configuration(output: str) -> None:
    carts, decisions, _, offers = _latency(output, "rules")
    assert carts > 0 and 0 < offers <= carts
    assert decisions is None  # the rules policy writes no decision records
    carts, decisions, p50, offers = _latency(output, "promotion")
    assert carts > 0 and 0 < decisions <= carts and p50 > 0 and offers <= decisions


def test_every_cart_gets_a_decision_record(output: str) -> None:
    carts, decisions, _, _ = _latency(output, "promotion")
    assert decisions == carts
