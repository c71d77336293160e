"""The bench's worker CPU per event: read from /proc, printed per configuration."""

from __future__ import annotations

import os
import sys
import time

import pytest

from agents.tools.bench import print_throughput, process_cpu_s

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def test_a_process_cpu_time_grows_with_the_work_it_does():
    before = process_cpu_s(os.getpid())
    started = time.process_time()
    while time.process_time() - started < 0.2:
        sum(range(10_000))
    after = process_cpu_s(os.getpid())
    assert before is not None and after - before >= 0.1


def test_no_process_no_figure():
    assert process_cpu_s(2**22 + 12345) is None  # above Linux's largest pid


def test_the_cpu_rows_are_the_medians_of_the_measured_rounds(capsys):
    rates = {"a": [1.0, 1.0], "b": [1.0, 1.0], "c": [1.0, 1.0], "c+": [1.0, 1.0], "rules": [2, 4]}
    print_throughput(rates, 2, {"rules": [100.0, None, 120.0]})
    out = capsys.readouterr().out
    assert "worker CPU per event" in out
    assert "  rules              110.0   rounds 100.0 / 120.0" in out
    print_throughput(rates, 2, {"rules": [None, None]})
    assert "worker CPU per event" not in capsys.readouterr().out
