"""``nextbest bench``: side-by-side throughput on one embedded broker, then decision latency.

Throughput: the same replayed real events are produced once into the input topics, then each
consumer reads all of them from the start with its own group: (a) raw confluent-kafka
consume -> produce passthrough, (b) a bare Faust agent that only iterates, (c) the naive Faust
pattern (one table update + one awaited send per event), then the nextbest worker in each of
its production configurations (`WORKER_CONFIGS`, ``--configs``): the threshold rules (d), the
rules with the next-purchase model, the promotion policy, and the promotion policy with the
model (what a shop runs). Every consumer runs once per round, interleaved. Rates count from the
first event consumed to the last, so start-up and group joins are excluded. Each worker run has
its own session-merges topic, so that no run reads the merges of an earlier one.

The references run on Faust as shipped (its own per-record delivery loop, plus the embedded
broker's two adaptations: agents/runtime/transport.py); the nextbest worker on its lean delivery
loop. (c+) is the naive agent on the lean loop too, printed so that the ratio's source shows: the
loop, the agent's batching, or both.

The model is the demo's (`agents.tools.demo_model.prepare_model`): the artifact under
``--model`` if one loads, else a quick one trained there on the orders before the replay.

Latency, per configuration: a fresh broker and worker, whose state first gets the earlier orders
and profiles of the replayed customers (as the demo's), then replayed events offered at a fixed
rate. For each cart change that the policy decides on (every cart event but checkout and clear),
the time from the cart record's send to the timestamp of its decision record (promotion policy:
one per cart, holdout and no-offer included; the carts without one are counted) and of its
offer record, when it gets one. The rules policy writes no decision records: cart -> offer
only.
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

import numpy as np
import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from agents.pipeline import NO_OFFER_CART_EVENTS
from agents.runtime.settings import Settings
from agents.runtime.topics import ensure_topics
from agents.tools.broker import EmbeddedBroker, free_port, wait_for_port
from agents.tools.demo_model import prepare_model, send_order_history
from agents.tools.processes import PROCESSED, scrape, start_worker, stop_worker, worker_env
from agents.tools.replay import ReplayEvent, replay_events, send


@dataclass(frozen=True)
class WorkerConfig:
    """A production configuration of the nextbest worker."""

    name: str
    policy: str  # NEXTBEST_POLICY
    model: bool  # NEXTBEST_MODEL_PATH: the bench's model, or none
    title: str


WORKER_CONFIGS = {
    c.name: c
    for c in (
        WorkerConfig("rules", "rules", False, "threshold rules, no model"),
        WorkerConfig("rules+model", "rules", True, "threshold rules + model"),
        WorkerConfig("promotion", "promotion", False, "promotion policy, no model"),
        WorkerConfig("promotion+model", "promotion", True, "promotion policy + model"),
    )
}
#: (numerator, denominator, the least ratio of the medians): the issues' throughput bars
THROUGHPUT_BARS = (("rules", "b", 0.40), ("rules", "c", 3.00), ("promotion+model", "rules", 0.80))
#: (configuration, output, percentile, the most ms): the latency bars at 1,000 events/s offered
LATENCY_BARS = (
    ("promotion+model", "decision", 50, 20.0),
    ("promotion+model", "decision", 99, 60.0),
    ("rules", "offer", 50, 15.0),
)


@dataclass(frozen=True)
class BenchConfig:
    file: Path
    events: int = 60000
    rate: float = 1000.0
    latency_seconds: float = 20.0
    rounds: int = 3
    start: datetime = datetime(2011, 10, 1)
    configs: tuple[str, ...] = tuple(WORKER_CONFIGS)
    model: Path = Path("var/models/next_purchase")


def _events(config: BenchConfig, limit: int) -> list[ReplayEvent]:
    stream = replay_events(config.file, start=config.start)
    return [e for _, e in zip(range(limit), stream, strict=False)]


def _slug(name: str) -> str:
    """A configuration's name as it may appear in an app id, a topic or a file name."""
    return name.replace("+", "-")


def worker_settings(settings: Settings, config: WorkerConfig, model: str) -> Settings:
    return replace(settings, policy=config.policy, model_path=model if config.model else "")


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


