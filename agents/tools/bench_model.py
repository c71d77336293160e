"""``nextbest bench-model``: next-purchase serving speed on one core, then cart -> offer latency.

Inference, in this process with ``torch.set_num_threads(1)``, on real customers (the last 50
orders of customers with an order before ``--cutoff`` in the data file, sampled with
replacement), held as the worker's state records (`state_records`) and scored at the cutoff,
side by side, before and now:

- before: serve, the first serving path from the state record to the top-10
  (`order_history`, `encode_history` per history, `forward` padded to the longest history,
  softmax, top-k: `score_before`); before: encode and before: model, its two stages;
- now: serve, what the worker calls now (`served_history`, `Recommender.score_batch`:
  `encode_batch` + `NextPurchaseLSTM.serve_logits` + softmax + top-k); now: encode and
  now: model, its two stages; now: 1 bucket, the model stage with one LSTM run padded to the
  longest history instead of one per length bucket;
- TorchScript: before's model traced and frozen (checked equal to eager);
- torch.compile of before's model, with ``--compile`` only (slow to build);
- with ``--previous DIR``: previous: serve, encode and model, the same three of an earlier
  version of the serving path, imported from its source in DIR (e.g. ``git archive <commit>
  models streams schemas agents | tar -x -C DIR``) beside this one (`previous_serving`).

It first checks that now and before (and previous) return the same products and
probabilities, bit for bit. The model's LSTM kernels are built first (`Recommender.warm_up`),
as the worker does when it loads a model.

Pipeline: cart record sent -> offer record written, as in `agents.tools.bench.latency`, without
and with ``NEXTBEST_MODEL_PATH``, alternating, each on a fresh broker and worker. Unlike
`agents.tools.bench.latency`, the worker's state first receives every order (and profile) before
``--cutoff``, so the model scores the customers' real histories, not mostly empty ones.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import tempfile
import time
import urllib.request
import warnings
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from datetime import datetime
from itertools import islice
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from prometheus_client.parser import text_string_to_metric_families

from agents.runtime.settings import Settings
from agents.runtime.topics import ensure_topics
from agents.tools.bench import _offer_latencies
from agents.tools.broker import EmbeddedBroker, free_port, wait_for_port
from agents.tools.processes import (
    histogram_quantile,
    scrape,
    scrape_buckets,
    start_worker,
    stop_worker,
)
from agents.tools.replay import ReplayEvent, replay_events, send
from models.next_purchase import artifact
from models.next_purchase.encoding import (
    EncodedBatch,
    EncodedHistory,
    Order,
    encode_batch,
    encode_history,
)
from models.next_purchase.loading import epoch_seconds, load_orders, split_at
from models.next_purchase.model import NextPurchaseLSTM, PaddedBatch, Recommender, Scored, collate
from models.next_purchase.serving import order_history, served_history
from streams.state.products import order_products, orders_to_keep

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
    previous: Path | None = None  # an earlier version's source, for side-by-side columns


def real_histories(config: ModelBenchConfig) -> list[list[Order]]:
    """Worker-shaped histories (last 50 orders before the cutoff), sampled with replacement."""
    orders, _ = load_orders(config.file)
    before, _ = split_at(orders, epoch_seconds(config.cutoff))
    histories = [seq[-50:] for seq in before.values()]
    rng = np.random.default_rng(0)
    return [histories[i] for i in rng.integers(0, len(histories), config.sequences)]


def state_records(histories: list[list[Order]]) -> list[dict]:
    """The ``orders`` of the worker's customer state after these orders (products and bounds
    as `streams.state.customer_state.apply_order` keeps them): what the scorer reads."""
    states = []
    for history in histories:
        orders = [[t, f"o{j}", 0.0, order_products(p)] for j, (t, p) in enumerate(history)]
        orders = [order for order in orders if order[3]]
        del orders[: len(orders) - orders_to_keep([len(order[3]) for order in orders])]
        states.append({"orders": orders})
    return states


def score_before(rec: Recommender, histories: list[list[Order]], now: list[float]) -> list:
    """`Recommender.score_batch` before the serving fast path: `encode_history` per history,
    `forward` on the collated batch (`Recommender.probabilities`), softmax, top-k."""
    encoded = [
        encode_history(h, rec.vocab, rec.encoder, now=t)
        for h, t in zip(histories, now, strict=True)
    ]
    top = rec.probabilities(encoded).topk(TOP_K, dim=-1)
    return [
        Scored([rec.vocab.items[i] for i in idx.tolist()], val.tolist(), e.n_orders == 0)
        for e, val, idx in zip(encoded, top.values, top.indices, strict=True)
    ]


_PACKAGES = ("models", "streams", "schemas", "agents")
SERVING_LAYOUTS = (
    (
        "models.next_purchase.artifact",
        "models.next_purchase.encoding",
        "models.next_purchase.serving",
    ),
    ("models.next_purchase.artifact", "models.next_purchase.sequences", "agents.model_serving"),
    ("models.artifact", "models.sequences", "streams.model_policy"),
)
"""Where a version keeps its artifact loader, `encode_batch` and `served_history`: this one's,
then earlier layouts (the first layered one, the flat one before it)."""


@dataclass(frozen=True)
class PreviousServing:
    """An earlier version's serving path, loaded beside this one's."""

    recommender: object  # its `Recommender`
    encode_batch: Callable
    served_history: Callable


def previous_serving(source: Path, model: Path) -> PreviousServing:
    """Import the serving modules of the version whose source is in ``source`` under their
    own names (the first of `SERVING_LAYOUTS` it has) while this version's are set aside, and
    load ``model`` with them."""
    own = {name: mod for name, mod in sys.modules.items() if name.split(".")[0] in _PACKAGES}
    for name in own:
        del sys.modules[name]
    sys.path.insert(0, str(source))
    try:
        loader, encoding, serving = _import_layout(source)
        return PreviousServing(loader.load(model), encoding.encode_batch, serving.served_history)
    finally:
        sys.path.remove(str(source))
        for name in [n for n in sys.modules if n.split(".")[0] in _PACKAGES]:
            del sys.modules[name]
        sys.modules.update(own)


def _import_layout(source: Path) -> tuple[ModuleType, ...]:
    """The modules of the first of `SERVING_LAYOUTS` that the source tree has."""
    for layout in SERVING_LAYOUTS:
        try:
            return tuple(importlib.import_module(name) for name in layout)
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            if not any(name == missing or name.startswith(f"{missing}.") for name in layout):
                raise  # a module of the layout is there, something it imports is not
    raise ModuleNotFoundError(f"{source} has none of the serving layouts {SERVING_LAYOUTS}")


class _Positional(torch.nn.Module):
    """The model with the PaddedBatch fields as positional tensors, for tracing."""

    def __init__(self, model: NextPurchaseLSTM) -> None:
        super().__init__()
        self.model = model

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(PaddedBatch(*tensors))


def _tensors(batch: PaddedBatch) -> tuple[torch.Tensor, ...]:
    return tuple(getattr(batch, f.name) for f in fields(PaddedBatch))


def torchscript(
    model: NextPurchaseLSTM, example: PaddedBatch
) -> Callable[[PaddedBatch], torch.Tensor]:
    with torch.no_grad():
        traced = torch.jit.trace(_Positional(model).eval(), _tensors(example), check_trace=False)
    frozen = torch.jit.freeze(traced)
    return lambda batch: frozen(*_tensors(batch))


def _top(forward: Callable[[PaddedBatch], torch.Tensor]) -> Callable[[list], object]:
    def run(encoded: list[EncodedHistory]) -> object:
        with torch.no_grad():
            return torch.softmax(forward(collate(encoded)), dim=-1).topk(TOP_K)

    return run


@dataclass(frozen=True)
class Variant:
    """One column: ``run`` times what ``prepare`` (untimed) made of a batch of pool rows."""

    run: Callable[[object], object]
    prepare: Callable[[list[int]], object]


def throughputs(
    variants: dict[str, Variant], rows: int, batch: int, seconds: float
) -> dict[str, float]:
    """Sequences per CPU-second of each variant over the ``rows`` pool rows in consecutive
    batches: whole passes, the variants taking turns pass by pass (so a busy spell on the
    shared machine falls on all of them), until each has ``seconds`` of CPU time. CPU time of
    this thread, not wall time: torch runs on this one thread."""
    batches = {
        name: [v.prepare(list(range(i, min(i + batch, rows)))) for i in range(0, rows, batch)]
        for name, v in variants.items()
    }
    cpu = dict.fromkeys(variants, 0.0)
    passes = dict.fromkeys(variants, 0)
    for name, variant in variants.items():
        variant.run(batches[name][0])  # warm-up
    while min(cpu.values()) < seconds:
        for name, variant in variants.items():
            start = time.thread_time()
            for prepared in batches[name]:
                variant.run(prepared)
            cpu[name] += time.thread_time() - start
            passes[name] += 1
    return {name: passes[name] * rows / cpu[name] for name in variants}


def single_latencies(variants: dict[str, Variant], calls: int) -> dict[str, dict[str, float]]:
    """p50 and p99 in ms of one-sequence calls over the first ``calls`` pool rows, the
    variants taking turns call by call: wall time, and CPU time of this thread (what the call
    costs when it has the core to itself)."""
    singles = {name: [v.prepare([row]) for row in range(calls)] for name, v in variants.items()}
    wall = {name: [] for name in variants}
    cpu = {name: [] for name in variants}
    for name, variant in variants.items():
        variant.run(singles[name][0])
    for row in range(calls):
        for name, variant in variants.items():
            w, c = time.perf_counter(), time.thread_time()
            variant.run(singles[name][row])
            cpu[name].append(time.thread_time() - c)
            wall[name].append(time.perf_counter() - w)
    result = {}
    for name in variants:
        (w50, w99), (c50, c99) = (np.percentile(x[name], [50, 99]) * 1000 for x in (wall, cpu))
        result[name] = {"wall_p50": w50, "wall_p99": w99, "cpu_p50": c50, "cpu_p99": c99}
    return result


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


def _identical(
    serve: Callable[[tuple[list[dict], list[float]]], list[Scored]],
    reference: Callable[[tuple[list[dict], list[float]]], list[Scored]],
    states: list[dict],
    now: list[float],
) -> tuple[int, int]:
    """Rows whose products and probabilities are the same, bit for bit, served by ``serve``
    and by ``reference``, in batches of 256 and one by one (the first 300), out of how many."""
    same = total = 0
    for batch, rows in ((256, len(states)), (1, min(300, len(states)))):
        for i in range(0, rows, batch):
            chunk, times = states[i : i + batch], now[i : i + batch]
            got, want = serve((chunk, times)), reference((chunk, times))
            same += sum(
                (a.items, a.scores, a.cold_start) == (b.items, b.scores, b.cold_start)
                for a, b in zip(got, want, strict=True)
            )
            total += len(chunk)
    return same, total


def inference(config: ModelBenchConfig, rec: Recommender) -> None:
    histories = real_histories(config)
    states = state_records(histories)
    now = [epoch_seconds(config.cutoff)] * len(states)  # scored at the cutoff, like evaluate
    encoded = [
        encode_history(h, rec.vocab, rec.encoder, now=t)
        for h, t in zip(histories, now, strict=True)
    ]
    n_orders = np.array([e.n_orders for e in encoded])
    n_items = np.array([len(e.repeat_items) for e in encoded])
    print(
        f"{len(histories):,} real histories (customers with orders before {config.cutoff}, "
        f"scored at it): orders mean {n_orders.mean():.1f}, p50 {np.median(n_orders):.0f}, p99 "
        f"{np.percentile(n_orders, 99):.0f}; distinct products mean {n_items.mean():.0f}, p99 "
        f"{np.percentile(n_items, 99):.0f}; catalogue {len(rec.vocab) - 1:,}"
    )
    rule = rec.encoder.product_pattern
    catalogue = rec.vocab.clean_index(rule)

    def rows_of(rows: list[int]) -> tuple[list[dict], list[float]]:
        return [states[r] for r in rows], [now[r] for r in rows]

    def histories_before(chunk: tuple[list[dict], list[float]]) -> list[list[Order]]:
        return [order_history(s, t) for s, t in zip(*chunk, strict=True)]

    def histories_now(chunk: tuple[list[dict], list[float]]) -> list[list[Order]]:
        return [served_history(s, t, catalogue, rule) for s, t in zip(*chunk, strict=True)]

    def serve_now(chunk: tuple[list[dict], list[float]]) -> list[Scored]:
        return rec.score_batch(histories_now(chunk), TOP_K, chunk[1])

    def serve_before(chunk: tuple[list[dict], list[float]]) -> list[Scored]:
        return score_before(rec, histories_before(chunk), chunk[1])

    checks = {"before": serve_before}
    previous_variants = {}
    if config.previous is not None:
        prev = previous_serving(config.previous, config.model)
        prev_catalogue = prev.recommender.vocab.clean_index(rule)

        def histories_previous(chunk: tuple[list[dict], list[float]]) -> list[list[Order]]:
            return [
                prev.served_history(s, t, prev_catalogue, rule) for s, t in zip(*chunk, strict=True)
            ]

        def serve_previous(chunk: tuple[list[dict], list[float]]) -> list[Scored]:
            return prev.recommender.score_batch(histories_previous(chunk), TOP_K, chunk[1])

        def encode_previous(chunk: tuple[list[dict], list[float]]) -> object:
            p = prev.recommender
            return prev.encode_batch(histories_previous(chunk), p.vocab, p.encoder, chunk[1])

        checks["previous"] = serve_previous
        previous_variants = {
            "previous: serve": Variant(serve_previous, rows_of),
            "previous: encode": Variant(encode_previous, rows_of),
            "previous: model": Variant(
                lambda e: prev.recommender.top_k(e, TOP_K), lambda r: encode_previous(rows_of(r))
            ),
        }
    for name, reference in checks.items():
        same, total = _identical(serve_now, reference, states, now)
        print(
            f"served now vs {name}: {same:,} of {total:,} rows identical (products, probabilities)"
        )

    def encode_now(chunk: tuple[list[dict], list[float]]) -> EncodedBatch:
        return encode_batch(histories_now(chunk), rec.vocab, rec.encoder, chunk[1])

    def encode_before(chunk: tuple[list[dict], list[float]]) -> list[EncodedHistory]:
        return [
            encode_history(h, rec.vocab, rec.encoder, now=t)
            for h, t in zip(histories_before(chunk), chunk[1], strict=True)
        ]

    def encoded_before(rows: list[int]) -> list[EncodedHistory]:
        return [encoded[r] for r in rows]

    variants = {
        "before: serve": Variant(serve_before, rows_of),
        "before: encode": Variant(encode_before, rows_of),
        "before: model": Variant(_top(rec.model), encoded_before),
        **previous_variants,
        "now: serve": Variant(serve_now, rows_of),
        "now: encode": Variant(encode_now, rows_of),
        "now: model": Variant(lambda e: rec.top_k(e, TOP_K), lambda r: encode_now(rows_of(r))),
        "now: 1 bucket": Variant(
            lambda e: rec.top_k(e, TOP_K, buckets=False), lambda r: encode_now(rows_of(r))
        ),
    }
    started = time.perf_counter()
    with warnings.catch_warnings():  # the tracer's notes on constants: checked below instead
        warnings.simplefilter("ignore")
        scripted = torchscript(rec.model, collate(encoded[:64]))
    diff = _check_equal(rec.model, scripted, encoded)
    print(
        f"TorchScript (the model before, without encoding) trace + freeze: "
        f"{time.perf_counter() - started:.1f}s, max |logit diff| vs eager {diff:.2g}"
    )
    variants["TorchScript"] = Variant(_top(scripted), encoded_before)
    if config.compile:
        started = time.perf_counter()
        compiled = torch.compile(rec.model, dynamic=True)
        with torch.no_grad():
            for batch in BATCH_SIZES:
                compiled(collate(encoded[:batch]))
        diff = _check_equal(rec.model, compiled, encoded)
        print(
            f"torch.compile (dynamic): {time.perf_counter() - started:.1f}s to compile for "
            f"every batch size, max |logit diff| vs eager {diff:.2g}"
        )
        variants["torch.compile"] = Variant(_top(compiled), encoded_before)

    wall, cpu = time.perf_counter(), time.thread_time()
    print(
        "\ninference, sequences per CPU-second on one core: serve = from the customer state "
        "record to the top-10\n(encode + model + softmax + top-k); before = the first serving "
        "path (encode_history\nper history, forward padded to the longest history); previous = "
        "--previous's score_batch;\nnow = score_batch (encode_batch, serve_logits, LSTM per "
        "length bucket); 1 bucket = now, one LSTM run\npadded to the longest; TorchScript = "
        "before's model"
    )
    width = 17
    base = "previous" if config.previous is not None else "before"
    print("  batch" + "".join(f"{name:>{width}}" for name in variants) + f"  now/{base}")
    best: dict[str, float] = {}
    for batch in BATCH_SIZES:
        rates = throughputs(variants, len(states), batch, config.seconds_per_cell)
        for name, rate in rates.items():
            best[name] = max(best.get(name, 0.0), rate)
        ratio = rates["now: serve"] / rates[f"{base}: serve"]
        print(
            f"  {batch:>5}"
            + "".join(f"{rate:>{width},.0f}" for rate in rates.values())
            + f"{ratio:>11.2f}x"
        )
    share = (time.thread_time() - cpu) / (time.perf_counter() - wall)
    print(f"  (this thread had the CPU {share:.0%} of the wall time of the table)")

    calls = min(config.single_calls, len(states))
    print(
        f"\nsingle sequence, ms over {calls:,} real histories (the variants take turns)"
        "  wall p50   wall p99    cpu p50    cpu p99"
    )
    single = single_latencies(variants, calls)
    for name, figures in single.items():
        print(f"  {name:<44}" + "".join(f"{v:>11.3f}" for v in figures.values()))
    print(
        f"\ntargets (one core): batched >= 20,000 seq/s: serve now {best['now: serve']:,.0f} "
        f"({base} {best[f'{base}: serve']:,.0f}), model now {best['now: model']:,.0f} "
        f"(best batch size)"
    )
    print(
        f"  single p99 <= 2 ms (cpu / wall): serve now {single['now: serve']['cpu_p99']:.2f} / "
        f"{single['now: serve']['wall_p99']:.2f} ms ({base} "
        f"{single[f'{base}: serve']['cpu_p99']:.2f} / {single[f'{base}: serve']['wall_p99']:.2f})"
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
    """Like `agents.tools.bench.latency`, on a worker whose state first gets the customers' order
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
    result["samples_ms"] = samples
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
    print(f"  {'':<53}| model inference per micro-batch (ms)")
    print(
        f"  {'':<12}{'round':>6}{'offers':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
        f"{'batches':>9}{'seq/batch':>10}{'wall mean':>10}{'p99':>7}{'cpu mean':>9}{'p99':>7}"
        f"{'cached':>8}"
    )
    for round_ in range(config.rounds):
        for name, results in runs.items():
            r = results[round_]
            model = (
                f"{r['inference_batches']:>9,.0f}{r['sequences'] / r['inference_batches']:>10.1f}"
                f"{r['inference_mean_ms']:>10.2f}"
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
    pooled = {name: np.concatenate([r["samples_ms"] for r in rs]) for name, rs in runs.items()}
    for name, samples in pooled.items():
        p50, p95, p99_all = np.percentile(samples, [50, 95, 99])
        print(
            f"  {name:<12}{'all':>6}{len(samples):>8,}{p50:>9.1f}{p95:>9.1f}{p99_all:>9.1f}"
            "   (every round's offers pooled)"
        )
    low, mid, high = pooled_p99_difference(pooled["with model"], pooled["rules only"])
    print(
        f"  model adds {p99['with model'] - p99['rules only']:+.1f} ms to p99 (median over "
        f"rounds), {mid:+.1f} ms pooled [95% bootstrap {low:+.1f}, {high:+.1f}] (target <= "
        "10 ms)\n  the model's own share: its inference per micro-batch in the worker (ms, "
        "wall and CPU time; cached = decisions served from the per-customer cache)"
    )


def pooled_p99_difference(
    with_model: np.ndarray, rules_only: np.ndarray, draws: int = 2000
) -> tuple[float, float, float]:
    """p99(with_model) - p99(rules_only) over pooled offer latencies, and its 95% bootstrap
    interval (each side resampled on its own: the runs are independent). It sees the spread
    within rounds, not all of the spread between them."""
    rng = np.random.default_rng(0)

    def p99s(samples: np.ndarray) -> np.ndarray:
        picks = rng.integers(0, len(samples), (draws, len(samples)))
        return np.percentile(samples[picks], 99, axis=1)

    diff = p99s(with_model) - p99s(rules_only)
    low, high = np.percentile(diff, [2.5, 97.5])
    point = np.percentile(with_model, 99) - np.percentile(rules_only, 99)
    return float(low), float(point), float(high)


def run_model_bench(config: ModelBenchConfig) -> int:
    for path, what in ((config.file, "data file"), (config.model, "model artifact")):
        if not path.exists():
            print(f"{what} not found: {path} (train one with `nextbest train`)")
            return 2
    torch.set_num_threads(1)
    rec = artifact.load(config.model)
    rec.warm_up()  # as the worker does when it loads a model
    print(
        f"model {artifact.resolve(config.model).name}; torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, cpu count {os.cpu_count()}"
    )
    if config.inference:
        inference(config, rec)
    if config.pipeline:
        pipeline_latency(config)
    return 0
