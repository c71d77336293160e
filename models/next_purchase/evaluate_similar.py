"""Offline check of the bought-together table (``nextbest evaluate-similar``): does it beat
popularity, and the next-purchase model, as the add-ons of a cart?

    nextbest evaluate-similar --cutoff 2011-10-01
    nextbest evaluate-similar --cutoff 2011-10-01 --artifact var/models/next_purchase

The table is trained on the orders before ``--cutoff`` (``--trained-before`` an earlier date:
a stale table, what a retraining schedule leaves between runs). Two protocols:

* next order: every customer with an order on both sides of the cutoff. Their last basket
  before it ranks products by summed similarity to its products, then popularity
  (`SimilarItems.bought_with`); the target is their first order after the cutoff, less the
  products of that basket; only products outside the basket are ranked, popularity likewise.
  Hit@10: a target product in the top 10.
* basket completion (what an offer's add-ons are for): every order after the cutoff with at
  least two products, split at random (seeded) into a cart (half, rounded down) and the rest
  (the same cases whatever the table was trained on: a product new since then counts as a
  miss for every method). Hit@k: a rest product among the k add-ons (none of the cart's). Methods:
  popularity; bought together (popularity fill); with ``--artifact`` (a next-purchase model
  trained with a cutoff no later than this one) the model's picks for the customer's history
  before the order, scored at the order's time, i.e. the add-ons of offers before the table,
  and the offers' add-ons now: strong neighbours (pair similarity at least the threshold)
  first, then the model's picks (`ModelSignals.add_ons`, the serving code), per threshold.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.next_purchase.encoding import Order
from models.next_purchase.loading import epoch_seconds, load_orders, split_at
from models.next_purchase.similar_items import STRONG_SIMILARITY, SimilarItems
from models.next_purchase.train import DEFAULT_DATA

THRESHOLDS = (0.0, 0.05, 0.1, STRONG_SIMILARITY, 0.2, 0.3, 0.5)
ADD_ONS = 5  # NEXTBEST_MODEL_TOP_K's default: what an offer carries


@dataclass(frozen=True)
class Completion:
    """One basket-completion case: a customer's order after the cutoff, split in two."""

    history: list[Order]  # the customer's orders before this one
    ts: float
    cart: frozenset[str]
    rest: frozenset[str]


def ranked(table: SimilarItems, basket: set[str], k: int, strong: float = 0.0) -> list[str]:
    """The top k products outside ``basket``: by summed similarity to it, then popularity."""
    picks = table.bought_with(basket, k, strong)
    taken = set(picks) | basket
    return picks + [p for p in table.items[: k + len(taken)] if p not in taken][: k - len(picks)]


def popular(table: SimilarItems, basket: set[str], k: int) -> list[str]:
    return [p for p in table.items[: k + len(basket)] if p not in basket][:k]


def next_order_hits(
    table: SimilarItems, before: dict[str, list[Order]], after: dict[str, list[Order]], k: int
) -> dict[str, float]:
    hits = {"popularity": 0, "bought_together": 0}
    n = 0
    for customer, orders in before.items():
        if customer not in after:
            continue
        last = set(orders[-1][1])
        target = set(after[customer][0][1]) - last
        if not target:
            continue
        n += 1
        hits["popularity"] += bool(target.intersection(popular(table, last, k)))
        hits["bought_together"] += bool(target.intersection(ranked(table, last, k)))
    return {"customers": n, **{name: count / max(n, 1) for name, count in hits.items()}}


def completion_cases(orders: dict[str, list[Order]], cutoff: float, seed: int) -> list[Completion]:
    rng = np.random.default_rng(seed)
    cases = []
    for customer in sorted(orders):
        history: list[Order] = []
        for ts, products in orders[customer]:
            if ts >= cutoff and len(products) >= 2:
                order = rng.permutation(len(products))
                half = len(products) // 2
                cart = frozenset(products[i] for i in order[:half])
                rest = frozenset(products[i] for i in order[half:])
                cases.append(Completion(list(history), ts, cart, rest))
            history.append((ts, products))
    return cases


def hit_rate(cases: list[Completion], lists: list[list[str]], k: int) -> float:
    hits = [
        bool(case.rest.intersection(picks[:k])) for case, picks in zip(cases, lists, strict=True)
    ]
    return float(np.mean(hits))


def model_picks(artifact_path: Path, cases: list[Completion], k: int) -> tuple[list, str]:
    """The next-purchase model's k products outside each cart, and its version."""
    import torch

    from models.next_purchase import artifact

    torch.set_num_threads(1)
    recommender = artifact.load(artifact_path)
    picks = []
    for start in range(0, len(cases), 512):
        chunk = cases[start : start + 512]
        scored = recommender.score_batch(
            [c.history for c in chunk],
            k=k + max(len(c.cart) for c in chunk),
            now=[c.ts for c in chunk],
        )
        picks += [
            [p for p in s.items if p not in c.cart][:k] for s, c in zip(scored, chunk, strict=True)
        ]
    return picks, artifact.resolve(artifact_path).name


