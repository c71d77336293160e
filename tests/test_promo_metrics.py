"""Promotion metrics per arm on the worker's Prometheus registry."""

from __future__ import annotations

import pytest

from agents.runtime import promotion_metrics as promo_metrics
from agents.runtime.metrics import REGISTRY


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def reward(arm: str, profit: float, purchased: bool = True) -> dict:
    return {
        "merchant_id": "m-metrics",
        "arm": arm,
        "reason": "window_closed",
        "purchased": purchased,
        "revenue": 100.0 if purchased else 0.0,
        "discount_cost": 5.0 if arm != "holdout" and purchased else 0.0,
        "profit": profit,
    }


def test_decisions_rewards_and_incremental_profit_per_arm():
    decision = {"merchant": "m-metrics", "arm": "learned", "action_kind": "none", "sent": "false"}
    before = value("nextbest_promo_decisions_total", **decision)
    record = {"merchant_id": "m-metrics", "arm": "learned", "action_kind": "none", "sent": False}
    repeat = {**record, "repeat_of": "d1"}  # a repeat of a decision counts no decision
    promo_metrics.observe_decisions([record] * 3 + [repeat], {"budget": 2, "group": 0})
    assert value("nextbest_promo_decisions_total", **decision) == before + 3
    assert value("nextbest_promo_blocked_actions_total", reason="budget") >= 2
    promo_metrics.observe_rewards(
        [
            reward("holdout", 30.0),
            reward("holdout", 10.0),
            reward("learned", 35.0),
            reward("learned", 0.0, purchased=False),
        ]
    )
    labels = {"merchant": "m-metrics", "arm": "learned"}
    assert value("nextbest_promo_profit_sum", **labels) == 35.0
    assert value("nextbest_promo_profit_count", **labels) == 2
    assert value("nextbest_promo_profit_squares_total", **labels) == 35.0**2
    assert value("nextbest_promo_discount_cost_total", **labels) == 5.0
    assert value("nextbest_promo_conversions_total", **labels) == 1
    assert value("nextbest_promo_rewards_total", reason="window_closed", **labels) == 2
    # learned: 17.5 per decision; holdout: 20
    assert value("nextbest_promo_incremental_profit_per_decision", **labels) == pytest.approx(-2.5)


def test_budget_left_per_promotion_over_partitions():
    ledgers = {
        "m-metrics:p10:0": {"budget": 50.0, "spent": 10.0, "reserved": 5.0},
        "m-metrics:p10:1": {"budget": 50.0, "spent": 0.0, "reserved": 20.0},
    }
    promo_metrics.observe_budgets(ledgers)
    assert value("nextbest_promo_budget_available", merchant="m-metrics", promotion="p10") == 65.0