POLL_S = 0.1


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) process ``pid`` has used; None where ``/proc`` cannot say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class WorkerRun:
    rate: float  # events/s, from the first event processed to the last
    #: the worker process's CPU per event over the same span (µs; None: not measurable here).
    #: Less sensitive than the rate to a busy machine: it counts what the worker spent, not
    #: how long it waited for a core.
    cpu_us: float | None


def pipeline(settings: Settings, n: int, workdir: Path, run: str) -> WorkerRun:
    """The nextbest worker with ``settings``: events/s (its three input counters on /metrics,
    every `POLL_S`) and its CPU per event between the first poll that saw events and the one
    that saw them all."""
    port = free_port()
    app_id = f"bench-nextbest-{run}"
    settings = replace(
        settings,
        state_dir=workdir / f"state-nextbest-{run}",
        web_port=port,
        app_id=app_id,
        topics=replace(settings.topics, merges=f"{app_id}.merges"),
    )
    ensure_topics(settings)
    worker = start_worker(settings, workdir / f"nextbest-{run}.log")
    try:
        wait_for_port("127.0.0.1", port, 60)
        first = end = 0.0
        first_done = first_cpu = end_cpu = None
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            totals = scrape(port, PROCESSED)
            done = sum(totals.get(k, 0) for k in PROCESSED)
            now, cpu = time.time(), process_cpu_s(worker.pid)
            if done and not first:
                first, first_done, first_cpu = now, done, cpu
            if done >= n:
                end, end_cpu = now, cpu
                break
            time.sleep(POLL_S)
        if not end:
            raise RuntimeError(f"the nextbest worker did not finish; see nextbest-{run}.log")
        cpu_us = None
        if first_cpu is not None and end_cpu is not None and done > first_done:
            cpu_us = (end_cpu - first_cpu) / (done - first_done) * 1e6
        return WorkerRun(n / max(end - first, POLL_S), cpu_us)  # within one poll: one poll long
    finally:
        stop_worker(worker)


REFERENCES = {
    "a": "confluent-kafka passthrough",
    "b": "faust bare iteration",
    "c": "faust naive (table update + send per event)",
    "c+": "faust naive on nextbest's lean delivery loop",
}


def _label(key: str) -> str:
    return f"({key})" if key in REFERENCES else key


def throughput(
    settings: Settings, n: int, workdir: Path, rounds: int, workers: dict[str, Settings]
) -> tuple[dict[str, list[float]], dict[str, list[float | None]]]:
    """Each consumer once per round, interleaved (a, b, c, c+, then every worker configuration,
    a, b, ...), so that a noisy neighbour slows every consumer alike; each run has its own
    consumer group. The rates of every consumer, and the CPU per event of every worker run."""
    rates: dict[str, list[float]] = {key: [] for key in (*REFERENCES, *workers)}
    cpu: dict[str, list[float | None]] = {key: [] for key in workers}
    stock = replace(settings, lean_delivery=False)
    for r in range(1, rounds + 1):
        run = str(r)
        rates["a"].append(passthrough(settings, n, run))
        rates["b"].append(faust_reference(stock, "bare", n, workdir, run))
        rates["c"].append(faust_reference(stock, "naive", n, workdir, run))
        rates["c+"].append(faust_reference(settings, "naive", n, workdir, f"{run}-lean"))
        for name, worker in workers.items():
            measured = pipeline(worker, n, workdir, f"{_slug(name)}-{run}")
            rates[name].append(measured.rate)
            cpu[name].append(measured.cpu_us)
        print(
            f"  round {r}: " + "  ".join(f"{_label(k)} {v[-1]:,.0f}" for k, v in rates.items()),
            flush=True,
        )
    return rates, cpu


def print_throughput(
    rates: dict[str, list[float]], rounds: int, cpu: dict[str, list[float | None]] | None = None
) -> None:
    """The medians, each round's figure, the ratios of the medians (with their spread over the
    rounds), the bars, and each worker's CPU per event."""
    median = {key: statistics.median(values) for key, values in rates.items()}
    print(f"\nthroughput, median of {rounds} round(s) (events/s, one worker process each)")
    for key, rate in median.items():
        title = REFERENCES.get(key) or f"nextbest worker: {WORKER_CONFIGS[key].title}"
        each = " / ".join(f"{v:,.0f}" for v in rates[key])
        print(f"  {_label(key):<16} {title:<45} {rate:>10,.0f}   rounds {each}")

    def ratio(num: str, den: str) -> str:
        per_round = [x / y for x, y in zip(rates[num], rates[den], strict=True)]
        return f"{median[num] / median[den]:.2f} ({min(per_round):.2f}..{max(per_round):.2f})"

    workers = [key for key in rates if key not in REFERENCES]
    dens = [d for d in ("rules", "b", "c", "c+") if d in rates]
    print(
        "ratios of the medians (range over the rounds)\n  "
        + f"{'':<16}"
        + "".join(f"{'vs ' + _label(d):<18}" for d in dens).rstrip()
    )
    for num in workers:
        cells = [ratio(num, d) if d != num else "" for d in dens]
        print((f"  {num:<16}" + "".join(f"{c:<18}" for c in cells)).rstrip())
    for num, den, least in THROUGHPUT_BARS:
        if num in rates and den in rates:
            value = median[num] / median[den]
            print(
                f"  bar: {num} / {_label(den)} >= {least:.2f}: {value:.2f} "
                + ("met" if value >= least else "NOT met")
            )
    measured = {k: [v for v in vs if v is not None] for k, vs in (cpu or {}).items()}
    if any(measured.values()):
        print("worker CPU per event (µs, user + system, median of the rounds; rounds)")
        for key, values in measured.items():
            if values:
                each = " / ".join(f"{v:.1f}" for v in values)
                print(f"  {key:<16} {statistics.median(values):>7.1f}   rounds {each}")


@dataclass
class LatencyRun:
    """One configuration's latency run: cart event id -> seconds from the cart record's send to
    the timestamp of its first decision record (None: the policy writes none) and offer record."""

    carts: int
    decisions: dict[str, float] | None
    offers: dict[str, float]


def latency(
    config: BenchConfig, worker: Settings, name: str, events: list[ReplayEvent], workdir: Path
) -> LatencyRun:
    """A fresh broker and a worker with ``worker``'s policy and model; the replayed customers'
    order history first, then ``events`` offered at ``config.rate``."""
    tag = _slug(name)
    with EmbeddedBroker(log_path=workdir / f"broker-latency-{tag}.log") as broker:
        settings = replace(
            worker,
            broker_url=broker.url,
            embedded_broker=True,
            app_id=f"bench-latency-{tag}",
            state_dir=workdir / f"state-latency-{tag}",
            web_port=free_port(),
        )
        ensure_topics(settings)
        process = start_worker(settings, workdir / f"latency-{tag}.log")
        try:
            wait_for_port("127.0.0.1", settings.web_port, 60)
            time.sleep(8)  # let the worker join its group before offering load
            send_order_history(settings, config.file, events, settings.web_port)
            time.sleep(3)  # let the worker flush the history's state writes
            sent_at: dict[str, float] = {}

            def stamp(event: ReplayEvent) -> None:
                if (
                    event.topic_kind == "cart"
                    and event.value["event_type"] not in NO_OFFER_CART_EVENTS
                ):
                    sent_at[event.value["event_id"]] = time.time()

            send(events, settings, rate=config.rate, on_sent=stamp)
            time.sleep(3)
            offers = output_latencies(settings, settings.topics.promotions, sent_at)
            decisions = (
                output_latencies(settings, settings.topics.decisions, sent_at)
                if settings.policy == "promotion"
                else None
            )
        finally:
            stop_worker(process)
    return LatencyRun(len(sent_at), decisions, offers)


def output_latencies(settings: Settings, topic: str, sent_at: dict[str, float]) -> dict[str, float]:
    """Cart event id -> seconds from its send (``sent_at``) to the timestamp of the first record
    on ``topic`` for it (records joined on ``cart_event_id``), read until 2 s pass without one."""
    consumer = Consumer({**settings.kafka_client_config(), "group.id": f"bench-reader-{topic}"})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    latencies: dict[str, float] = {}
    quiet = time.monotonic()
    while time.monotonic() - quiet < 2:
        batch = [m for m in consumer.consume(1000, 0.3) if not m.error()]
        if batch:
            quiet = time.monotonic()
        for message in batch:
            cart_event_id = orjson.loads(message.value())["cart_event_id"]
            sent = sent_at.get(cart_event_id)
            if sent is not None:
                seconds = message.timestamp()[1] / 1000 - sent
                latencies[cart_event_id] = min(seconds, latencies.get(cart_event_id, seconds))
    consumer.close()
    return latencies


