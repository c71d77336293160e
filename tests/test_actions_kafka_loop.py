"""``nextbest bench-actions`` through the real worker on the embedded broker, a few customers
for three weeks: every cart is decided by the worker and carries the arm's ranking, the arms
see the same first week, the customers' takes are of actions the worker showed, and only the
customers the worker's state shows as treated get retention messages."""

from __future__ import annotations

import pytest

from agents.tools.actions_kafka_loop import (
    EXPECTED_VALUE,
    PROPENSITY,
    ActionsConfig,
    bench,
)
from agents.tools.promo_kafka_loop import LoopConfig
from models.promotion.engagement_sim import ACTIONS
from models.promotion.simulator import SimConfig, calibrate

pytestmark = pytest.mark.integration


def test_the_actions_loop_closes_through_the_worker(tmp_path):
    sim = SimConfig(customers=60, weeks=3, seed=2)
    config = ActionsConfig(
        loop=LoopConfig(sim=sim, out=tmp_path, timeout_s=180.0),
        arms=(PROPENSITY, EXPECTED_VALUE),
        bootstrap=200,
    )
    summary = bench(config, calibrate())

    assert summary["same_first_week_carts"]
    for arm, figures in summary["arms"].items():
        carts = figures["carts"]
        assert carts > 5 and figures["decisions"] == carts  # every cart decided by the worker
        # ... carrying the arm's ranking (all but a customer's carts after taking every action)
        assert set(figures["rankings"]) == {arm} and carts / 2 < figures["rankings"][arm] <= carts
        for action in ACTIONS:  # a customer takes an action at most once, after a showing
            assert figures["takes"][action] <= figures["shown"][action]
        assert sum(figures["shown"].values()) >= figures["rankings"][arm]
        r = figures["retention"]
        assert r["treated_customers"] + r["holdout_customers"] > 0
        assert r["messaged_not_treated"] == 0
        assert r["messaged_customers"] <= r["treated_customers"]
        assert r["responders"] <= r["messaged_customers"]
    ev, prop = summary["arms"][EXPECTED_VALUE], summary["arms"][PROPENSITY]
    assert summary["ratio_ev_vs_propensity"] == pytest.approx(
        ev["value_per_customer"] / prop["value_per_customer"]
    )
    assert summary["ev_minus_propensity"] == pytest.approx(
        ev["value_per_customer"] - prop["value_per_customer"]
    )
    low, high = summary["ev_minus_propensity_interval"]
    assert low <= summary["ev_minus_propensity"] <= high
