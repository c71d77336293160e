"""The process harness shared by ``nextbest demo``, the benchmarks and the integration tests:
worker subprocesses started with given settings, and what they report on ``/metrics``.
(The embedded broker they run against is `agents.tools.broker`.)"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from agents.runtime.settings import Settings

WORKER_COMMAND = ("agents.tools.cli", "worker")
#: the counters whose sum is the number of input records a worker has handled
PROCESSED = (
    "nextbest_events_total",
    "nextbest_dead_letters_total",
    "nextbest_duplicate_events_total",
)


def worker_env(settings: Settings) -> dict[str, str]:
    """Environment for a worker subprocess that uses ``settings``."""
    return {**os.environ, **settings.to_env()}


def start_worker(
    settings: Settings, log_path: Path, command: Sequence[str] = WORKER_COMMAND
) -> subprocess.Popen[bytes]:
    """``python -m <command>`` with ``settings`` in its environment, its output appended to
    ``log_path``."""
    log = open(log_path, "ab")  # noqa: SIM115 - owned by the child process
    return subprocess.Popen(
        [sys.executable, "-m", *command],
        env=worker_env(settings),
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def stop_worker(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def scrape(port: int, names: tuple[str, ...] = ()) -> dict[str, float]:
    """Sum of each sample name on a worker's /metrics (labels summed away); only ``names``
    when given (a cheaper answer for frequent polls)."""
    query = "?" + "&".join(f"name[]={name}" for name in names) if names else ""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics{query}", timeout=5) as response:
        text = response.read().decode()
    totals: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] += sample.value
    return dict(totals)


def scrape_samples(port: int, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of metric ``name`` on a worker's /metrics, with its labels."""
    url = f"http://127.0.0.1:{port}/metrics?name[]={name}"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return [
        (dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def scrape_buckets(port: int, histogram: str) -> list[tuple[float, float]]:
    """``[(upper bound, cumulative count), ...]`` of a histogram on /metrics, labels summed."""
    buckets: Counter[float] = Counter()
    for labels, value in scrape_samples(port, f"{histogram}_bucket"):
        buckets[float(labels["le"])] += value
    return sorted(buckets.items())


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The q-quantile by linear interpolation within buckets, as Prometheus computes it."""
    if not buckets or buckets[-1][1] == 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            share = (rank - lower_count) / (count - lower_count)
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound
