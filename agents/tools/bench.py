"""``nextbest bench``: side-by-side throughput on one embedded broker, then decision latency.

Throughput: the same replayed real events are produced once into the input topics, then each
consumer reads all of them from the start with its own group: (a) raw confluent-kafka
consume -> produce passthrough, (b) a bare Faust agent that only iterates, (c) the naive Faust
pattern (one table update + one awaited send per event), (d) the nextbest worker. Rates count
from the first event consumed to the last, so start-up and group joins are excluded.

The references run on Faust as shipped (its own per-record delivery loop, plus the embedded
broker's two adaptations: agents/runtime/transport.py); the nextbest worker on its lean delivery
loop.
(c+) is the naive agent on the lean loop too, printed so that the ratio's source shows: the
loop, the agent's batching, or both.

Latency: a fresh broker and worker, replayed events offered at a fixed rate; for each offer,
the time from the cart record's send to the offer record's timestamp.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from agents.runtime.settings import Settings
from agents.runtime.topics import ensure_topics
from agents.tools.broker import EmbeddedBroker, free_port, wait_for_port
from agents.tools.processes import PROCESSED, scrape, start_worker, stop_worker, worker_env
from agents.tools.replay import replay_events, send


@dataclass(frozen=True)
class BenchConfig:
    file: Path
    events: int = 60000
    rate: float = 1000.0
    latency_seconds: float = 20.0
    rounds: int = 3
    start: datetime = datetime(2011, 10, 1)


def _events(config: BenchConfig, limit: int) -> list:
    stream = replay_events(config.file, start=config.start)
    return [e for _, e in zip(range(limit), stream, strict=False)]


def passthrough(settings: Settings, n: int, run: str) -> float:
    """(a) confluent-kafka consume -> produce, events/s."""
    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": f"bench-passthrough-{run}",
            "enable.auto.commit": False,
        }
    )
    producer = Producer({**settings.kafka_client_config(), "linger.ms": 5})
    tps = []
    for topic in settings.topics.inputs:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        tps += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions]
    consumer.assign(tps)
    seen, first = 0, 0.0
    deadline = time.monotonic() + 120
    while seen < n and time.monotonic() < deadline:
        for message in consumer.consume(1000, 0.5):
            if message.error():
                continue
            if not seen:
                first = time.time()
            producer.produce("bench.passthrough-out", key=message.key(), value=message.value())
            seen += 1
        producer.poll(0)
    producer.flush(30)
    consumer.close()
    return seen / (time.time() - first)


def faust_reference(settings: Settings, mode: str, n: int, workdir: Path, run: str) -> float:
    """(b) bare or (c) naive Faust agent in its own process, events/s."""
    result = workdir / f"{mode}-{run}.result"
    env = worker_env(
        replace(settings, state_dir=workdir / f"state-{mode}-{run}", web_port=free_port())
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agents.tools.bench_apps",
            mode,
            str(n),
            str(result),
            f"bench-{mode}-{run}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(workdir / f"{mode}.log", "ab"),  # noqa: SIM115
    )
    try:
        deadline = time.monotonic() + 300
        while not result.exists():
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"{mode} agent did not finish; see {workdir / mode}.log")
            time.sleep(0.2)
        first, end = map(float, result.read_text().split())
        return n / (end - first)
    finally:
        stop_worker(process)


def pipeline(settings: Settings, n: int, workdir: Path, run: str) -> float:
    """(d) the nextbest worker, events/s (its three input counters on /metrics, every 100 ms)."""
    port = free_port()
    worker = start_worker(
        replace(
            settings,
            state_dir=workdir / f"state-nextbest-{run}",
            web_port=port,
            app_id=f"bench-nextbest-{run}",
        ),
        workdir / "nextbest.log",
    )
    try:
        wait_for_port("127.0.0.1", port, 60)
        first = end = 0.0
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            totals = scrape(port, PROCESSED)
            done = sum(totals.get(k, 0) for k in PROCESSED)
            now = time.time()
            if done and not first:
                first = now
            if done >= n:
                end = now
                break
            time.sleep(0.1)
        if not end:
            raise RuntimeError("the nextbest worker did not finish in time")
        return n / (end - first)
    finally:
        stop_worker(worker)


def latency(config: BenchConfig, workdir: Path) -> dict[str, float]:
    """Cart record sent -> offer record written, at a fixed offered rate."""
    n = int(config.rate * config.latency_seconds)
    events = _events(config, n)
    with EmbeddedBroker(log_path=workdir / "broker-latency.log") as broker:
        settings = replace(
            Settings.from_env(), broker_url=broker.url, embedded_broker=True, app_id="bench-latency"
        )
        ensure_topics(settings)
        port = free_port()
        worker = start_worker(
            replace(settings, state_dir=workdir / "state-latency", web_port=port),
            workdir / "latency.log",
        )
        try:
            wait_for_port("127.0.0.1", port, 60)
            time.sleep(8)  # let the worker join its group before offering load
            sent_at: dict[str, float] = {}

            def stamp(event) -> None:  # noqa: ANN001
                if event.topic_kind == "cart":
                    sent_at[event.value["event_id"]] = time.time()

            send(events, settings, rate=config.rate, on_sent=stamp)
            time.sleep(3)
            samples = _offer_latencies(settings, sent_at)
        finally:
            stop_worker(worker)
    samples.sort()
    if not samples:
        raise RuntimeError("no offers were emitted during the latency run")

    def pct(q: float) -> float:
        return samples[min(len(samples) - 1, int(q * len(samples)))] * 1000

    return {"offers": len(samples), "p50_ms": pct(0.5), "p95_ms": pct(0.95), "p99_ms": pct(0.99)}


def _offer_latencies(settings: Settings, sent_at: dict[str, float]) -> list[float]:
    topic = settings.topics.promotions
    consumer = Consumer({**settings.kafka_client_config(), "group.id": "bench-latency-reader"})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    samples = []
    quiet = time.monotonic()
    while time.monotonic() - quiet < 2:
        batch = [m for m in consumer.consume(1000, 0.3) if not m.error()]
        if batch:
            quiet = time.monotonic()
        for message in batch:
            offer = orjson.loads(message.value())
            sent = sent_at.get(offer["cart_event_id"])
            if sent is not None:
                samples.append(message.timestamp()[1] / 1000 - sent)
    consumer.close()
    return samples


NAMES = {
    "a": "confluent-kafka passthrough",
    "b": "faust bare iteration",
    "c": "faust naive (table update + send per event)",
    "c+": "faust naive on nextbest's lean delivery loop",
    "d": "nextbest pipeline",
}


def throughput(settings: Settings, n: int, workdir: Path, rounds: int) -> dict[str, list[float]]:
    """Each consumer once per round, interleaved (a, b, c, d, a, b, ...), so that a noisy
    neighbour slows every consumer alike; each run has its own consumer group."""
    rates: dict[str, list[float]] = {key: [] for key in NAMES}
    stock = replace(settings, lean_delivery=False)
    for r in range(1, rounds + 1):
        run = str(r)
        rates["a"].append(passthrough(settings, n, run))
        rates["b"].append(faust_reference(stock, "bare", n, workdir, run))
        rates["c"].append(faust_reference(stock, "naive", n, workdir, run))
        rates["c+"].append(faust_reference(settings, "naive", n, workdir, f"{run}-lean"))
        rates["d"].append(pipeline(settings, n, workdir, run))
        print(
            f"  round {r}: "
            + "  ".join(f"({k}) {v[-1]:,.0f}" for k, v in rates.items())
            + f"   d/b {rates['d'][-1] / rates['b'][-1]:.2f}"
            + f"   d/c {rates['d'][-1] / rates['c'][-1]:.2f}",
            flush=True,
        )
    return rates


def run_bench(config: BenchConfig) -> int:
    if not config.file.exists():
        print(f"data file not found: {config.file}")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="nextbest-bench-"))
    try:
        events = _events(config, config.events)
        n = len(events)
        with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
            settings = replace(Settings.from_env(), broker_url=broker.url, embedded_broker=True)
            ensure_topics(settings)
            loaded = send(events, settings)
            print(
                f"loaded {n:,} replayed real events (UCI Online Retail from "
                f"{config.start:%Y-%m-%d}) in {loaded.seconds:.1f}s; cpu count "
                f"{os.cpu_count()}; {config.rounds} interleaved rounds",
                flush=True,
            )
            rates = throughput(settings, n, workdir, config.rounds)
        median = {key: statistics.median(values) for key, values in rates.items()}
        print(f"\nthroughput, median of {config.rounds} rounds (events/s, one worker process each)")
        for key, rate in median.items():
            print(f"  ({key}) {NAMES[key]:<45} {rate:>10,.0f}")
        for ref, bar in (("b", 0.40), ("c", 3.00), ("c+", None)):
            per_round = [d / x for d, x in zip(rates["d"], rates[ref], strict=True)]
            print(
                f"  ratio d/{ref:<2} = {median['d'] / median[ref]:.2f}   ("
                + (f"bar: >= {bar:.2f}; " if bar else "information; ")
                + f"per round {min(per_round):.2f}..{max(per_round):.2f})"
            )
        figures = latency(config, workdir)
        print(
            f"\ncart -> offer latency at {config.rate:g} events/s offered for "
            f"{config.latency_seconds:g}s: {figures['offers']:,} offers, "
            f"p50 {figures['p50_ms']:.1f} ms, p95 {figures['p95_ms']:.1f} ms, "
            f"p99 {figures['p99_ms']:.1f} ms"
        )
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