def completion_rates(
    table: SimilarItems, cases: list[Completion], artifact_path: Path | None
) -> dict[str, dict[str, float]]:
    """Hit@5 and Hit@10 per method (the offers' add-ons at Hit@5 only: offers carry 5)."""
    methods: dict[str, Callable[[Completion], list[str]]] = {
        "popularity": lambda c: popular(table, set(c.cart), 10),
        "bought_together": lambda c: ranked(table, set(c.cart), 10),
    }
    lists = {name: [pick(c) for c in cases] for name, pick in methods.items()}
    rates = {name: {f"hit@{k}": hit_rate(cases, lists[name], k) for k in (5, 10)} for name in lists}
    if artifact_path is None:
        return rates
    from models.next_purchase.serving import ModelSignals

    picks, version = model_picks(artifact_path, cases, 10)
    print(f"next-purchase model: {version}")
    rates["next_purchase model"] = {f"hit@{k}": hit_rate(cases, picks, k) for k in (5, 10)}
    for strong in THRESHOLDS:
        add_ons, together_count = [], 0
        for case, model in zip(cases, picks, strict=True):
            together = tuple(table.bought_with(case.cart, ADD_ONS, strong))
            signals = ModelSignals(
                version, tuple(model[:ADD_ONS]), (0.0,) * ADD_ONS, False, together
            )
            add_ons.append(list(signals.add_ons))
            together_count += len(together)
        rates[f"offer add-ons, similarity >= {strong:g}"] = {
            "hit@5": hit_rate(cases, add_ons, 5),
            "bought_together_share": together_count / (ADD_ONS * len(cases)),
        }
    return rates


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="nextbest evaluate-similar", description=__doc__.splitlines()[0]
    )
    p.add_argument("--data", default=DEFAULT_DATA, help="Online Retail csv / csv.gz / xlsx")
    p.add_argument("--cutoff", default="2011-10-01")
    p.add_argument("--trained-before", help="train the table on orders before this date")
    p.add_argument("--artifact", type=Path, help="a next-purchase model (root or version)")
    p.add_argument("--seed", type=int, default=0, help="of the basket-completion splits")
    p.add_argument("--json", type=Path, help="also write the figures here")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    cutoff = epoch_seconds(args.cutoff)
    trained_before = epoch_seconds(args.trained_before or args.cutoff)
    if trained_before > cutoff:
        print("--trained-before must not be after --cutoff", file=sys.stderr)
        return 2
    if args.artifact is not None:
        from models.next_purchase import artifact

        config = json.loads((artifact.resolve(args.artifact) / "config.json").read_text())
        if not config.get("cutoff") or epoch_seconds(config["cutoff"]) > cutoff:
            print(
                f"{args.artifact}: trained with cutoff {config.get('cutoff')}, not before "
                f"{args.cutoff}: it has seen the orders it would be evaluated on",
                file=sys.stderr,
            )
            return 2
    orders, _ = load_orders(args.data)
    before, after = split_at(orders, cutoff)
    started = time.perf_counter()
    table = SimilarItems.fit(split_at(orders, trained_before)[0])
    fit_s = time.perf_counter() - started
    result = {
        "cutoff": args.cutoff,
        "table_trained_before": args.trained_before or args.cutoff,
        "table": {"products": len(table), "fit_seconds": round(fit_s, 2)},
        "next_order_hit@10": next_order_hits(table, before, after, 10),
    }
    cases = completion_cases(orders, cutoff, args.seed)
    if not cases or not result["next_order_hit@10"]["customers"]:
        print(
            f"nothing to evaluate after {args.cutoff}: no customer with orders on both sides "
            "of it, or no order of two products after it",
            file=sys.stderr,
        )
        return 1
    result["basket_completion"] = {
        "orders": len(cases),
        **completion_rates(table, cases, args.artifact),
    }
    print(
        f"bought-together table: {len(table):,} products, fitted in {fit_s:.1f} s on the orders "
        f"before {result['table_trained_before']}; evaluated after {args.cutoff}"
    )
    nxt = result["next_order_hit@10"]
    ratio = nxt["bought_together"] / nxt["popularity"] if nxt["popularity"] else float("inf")
    print(
        f"\nnext order, products not in the last basket ({nxt['customers']:,} customers), "
        f"Hit@10: bought together {nxt['bought_together']:.4f} vs popularity "
        f"{nxt['popularity']:.4f} ({ratio:.2f}x)"
    )
    print(f"\nbasket completion, half of each order as the cart ({len(cases):,} orders):")
    print(f"  {'method':<44} {'Hit@5':>7} {'Hit@10':>7} {'bought-together share':>22}")
    for name, rates in result["basket_completion"].items():
        if name == "orders":
            continue
        hit10 = f"{rates['hit@10']:.4f}" if "hit@10" in rates else ""
        share = rates.get("bought_together_share")
        share_text = "" if share is None else f"{share:.2f}"
        print(f"  {name:<44} {rates['hit@5']:>7.4f} {hit10:>7} {share_text:>22}")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
