"""How far can a ranker of the customer's own past items go? (``python -m
models.next_purchase.headroom``)

A check on the issue's bar, not a product: gradient-boosted trees (LightGBM) rank each scored
customer's previously bought items with exactly the repeat-purchase features the model reads
(`models.next_purchase.encoding.encode_history`: counts, recency, intervals, the days since the
last order, and the items' popularity, trend and repeat rate at the scoring time), trained on the
orders before the cutoff like the model. Items never bought before follow in popularity order.
Hit@1 and Hit@10 under the `models.next_purchase.evaluate` protocol, next to personal frequency.

The ``+ future popularity`` rows add one feature nobody can have: how many orders hold the
item in the 30 days after the scoring time (read from the whole file, the test period
included). It bounds what knowing the season's trends in advance could add.

The ``+ new products`` rows rank, with the customer's past items, `NEW_PRODUCTS` products
they never bought: the most ordered of the last 30 days (with the future feature, also those
of the next 30 days), with the same columns (the customer's own ones zero but their order count
and idle days) and a column that marks them new.

The ``+ quantities`` rows add what the model does not read (the worker's state keeps which
products an order held, not how many): per past product, the customer's units of it in all,
in the last order that held it and per order that held it, and its share of all their units.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

import lightgbm as lgb
import numpy as np
import pandas as pd
import torch

from models.next_purchase import baselines
from models.next_purchase.encoding import (
    REPEAT_FEATURES,
    EncodedHistory,
    EncoderConfig,
    Vocab,
    encode_history,
)
from models.next_purchase.evaluate import SMALL
from models.next_purchase.examples import Example, build_examples
from models.next_purchase.loading import (
    epoch_seconds,
    load_transactions,
    orders_from_lines,
    split_at,
)
from models.next_purchase.train import DEFAULT_DATA, target_ranks

FUTURE_DAYS = 30
NEW_PRODUCTS = 50
_DAY = 86400.0
QUANTITY_FEATURES = 4

Units = dict[str, list[tuple[float, dict[int, float]]]]
"""Per customer, time-ordered: (order time, {item: units})."""


def units_by_order(lines: pd.DataFrame, vocab: Vocab) -> Units:
    """Each customer's units per known item and order (`load_transactions`'s kept lines; an
    order's time is its invoice's first line's, as in `orders_from_lines`; two invoices of one
    customer in the same second count as one order here)."""
    seconds = lines.groupby(["customer", "invoice"])["seconds"].transform("min")
    units = lines.assign(seconds=seconds).groupby(["customer", "seconds", "product"])["quantity"]
    orders: dict[str, dict[float, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for (customer, t, product), quantity in units.sum().items():
        item = vocab.index.get(product)
        if item is not None:
            orders[customer][t][item] = float(quantity)
    return {customer: sorted(by_time.items()) for customer, by_time in orders.items()}


def quantities(units: Units, customer: str, items: np.ndarray, before: float) -> np.ndarray:
    """(len(items), `QUANTITY_FEATURES`): log1p of the customer's units of each item in all, in
    the last order that held it and per such order, and the item's share of all their units,
    over their orders before ``before``."""
    total: dict[int, float] = defaultdict(float)
    last: dict[int, float] = {}
    orders: dict[int, int] = defaultdict(int)
    for t, order in units.get(customer, []):
        if t >= before:
            break
        for item, n in order.items():
            total[item] += n
            last[item] = n
            orders[item] += 1
    everything = sum(total.values())
    out = np.zeros((len(items), QUANTITY_FEATURES), np.float32)
    for row, item in enumerate(items.tolist()):
        if orders[item]:
            out[row] = (
                np.log1p(total[item]),
                np.log1p(last[item]),
                np.log1p(total[item] / orders[item]),
                total[item] / everything,
            )
    return out


def future_popularity(orders: dict, vocab: Vocab) -> tuple[np.ndarray, int]:
    """Per-day cumulative order counts per item over the whole file; and its first day."""
    first = int(min(t for seq in orders.values() for t, _ in seq) // _DAY)
    last = int(max(t for seq in orders.values() for t, _ in seq) // _DAY)
    daily = np.zeros((last - first + 2, len(vocab)), np.float32)
    for seq in orders.values():
        for t, products in seq:
            ids = [vocab.index[p] for p in products if p in vocab.index]
            daily[int(t // _DAY) - first + 1, ids] += 1
    return np.cumsum(daily, axis=0), first


def new_products(history: EncodedHistory, future: np.ndarray | None) -> np.ndarray:
    """The `NEW_PRODUCTS` never-bought items most ordered in the last 30 days, and with
    ``future`` also those most ordered in the next 30.

    Ties are broken by all-time popularity, then item id. The last 30 days' feature takes
    about a hundred distinct values, so many products tie at the 50th place, and which of
    them get in moves the ``+ new products`` rows by several points of Hit@1.
    """
    never = np.ones(len(history.catalogue), bool)
    never[0] = False
    never[history.repeat_items] = False
    candidates = np.flatnonzero(never)
    all_time = history.catalogue[candidates, 0]
    picked: set[int] = set()
    for ranking in [history.catalogue[:, 1]] + ([future] if future is not None else []):
        order = np.lexsort((-all_time, -ranking[candidates]))  # stable: then by item id
        picked.update(candidates[order[:NEW_PRODUCTS]].tolist())
    return np.array(sorted(picked), np.int64)


def rows(
    history: EncodedHistory,
    target: set[int],
    future: np.ndarray | None,
    new: bool = False,
    units: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The candidate items (the previously bought ones, then with ``new`` `new_products`), their
    features (+ the past items' ``units`` features, + future popularity) and labels."""
    items, feats = history.repeat_items, history.repeat_feats
    if units is not None:
        feats = np.column_stack([feats, units])
    if new:
        fresh = new_products(history, future)
        blank = np.zeros((len(fresh), feats.shape[1]), np.float32)  # units: never bought
        blank[:, 8:10] = history.repeat_feats[0, 8:10]  # the customer's order count, idle days
        blank[:, 11:REPEAT_FEATURES] = history.catalogue[fresh]
        is_new = np.r_[np.zeros(len(items)), np.ones(len(fresh))]
        items = np.concatenate([items, fresh])
        feats = np.column_stack([np.concatenate([feats, blank]), is_new])
    if future is not None:
        feats = np.column_stack([feats, np.log1p(future[items])])
    labels = np.array([i in target for i in items.tolist()], np.float32)
    return items, feats, labels


