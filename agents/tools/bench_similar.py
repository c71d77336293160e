"""``nextbest bench-similar``: what the bought-together table costs to serve.

Per cart, in this process on one torch thread, on real carts: the customers with an order
before ``--cutoff`` and one after it, the products of that later order as the cart and their
orders before it as their state (`agents.tools.bench_model.state_records`), scored in
micro-batches of ``--batch`` carts by `NextPurchaseScorer.signals`, side by side with and
without the version's table (the same model otherwise):

- cold: a fresh scorer per batch (one LSTM inference per customer, as for a customer's first
  cart of a session);
- warm: the batch again (the customers' rankings come from the scorer's cache, as for the
  later carts of a session; the bought-together lookup runs for every cart);
- the lookup alone: `SimilarItems.bought_with` for each cart.

Each batch runs both variants alternately ``REPEATS`` times and keeps each one's fastest: on a
shared machine a busy neighbour slows some repeats, not the minimum.

Per request, over real HTTP: a broker and a worker serving the model (``NEXTBEST_MODEL_PATH``),
then ``--calls`` sequential requests each of ``GET /similar-items`` (known products, n=10),
``GET /product-recommendations`` (customers of the carts, n=10; the worker has no state for
them here, so it scores an empty history: a lower bound) and ``GET /ready`` (no model: the web
server's own floor), interleaved; and the table's own `SimilarItems.similar` per call.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from agents.runtime.settings import Settings
from agents.runtime.topics import ensure_topics
from agents.tools.bench_model import state_records
from agents.tools.broker import EmbeddedBroker, free_port, wait_for_port
from agents.tools.processes import start_worker, stop_worker
from models.next_purchase.loading import epoch_seconds, load_orders, split_at
from models.next_purchase.serving import LoadedModel, ModelStore, NextPurchaseScorer
from streams.decisions import DecisionContext
from streams.merchants.catalog import DEFAULT_MERCHANTS, load_merchants

MERCHANT = "uci-gift-shop"
TOKEN = "bench-similar-token-0123456789"
REPEATS = 5


def carts(
    data: str, cutoff: str, merchant_file: Path, limit: int
) -> tuple[list[DecisionContext], list[str]]:
    """Real carts (a customer's first order after the cutoff) with the customer's state."""
    merchant = load_merchants(merchant_file)[MERCHANT]
    orders, _ = load_orders(data)
    before, after = split_at(orders, epoch_seconds(cutoff))
    customers = sorted(c for c in after if c in before)[:limit]
    states = state_records([before[c] for c in customers])
    contexts = []
    for customer, state in zip(customers, states, strict=True):
        ts, products = after[customer][0]
        state = {**state, "cart": {"lines": [[p, 1, 1.0] for p in products]}}
        key = f"{MERCHANT}:c:{customer}"
        contexts.append(DecisionContext(merchant, key, state, 100.0, "GBP", ts, f"e-{customer}"))
    return contexts, customers


class _Fixed(ModelStore):
    """A store that serves one loaded model."""

    def __init__(self, loaded: LoadedModel) -> None:
        super().__init__(loaded.path)
        self.current = loaded


def per_cart(
    loaded: LoadedModel, contexts: list[DecisionContext], batch: int, settings: Settings
) -> None:
    top_k, strong = settings.model_top_k, settings.add_on_min_similarity
    torch.set_num_threads(1)
    variants = {"with table": loaded, "without": replace(loaded, similar=None)}
    batches = [contexts[i : i + batch] for i in range(0, len(contexts), batch)]
    best = {v: {"cold": 0.0, "warm": 0.0} for v in variants}
    for chunk in batches:
        fastest = {v: {"cold": np.inf, "warm": np.inf} for v in variants}
        for _repeat in range(REPEATS):
            for name, model in variants.items():
                scorer = NextPurchaseScorer(_Fixed(model), top_k, add_on_min_similarity=strong)
                for regime in ("cold", "warm"):  # warm: the same carts from the cache
                    started = time.perf_counter()
                    scorer.signals(chunk)
                    elapsed = time.perf_counter() - started
                    fastest[name][regime] = min(fastest[name][regime], elapsed)
        for name, regimes in fastest.items():
            for regime, elapsed in regimes.items():
                best[name][regime] += elapsed * 1e6 / len(contexts)
    table = loaded.similar
    cart_sets = [{line[0] for line in c.state["cart"]["lines"]} for c in contexts]
    lookups = []
    for _repeat in range(REPEATS):
        started = time.perf_counter()
        for cart in cart_sets:
            table.bought_with(cart, top_k, strong)
        lookups.append((time.perf_counter() - started) / len(cart_sets))
    sizes = [len(c) for c in cart_sets]
    print(
        f"per cart: {len(contexts):,} real carts (median {statistics.median(sizes):g} products, "
        f"max {max(sizes)}), micro-batches of {batch}, top {top_k}, 1 torch thread; each "
        f"batch's fastest of {REPEATS}"
    )
    print(f"  {'':<12}{'cold µs/cart':>14}{'warm µs/cart':>14}")
    for name, row in best.items():
        print(f"  {name:<12}{row['cold']:>14.1f}{row['warm']:>14.1f}")
    added = {k: best["with table"][k] - best["without"][k] for k in ("cold", "warm")}
    print(
        f"  {'added':<12}{added['cold']:>+14.1f}{added['warm']:>+14.1f}"
        f"   (the lookup alone: {min(lookups) * 1e6:.1f} µs/cart)"
    )


def _get(port: int, path: str, token: str | None) -> float:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()
        if response.status != 200:
            raise RuntimeError(f"{path}: {response.status}")
    return time.perf_counter() - started


def per_request(model: Path, loaded: LoadedModel, customers: list[str], calls: int) -> None:
    table = loaded.similar
    products = table.items[: max(1, calls)]
    started = time.perf_counter()
    for product in products:
        table.similar(product, 10)
    in_process = (time.perf_counter() - started) / len(products)
    workdir = Path(tempfile.mkdtemp(prefix="nextbest-bench-similar-"))
    broker = EmbeddedBroker(log_path=workdir / "broker.log").start()
    worker = None
    try:
        settings = replace(
            Settings.from_env(),
            broker_url=broker.url,
            embedded_broker=True,
            state_dir=workdir / "state",
            web_port=free_port(),
            app_id="nextbest-bench-similar",
            model_path=str(model),
            api_admin_token=TOKEN,
            api_rate=0.0,
        )
        ensure_topics(settings)
        worker = start_worker(settings, workdir / "worker.log")
        wait_for_port("127.0.0.1", settings.web_port, 60)
        port = settings.web_port
        deadline = time.monotonic() + 60
        while True:  # until the worker is ready and knows the partitions' owners
            try:
                _get(port, "/ready", None)
                _get(port, f"/product-recommendations?merchant={MERCHANT}&customer=x", TOKEN)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        paths = {
            "/similar-items": [
                f"/similar-items?merchant={MERCHANT}&product={p}&n=10" for p in products
            ],
            "/product-recommendations": [
                f"/product-recommendations?merchant={MERCHANT}&customer={c}&n=10"
                for c in customers[: len(products)]
            ],
            "/ready": ["/ready"] * len(products),
        }
        times: dict[str, list[float]] = {route: [] for route in paths}
        for i in range(len(products)):
            for route, each in paths.items():
                times[route].append(_get(port, each[i % len(each)], TOKEN))
    finally:
        if worker is not None:
            stop_worker(worker)
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"\nper request: {len(products):,} sequential calls per route over HTTP to one worker "
        "(interleaved; /product-recommendations of customers without state here: cold start)"
    )
    print(f"  {'route':<28}{'p50 ms':>9}{'p99 ms':>9}")
    for route, samples in times.items():
        p50, p99 = np.percentile(np.array(samples) * 1e3, [50, 99])
        print(f"  {route:<28}{p50:>9.2f}{p99:>9.2f}")
    print(f"  SimilarItems.similar alone: {in_process * 1e6:.1f} µs/call (in process)")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="nextbest bench-similar", description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=Path("var/models/next_purchase"))
    p.add_argument("--data", default="../shared/data/online_retail.csv.gz")
    p.add_argument("--cutoff", default="2011-10-01")
    p.add_argument("--carts", type=int, default=2000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--calls", type=int, default=500)
    p.add_argument("--no-http", action="store_true", help="skip the requests over HTTP")
    args = p.parse_args(argv)
    store = ModelStore(args.model)
    if not store.refresh() or store.current.similar is None:
        print(
            f"{args.model}: no model with a bought-together table (nextbest train writes one)",
            file=sys.stderr,
        )
        return 1
    contexts, customers = carts(args.data, args.cutoff, DEFAULT_MERCHANTS, args.carts)
    print(f"model {store.current.version}: {len(store.current.similar):,} products in the table")
    per_cart(store.current, contexts, args.batch, Settings.from_env())
    if not args.no_http:
        per_request(args.model, store.current, customers, args.calls)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
