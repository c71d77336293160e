"""``nextbest bench-model``: next-purchase serving speed on one core, then cart -> offer latency.

Inference, in this process with ``torch.set_num_threads(1)``, on real customer histories in the
worker's shape (the last 50 orders of every customer with an order before ``--cutoff`` in the
data file, sampled with replacement), side by side:

- serve: ``Recommender.score_batch``, what the worker calls: Python encoding of each history
  (`models.sequences.encode_history`) + batched forward + softmax + top-k;
- model (eager): the same without the encoding step (histories encoded beforehand);
- model (TorchScript): the same model traced and frozen (checked equal to eager);
- model (torch.compile), with ``--compile`` only: compiling takes about a minute here.

Pipeline: cart record sent -> offer record written, as in `streams.bench.latency`, without
and with ``NEXTBEST_MODEL_PATH``, alternating, each on a fresh broker and worker. Unlike
`streams.bench.latency`, the worker's state first receives every order (and profile) before
``--cutoff``, so the model scores the customers' real histories, not mostly empty ones.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import urllib.request
import warnings
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from datetime import datetime
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from prometheus_client.parser import text_string_to_metric_families

from models import artifact
from models.next_purchase import Batch, NextPurchaseLSTM, Recommender, collate
from models.sequences import (
    EncodedHistory,
    Order,
    encode_history,
    epoch_seconds,
    load_orders,
    split_at,
)
from streams.bench import _offer_latencies
from streams.broker import EmbeddedBroker, free_port, wait_for_port
from streams.demo import histogram_quantile, scrape, scrape_buckets, start_worker, stop_worker
from streams.replay import ReplayEvent, replay_events, send
from streams.settings import Settings
from streams.topics import ensure_topics

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TOP_K = 10


@dataclass(frozen=True)
class ModelBenchConfig:
    model: Path
    file: Path
    cutoff: str = "2011-10-01"
    sequences: int = 2048
    seconds_per_cell: float = 0.5
    single_calls: int = 1000
    compile: bool = False
    inference: bool = True
    pipeline: bool = True
    rate: float = 500.0
    latency_seconds: float = 15.0
    rounds: int = 2


def real_histories(config: ModelBenchConfig) -> list[list[Order]]:
    """Worker-shaped histories (last 50 orders before the cutoff), sampled with replacement."""
    orders, _ = load_orders(config.file)
    before, _ = split_at(orders, epoch_seconds(config.cutoff))
    histories = [seq[-50:] for seq in before.values()]
    rng = np.random.default_rng(0)
    return [histories[i] for i in rng.integers(0, len(histories), config.sequences)]


class _Positional(torch.nn.Module):
    """The model with the Batch fields as positional tensors, for tracing."""

    def __init__(self, model: NextPurchaseLSTM) -> None:
        super().__init__()
        self.model = model

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(Batch(*tensors))


def _tensors(batch: Batch) -> tuple[torch.Tensor, ...]:
    return tuple(getattr(batch, f.name) for f in fields(Batch))


def torchscript(model: NextPurchaseLSTM, example: Batch) -> Callable[[Batch], torch.Tensor]:
    with torch.no_grad():
        traced = torch.jit.trace(_Positional(model).eval(), _tensors(example), check_trace=False)
    frozen = torch.jit.freeze(traced)
    return lambda batch: frozen(*_tensors(batch))


def _top(forward: Callable[[Batch], torch.Tensor]) -> Callable[[list], object]:
    def run(encoded: list[EncodedHistory]) -> object:
        with torch.no_grad():
            return torch.softmax(forward(collate(encoded)), dim=-1).topk(TOP_K)

    return run


def throughput(run: Callable[[list], object], pool: list, batch: int, seconds: float) -> float:
    """Sequences per CPU-second of ``run`` over whole passes of ``pool`` in consecutive batches
    (at least one pass and ``seconds`` of CPU time). CPU time of this thread, not wall time:
    the machine is shared, and torch runs on this one thread."""
    run(pool[:batch])  # warm-up
    done, start = 0, time.thread_time()
    while True:
        for i in range(0, len(pool), batch):
            run(pool[i : i + batch])
            done += len(pool[i : i + batch])
        elapsed = time.thread_time() - start
        if elapsed >= seconds:
            return done / elapsed


def single_latency(run: Callable[[list], object], pool: list, calls: int) -> dict[str, float]:
    """p50 and p99 in ms of one-sequence calls over the first ``calls`` sequences: wall time,
    and CPU time of this thread (what the call costs when it has the core to itself)."""
    run(pool[:1])
    wall, cpu = [], []
    for item in pool[:calls]:
        w, c = time.perf_counter(), time.thread_time()
        run([item])
        cpu.append(time.thread_time() - c)
        wall.append(time.perf_counter() - w)
    (w50, w99), (c50, c99) = (np.percentile(x, [50, 99]) * 1000 for x in (wall, cpu))
    return {"wall_p50": w50, "wall_p99": w99, "cpu_p50": c50, "cpu_p99": c99}


def _check_equal(reference: Callable, other: Callable, encoded: list) -> float:
    diffs = []
    for batch in (1, 7, 64, 256):
        with torch.no_grad():
            a, b = reference(collate(encoded[:batch])), other(collate(encoded[:batch]))
        finite = torch.isfinite(a)
        if not torch.equal(finite, torch.isfinite(b)):
            return float("inf")
        diffs.append(float((a[finite] - b[finite]).abs().max()))
    return max(diffs)


def inference(config: ModelBenchConfig, rec: Recommender) -> None:
    histories = real_histories(config)
    encoded = [encode_history(h, rec.vocab, rec.encoder) for h in histories]
    n_orders = np.array([e.n_orders for e in encoded])
    n_items = np.array([len(e.repeat_items) for e in encoded])
    print(
        f"{len(histories):,} real histories (customers with orders before {config.cutoff}): "
        f"orders mean {n_orders.mean():.1f}, p50 {np.median(n_orders):.0f}, p99 "
        f"{np.percentile(n_orders, 99):.0f}; distinct products mean {n_items.mean():.0f}, p99 "
        f"{np.percentile(n_items, 99):.0f}; catalogue {len(rec.vocab) - 1:,}"
    )
    model = rec.model
    variants: dict[str, tuple[Callable[[list], object], list]] = {
        "serve": (lambda hs: rec.score_batch(hs, k=TOP_K), histories),
        "model eager": (_top(model), encoded),
    }
    started = time.perf_counter()
    with warnings.catch_warnings():  # the tracer's notes on constants: checked below instead
        warnings.simplefilter("ignore")
        scripted = torchscript(model, collate(encoded[:64]))
    diff = _check_equal(model, scripted, encoded)
    print(
        f"TorchScript trace + freeze: {time.perf_counter() - started:.1f}s, "
        f"max |logit diff| vs eager {diff:.2g}"
    )
    variants["model TorchScript"] = (_top(scripted), encoded)
    if config.compile:
        started = time.perf_counter()
        compiled = torch.compile(model, dynamic=True)
        with torch.no_grad():
            for batch in BATCH_SIZES:
                compiled(collate(encoded[:batch]))
        diff = _check_equal(model, compiled, encoded)
        print(
            f"torch.compile (dynamic): {time.perf_counter() - started:.1f}s to compile for "
            f"every batch size, max |logit diff| vs eager {diff:.2g}"
        )
        variants["model compile"] = (_top(compiled), encoded)

    by_length = sorted(encoded, key=lambda e: e.n_orders)
    variants["TorchScript, sorted"] = (_top(scripted), by_length)
    variants["encode only"] = (
        lambda hs: [encode_history(h, rec.vocab, rec.encoder) for h in hs],
        histories,
    )
    wall, cpu = time.perf_counter(), time.thread_time()
    print(
        "\ninference, sequences per CPU-second on one core (serve = encoding + model; model = no "
        "encoding;\nsorted = the same sequences batched by history length, so less padding)"
    )
    print("  batch" + "".join(f"{name:>21}" for name in variants))
    best: dict[str, float] = {}
    for batch in BATCH_SIZES:
        row = []
        for name, (run, pool) in variants.items():
            rate = throughput(run, pool, batch, config.seconds_per_cell)
            best[name] = max(best.get(name, 0.0), rate)
            row.append(f"{rate:>21,.0f}")
        print(f"  {batch:>5}" + "".join(row))
    share = (time.thread_time() - cpu) / (time.perf_counter() - wall)
    print(f"  (this thread had the CPU {share:.0%} of the wall time of the table)")

    print(
        f"\nsingle sequence, ms over {config.single_calls:,} real histories"
        "      wall p50   wall p99    cpu p50    cpu p99"
    )
    single = {}
    for name, (run, pool) in variants.items():
        if name == "TorchScript, sorted":
            continue
        single[name] = single_latency(run, pool, config.single_calls)
        print(f"  {name:<44}" + "".join(f"{v:>11.3f}" for v in single[name].values()))
    model_names = [n for n in variants if n.startswith(("model", "TorchScript"))]
    fastest = max(model_names, key=best.get)
    quickest = min(model_names, key=lambda n: single.get(n, {"cpu_p99": np.inf})["cpu_p99"])
    print(
        f"\ntargets (one core): batched >= 20,000 seq/s: serve {best['serve']:,.0f}, "
        f"{fastest} {best[fastest]:,.0f} (best batch size)"
    )
    print(
        f"  single p99 <= 2 ms (cpu / wall): serve {single['serve']['cpu_p99']:.2f} / "
        f"{single['serve']['wall_p99']:.2f} ms, {quickest} {single[quickest]['cpu_p99']:.2f} / "
        f"{single[quickest]['wall_p99']:.2f} ms"
    )


def _labelled(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _handled(totals: dict[str, float]) -> float:
    return totals.get("nextbest_events_total", 0) + totals.get("nextbest_dead_letters_total", 0)


def warm_latency(
    config: ModelBenchConfig,
    model: str,
    history: list[ReplayEvent],
    load: list[ReplayEvent],
    workdir: Path,
) -> dict[str, float]:
    """Like `streams.bench.latency`, on a worker whose state first gets the customers' order
    history (every order and profile before the start, sent as fast as possible), so that the
    model scores real histories instead of mostly empty ones. ``model`` empty: rules only."""
    workdir.mkdir(parents=True)
    with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
        settings = replace(
            Settings.from_env(),
            broker_url=broker.url,
            embedded_broker=True,
            app_id="bench-model-latency",
            model_path=model,
        )
        ensure_topics(settings)
        port = free_port()
        worker = start_worker(
            replace(settings, state_dir=workdir / "state", web_port=port), workdir / "worker.log"
        )
        try:
            wait_for_port("127.0.0.1", port, 60)
            send(history, settings)
            deadline = time.monotonic() + 300
            while _handled(scrape(port)) < len(history):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"history not processed; see {workdir / 'worker.log'}")
                time.sleep(0.5)
            time.sleep(5)  # let the worker flush the history's state writes before the load
            sent_at: dict[str, float] = {}

            def stamp(event: ReplayEvent) -> None:
                if event.topic_kind == "cart":
                    sent_at[event.value["event_id"]] = time.time()

            send(load, settings, rate=config.rate, on_sent=stamp)
            time.sleep(3)
            samples = np.array(_offer_latencies(settings, sent_at)) * 1000
            served = _labelled(port)
            buckets = scrape_buckets(port, "nextbest_model_inference_seconds")
            cpu_buckets = scrape_buckets(port, "nextbest_model_inference_cpu_seconds")
        finally:
            stop_worker(worker)
    if not len(samples):
        raise RuntimeError("no offers were emitted during the latency run")
    p50, p95, p99 = np.percentile(samples, [50, 95, 99])
    result = {"offers": len(samples), "p50_ms": p50, "p95_ms": p95, "p99_ms": p99}
    batches = served.get(("nextbest_model_inference_seconds_count", ()), 0.0)
    if batches:
        result["inference_batches"] = batches
        result["inference_mean_ms"] = (
            served[("nextbest_model_inference_seconds_sum", ())] / batches * 1000
        )
        from_model = served.get(("nextbest_model_predictions_total", (("source", "model"),)), 0)
        from_cache = served.get(("nextbest_model_predictions_total", (("source", "cache"),)), 0)
        result["cache_share"] = from_cache / max(from_model + from_cache, 1)
        result["inference_p99_ms"] = (histogram_quantile(0.99, buckets) or 0.0) * 1000
        result["cpu_mean_ms"] = (
            served[("nextbest_model_inference_cpu_seconds_sum", ())] / batches * 1000
        )
        result["cpu_p99_ms"] = (histogram_quantile(0.99, cpu_buckets) or 0.0) * 1000
        result["sequences"] = from_model
    return result


def pipeline_latency(config: ModelBenchConfig) -> None:
    """Cart -> offer latency without and with the model, alternating, each on a fresh broker
    and worker warmed with the same order history."""
    start = datetime.fromisoformat(config.cutoff)
    history = [
        e for e in replay_events(config.file, end=start) if e.topic_kind in ("orders", "profiles")
    ]
    load = list(
        islice(replay_events(config.file, start=start), int(config.rate * config.latency_seconds))
    )
    runs: dict[str, list[dict]] = {"rules only": [], "with model": []}
    workdir = Path(tempfile.mkdtemp(prefix="nextbest-bench-model-"))
    try:
        for round_ in range(config.rounds):
            for name, model in (("rules only", ""), ("with model", str(config.model))):
                run_dir = workdir / f"{name.replace(' ', '-')}-{round_}"
                runs[name].append(warm_latency(config, model, history, load, run_dir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"\ncart -> offer latency, full pipeline: worker state warmed with {len(history):,} "
        f"order and profile events before {config.cutoff},\nthen {len(load):,} replayed events "
        f"offered at {config.rate:g}/s; one worker, model on 1 torch thread; "
        f"{config.rounds} alternating round(s)"
    )
    print(f"  {'':<53}| model inference per micro-batch, ms")
    print(
        f"  {'':<12}{'round':>6}{'offers':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
        f"{'batches':>9}{'wall mean':>10}{'p99':>7}{'cpu mean':>9}{'p99':>7}{'cached':>8}"
    )
    for round_ in range(config.rounds):
        for name, results in runs.items():
            r = results[round_]
            model = (
                f"{r['inference_batches']:>9,.0f}{r['inference_mean_ms']:>10.2f}"
                f"{r['inference_p99_ms']:>7.1f}{r['cpu_mean_ms']:>9.2f}{r['cpu_p99_ms']:>7.1f}"
                f"{r['cache_share']:>8.0%}"
                if "inference_batches" in r
                else ""
            )
            print(
                f"  {name:<12}{round_ + 1:>6}{r['offers']:>8,}{r['p50_ms']:>9.1f}"
                f"{r['p95_ms']:>9.1f}{r['p99_ms']:>9.1f}{model}"
            )
    p99 = {name: float(np.median([r["p99_ms"] for r in rs])) for name, rs in runs.items()}
    print(
        f"  model adds {p99['with model'] - p99['rules only']:+.1f} ms to p99 (median over "
        f"rounds; target <= 10 ms)\n  the model's own share: its inference per micro-batch in "
        "the worker (ms, wall and CPU time; cached = decisions served from the per-customer cache)"
    )


def run_model_bench(config: ModelBenchConfig) -> int:
    for path, what in ((config.file, "data file"), (config.model, "model artifact")):
        if not path.exists():
            print(f"{what} not found: {path} (train one with `nextbest train`)")
            return 2
    torch.set_num_threads(1)
    rec = artifact.load(config.model)
    print(
        f"model {artifact.resolve(config.model).name}; torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, cpu count {os.cpu_count()}"
    )
    if config.inference:
        inference(config, rec)
    if config.pipeline:
        pipeline_latency(config)
    return 0