def fit_ranker(
    examples: list[Example], future_at, seed: int, new: bool, units: Units | None = None
) -> lgb.Booster:
    """Binary trees on item rows; an example weighs like in training, split over its rows."""
    per_customer: dict[str, int] = {}
    for e in examples:
        per_customer[e.customer] = per_customer.get(e.customer, 0) + 1
    xs, ys, ws = [], [], []
    for e in examples:
        extra = (
            None
            if units is None
            else quantities(units, e.customer, e.history.repeat_items, e.seconds)
        )
        future = future_at and future_at(e.seconds)
        _, x, y = rows(e.history, set(e.target.tolist()), future, new, extra)
        xs.append(x)
        ys.append(y)
        ws.append(np.full(len(y), per_customer[e.customer] ** -0.5 / max(len(y), 1)))
    params = {"objective": "binary", "learning_rate": 0.05, "num_leaves": 31, "seed": seed}
    params.update(min_data_in_leaf=100, verbose=-1, num_threads=2)
    data = lgb.Dataset(np.concatenate(xs), np.concatenate(ys), weight=np.concatenate(ws))
    return lgb.train(params, data, num_boost_round=300)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m models.next_purchase.headroom", description=__doc__.split("\n")[0]
    )
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--cutoff", default="2011-10-01")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    lines, _ = load_transactions(args.data)
    orders = orders_from_lines(lines)
    cutoff = epoch_seconds(args.cutoff)
    before, after = split_at(orders, cutoff)
    customers = sorted(c for c in before if c in after)
    vocab = Vocab.build(before)
    config = EncoderConfig()
    cum, first_day = future_popularity(orders, vocab)
    units = units_by_order(lines, vocab)

    def future_at(now: float) -> np.ndarray:
        day = min(int(now // _DAY) - first_day, len(cum) - 1)
        return cum[min(day + FUTURE_DAYS, len(cum) - 1)] - cum[day]

    examples = build_examples(before, vocab, config)
    tests = [encode_history(before[c], vocab, config, now=cutoff) for c in customers]
    targets = [{vocab.index[p] for p in after[c][0][1] if p in vocab.index} for c in customers]
    target_mask = torch.zeros(len(customers), len(vocab), dtype=torch.bool)
    for row, target in enumerate(targets):
        target_mask[row, list(target)] = True
    small = torch.tensor([len(before[c]) <= SMALL for c in customers])
    frequency = baselines.personal_frequency([before[c] for c in customers], vocab)
    results = {"personal_frequency": target_ranks(frequency, target_mask)}
    popularity = torch.arange(len(vocab), 0, -1, dtype=torch.float64)
    variants = {
        "gbm_repeat_features": (None, False, None),
        "gbm + quantities": (None, False, units),
        "gbm + new products": (None, True, None),
        "gbm + future popularity": (future_at, False, None),
        "gbm + new + future": (future_at, True, None),
        "gbm + quantities + new + future": (future_at, True, units),
    }
    for name, (oracle, new, by_order) in variants.items():
        ranker = fit_ranker(examples, oracle, args.seed, new, by_order)
        scores = popularity.repeat(len(customers), 1)
        for row, h in enumerate(tests):
            if len(h.repeat_items):
                extra = (
                    None
                    if by_order is None
                    else quantities(by_order, customers[row], h.repeat_items, cutoff)
                )
                items, x, _ = rows(h, targets[row], oracle and oracle(cutoff), new, extra)
                score = torch.from_numpy(ranker.predict(x))
                scores[row, torch.from_numpy(items)] = 1e6 + score
        scores[:, 0] = -torch.inf
        results[name] = target_ranks(scores, target_mask)
    print(f"cutoff {args.cutoff}, {len(customers)} customers, {int(small.sum())} with <= {SMALL}")
    repeats = np.mean(
        [bool(t & set(h.repeat_items.tolist())) for t, h in zip(targets, tests, strict=True)]
    )
    print(f"target orders holding a product the customer bought before: {repeats:.1%}")
    print(f"{'method':<34}{'Hit@1':>8}{'gain':>8}{'Hit@10':>8}{'gain':>8}   cohort <={SMALL}")
    base = results["personal_frequency"]
    b1, b10 = ((base <= k).double().mean().item() for k in (1, 10))
    for name, ranks in results.items():
        h1, h10 = ((ranks <= k).double().mean().item() for k in (1, 10))
        s1, s10 = ((ranks[small] <= k).double().mean().item() for k in (1, 10))
        print(
            f"{name:<34}{h1:>8.4f}{h1 / b1 - 1:>+8.1%}{h10:>8.4f}{h10 / b10 - 1:>+8.1%}"
            f"   {s1:>7.4f}{s10:>7.4f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
