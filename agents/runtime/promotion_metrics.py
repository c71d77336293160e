"""Prometheus figures of the promotion policy per experiment arm (definitions in
``agents.runtime.metrics``). The agent calls `observe_decisions` with the decision records of a
batch,
`observe_rewards` with the rewards it closed and `observe_budgets` with the ledgers it owns.

From the counters, per arm: conversion = ``nextbest_promo_conversions_total`` /
``nextbest_promo_rewards_total``; profit per decision = ``nextbest_promo_profit_sum`` /
``nextbest_promo_profit_count`` with a 95% interval from ``nextbest_promo_profit_squares_total``;
``nextbest_promo_incremental_profit_per_decision`` is this worker's running difference with the
holdout (sum the counters over workers for the whole fleet).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

from agents.runtime import metrics
from streams.promotion.experiments import HOLDOUT

_sums: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])  # profit, count


def observe_decisions(records: Iterable[dict], blocked: Mapping[str, int] | None = None) -> None:
    for record in records:
        if record.get("repeat_of"):  # a cart change that repeated a decision: not a decision
            continue
        metrics.PROMO_DECISIONS.labels(
            record["merchant_id"],
            record["arm"],
            record["action_kind"],
            "true" if record["sent"] else "false",
        ).inc()
    for reason, count in (blocked or {}).items():
        if count:
            metrics.PROMO_BLOCKED.labels(reason).inc(count)


def observe_rewards(rewards: Iterable[dict]) -> None:
    touched = set()
    for reward in rewards:
        merchant, arm = reward["merchant_id"], reward["arm"]
        metrics.PROMO_REWARDS.labels(merchant, arm, reward["reason"]).inc()
        if reward["purchased"]:
            metrics.PROMO_CONVERSIONS.labels(merchant, arm).inc()
        metrics.PROMO_REVENUE.labels(merchant, arm).inc(reward["revenue"])
        metrics.PROMO_DISCOUNT_COST.labels(merchant, arm).inc(reward["discount_cost"])
        metrics.PROMO_PROFIT.labels(merchant, arm).observe(reward["profit"])
        metrics.PROMO_PROFIT_SQUARES.labels(merchant, arm).inc(reward["profit"] ** 2)
        sums = _sums[(merchant, arm)]
        sums[0] += reward["profit"]
        sums[1] += 1
        touched.add(merchant)
    for merchant in touched:
        holdout = _sums.get((merchant, HOLDOUT))
        if not holdout or not holdout[1]:
            continue
        baseline = holdout[0] / holdout[1]
        for (m, arm), (total, count) in _sums.items():
            if m == merchant and arm != HOLDOUT and count:
                metrics.PROMO_INCREMENTAL.labels(merchant, arm).set(total / count - baseline)


def observe_budgets(ledgers: Mapping[str, dict]) -> None:
    """Budget left per promotion over the ledgers (keys ``merchant:promotion:partition``)."""
    left: dict[tuple[str, str], float] = defaultdict(float)
    for key, ledger in ledgers.items():
        merchant, promotion, _ = key.rsplit(":", 2)
        left[(merchant, promotion)] += ledger["budget"] - ledger["spent"] - ledger["reserved"]
    for (merchant, promotion), value in left.items():
        metrics.PROMO_BUDGET_AVAILABLE.labels(merchant, promotion).set(value)