def _offer_latencies(settings: Settings, sent_at: dict[str, float]) -> list[float]:
    """Seconds from each cart's send to its offer record (`agents.tools.bench_model`'s)."""
    return list(output_latencies(settings, settings.topics.promotions, sent_at).values())


def _percentiles(latencies: dict[str, float] | None) -> str:
    """``count p50 p95 p99`` (ms) as table cells; dashes where there is nothing to measure."""
    if latencies is None:
        return f"{'-':>10}{'-':>8}{'-':>8}{'-':>8}"
    if not latencies:
        return f"{0:>10,}{'-':>8}{'-':>8}{'-':>8}"
    p50, p95, p99 = np.percentile(np.fromiter(latencies.values(), float) * 1000, [50, 95, 99])
    return f"{len(latencies):>10,}{p50:>8.1f}{p95:>8.1f}{p99:>8.1f}"


def print_latency(config: BenchConfig, runs: dict[str, LatencyRun], customers: int) -> None:
    print(
        f"\nlatency at {config.rate:,g} events/s offered for {config.latency_seconds:g} s, one "
        f"worker per configuration on a fresh broker, its state first given the earlier orders "
        f"of the replay's {customers:,} customers;\nms from a cart record's send to its decision "
        "record and to its offer record (cart changes but checkout and clear; the rules policy "
        "writes no decision records: cart -> offer only)"
    )
    print(
        f"  {'':<16}{'carts':>8}{'decisions':>10}{'p50':>8}{'p95':>8}{'p99':>8}"
        f"{'offers':>10}{'p50':>8}{'p95':>8}{'p99':>8}"
    )
    for name, run in runs.items():
        print(f"  {name:<16}{run.carts:>8,}{_percentiles(run.decisions)}{_percentiles(run.offers)}")
    for name, run in runs.items():
        if run.decisions is not None and len(run.decisions) < run.carts:
            print(f"  {name}: {run.carts - len(run.decisions):,} carts without a decision record")
    for name, output, q, most in LATENCY_BARS:
        run = runs.get(name)
        latencies = run and (run.decisions if output == "decision" else run.offers)
        if latencies:
            value = float(np.percentile(np.fromiter(latencies.values(), float), q)) * 1000
            print(
                f"  bar: {name} cart -> {output} p{q} <= {most:g} ms: {value:.1f} ms "
                + ("met" if value <= most else "NOT met")
                + ("" if config.rate == 1000 else f" (offered {config.rate:,g}/s, not 1,000)")
            )


def run_bench(config: BenchConfig) -> int:
    unknown = [name for name in config.configs if name not in WORKER_CONFIGS]
    if unknown or not config.configs:
        print(f"unknown configuration(s) {unknown}: choose from {', '.join(WORKER_CONFIGS)}")
        return 2
    if not config.file.exists():
        print(f"data file not found: {config.file}")
        return 2
    chosen = [WORKER_CONFIGS[name] for name in config.configs]
    model = ""
    if any(c.model for c in chosen):
        root = prepare_model(config.model, config.file, config.start)
        if root is None:
            print("no next-purchase model: run the configurations without one (--configs)")
            return 2
        model = str(root)
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
                f"{os.cpu_count()}; {config.rounds} interleaved round(s); worker "
                f"configurations: {', '.join(config.configs)}",
                flush=True,
            )
            workers = {c.name: worker_settings(settings, c, model) for c in chosen}
            rates, cpu = throughput(settings, n, workdir, config.rounds, workers)
        print_throughput(rates, config.rounds, cpu)
        load = _events(config, int(config.rate * config.latency_seconds))
        customers = len({e.value["customer_id"] for e in load if e.value.get("customer_id")})
        base = Settings.from_env()
        runs = {
            c.name: latency(config, worker_settings(base, c, model), c.name, load, workdir)
            for c in chosen
        }
        print_latency(config, runs, customers)
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
