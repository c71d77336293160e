"""How far can a ranker of the customer's own past items go? (``python -m models.headroom``)

A check on the issue's bar, not a product: gradient-boosted trees (LightGBM) rank each scored
customer's previously bought items with exactly the repeat-purchase features the model reads
(`models.sequences.encode_history`: counts, recency, intervals, the days since the last
order, and the items' popularity, trend and repeat rate at the scoring time), trained on the
orders before the cutoff like the model. Items never bought before follow in popularity order.
Hit@1 and Hit@10 under the `models.evaluate` protocol, next to personal frequency.

The ``+ future popularity`` rows add one feature nobody can have: how many orders hold the
item in the 30 days after the scoring time (read from the whole file, the test period
included). It bounds what knowing the season's trends in advance could add.

The ``+ new products`` rows rank, with the customer's past items, `NEW_PRODUCTS` products
they never bought: the most ordered of the last 30 days (with the future feature, also those
of the next 30 days), with the same columns (the customer's own ones zero but their order count
and idle days) and a column that marks them new.
"""

from __future__ import annotations

import argparse
import sys

import lightgbm as lgb
import numpy as np
import torch

from models import baselines
from models.evaluate import SMALL
from models.sequences import (
    REPEAT_FEATURES,
    EncodedHistory,
    EncoderConfig,
    Example,
    Vocab,
    build_examples,
    encode_history,
    epoch_seconds,
    load_orders,
    split_at,
)
from models.train import DEFAULT_DATA, target_ranks

FUTURE_DAYS = 30
NEW_PRODUCTS = 50
_DAY = 86400.0


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
    ``future`` also those most ordered in the next 30."""
    rankings = [history.catalogue[:, 1]] + ([future] if future is not None else [])
    picked: set[int] = set()
    for ranking in rankings:
        score = ranking.astype(np.float64)
        score[0] = -np.inf
        score[history.repeat_items] = -np.inf
        picked.update(np.argpartition(-score, NEW_PRODUCTS)[:NEW_PRODUCTS].tolist())
    return np.array(sorted(picked), np.int64)


def rows(
    history: EncodedHistory, target: set[int], future: np.ndarray | None, new: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The candidate items (the previously bought ones, then with ``new`` `new_products`), their
    features (+ future popularity) and labels."""
    items, feats = history.repeat_items, history.repeat_feats
    if new:
        fresh = new_products(history, future)
        blank = np.zeros((len(fresh), REPEAT_FEATURES), np.float32)
        blank[:, 8:10] = history.repeat_feats[0, 8:10]  # the customer's order count, idle days
        blank[:, 11:] = history.catalogue[fresh]
        is_new = np.r_[np.zeros(len(items)), np.ones(len(fresh))]
        items = np.concatenate([items, fresh])
        feats = np.column_stack([np.concatenate([feats, blank]), is_new])
    if future is not None:
        feats = np.column_stack([feats, np.log1p(future[items])])
    labels = np.array([i in target for i in items.tolist()], np.float32)
    return items, feats, labels


def fit_ranker(examples: list[Example], future_at, seed: int, new: bool) -> lgb.Booster:
    """Binary trees on item rows; an example weighs like in training, split over its rows."""
    per_customer: dict[str, int] = {}
    for e in examples:
        per_customer[e.customer] = per_customer.get(e.customer, 0) + 1
    xs, ys, ws = [], [], []
    for e in examples:
        _, x, y = rows(e.history, set(e.target.tolist()), future_at and future_at(e.seconds), new)
        xs.append(x)
        ys.append(y)
        ws.append(np.full(len(y), per_customer[e.customer] ** -0.5 / max(len(y), 1)))
    params = {"objective": "binary", "learning_rate": 0.05, "num_leaves": 31, "seed": seed}
    params.update(min_data_in_leaf=100, verbose=-1, num_threads=2)
    data = lgb.Dataset(np.concatenate(xs), np.concatenate(ys), weight=np.concatenate(ws))
    return lgb.train(params, data, num_boost_round=300)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m models.headroom", description=__doc__.split("\n")[0]
    )
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--cutoff", default="2011-10-01")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    orders, _ = load_orders(args.data)
    cutoff = epoch_seconds(args.cutoff)
    before, after = split_at(orders, cutoff)
    customers = sorted(c for c in before if c in after)
    vocab = Vocab.build(before)
    config = EncoderConfig()
    cum, first_day = future_popularity(orders, vocab)

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
        "gbm_repeat_features": (None, False),
        "gbm + new products": (None, True),
        "gbm + future popularity": (future_at, False),
        "gbm + new + future": (future_at, True),
    }
    for name, (oracle, new) in variants.items():
        ranker = fit_ranker(examples, oracle, args.seed, new)
        scores = popularity.repeat(len(customers), 1)
        for row, h in enumerate(tests):
            if len(h.repeat_items):
                items, x, _ = rows(h, targets[row], oracle and oracle(cutoff), new)
                score = torch.from_numpy(ranker.predict(x))
                scores[row, torch.from_numpy(items)] = 1e6 + score
        scores[:, 0] = -torch.inf
        results[name] = target_ranks(scores, target_mask)
    print(f"cutoff {args.cutoff}, {len(customers)} customers, {int(small.sum())} with <= {SMALL}")
    repeats = np.mean(
        [bool(t & set(h.repeat_items.tolist())) for t, h in zip(targets, tests, strict=True)]
    )
    print(f"target orders holding a product the customer bought before: {repeats:.1%}")
    print(f"{'method':<26}{'Hit@1':>8}{'gain':>8}{'Hit@10':>8}{'gain':>8}   cohort <={SMALL}")
    base = results["personal_frequency"]
    b1, b10 = ((base <= k).double().mean().item() for k in (1, 10))
    for name, ranks in results.items():
        h1, h10 = ((ranks <= k).double().mean().item() for k in (1, 10))
        s1, s10 = ((ranks[small] <= k).double().mean().item() for k in (1, 10))
        print(
            f"{name:<26}{h1:>8.4f}{h1 / b1 - 1:>+8.1%}{h10:>8.4f}{h10 / b10 - 1:>+8.1%}"
            f"   {s1:>7.4f}{s10:>7.4f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
