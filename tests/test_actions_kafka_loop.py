"""``nextbest bench-actions`` through the real worker on the embedded broker, a few customers
for three weeks (no journey; the journey without actions; actions ranked by expected value --
the propensity arm is the same code with the other ranking): every cart is decided by the
worker and carries the arm's ranking, the arms draw the same first week (but for takes before
it), the customers' takes are of actions the worker showed, only the customers the worker's
state shows as treated get retention messages, and the holdout's value is the same with and
without the journey."""

from __future__ import annotations

import pytest

from agents.tools.actions_kafka_loop import (
    EXPECTED_VALUE,
    NO_RETENTION,
    NONE,
    ActionsConfig,
    bench,
)
from agents.tools.promo_kafka_loop import LoopConfig
from models.promotion.engagement_sim import ACTIONS
from models.promotion.simulator import SimConfig, calibrate

pytestmark = pytest.mark.integration


def test_the_actions_loop_closes_through_the_worker(tmp_path):
    sim = SimConfig(customers=40, weeks=3, seed=2)
    config = ActionsConfig(
        loop=LoopConfig(sim=sim, out=tmp_path, partitions=1, timeout_s=180.0),
        arms=(NO_RETENTION, NONE, EXPECTED_VALUE),
        retention={"holdout": 0.5},
        bootstrap=200,
    )
    summary = bench(config, calibrate())

    assert summary["first_week_unexplained"] == 0
    for arm in (NONE, EXPECTED_VALUE):
        figures = summary["arms"][arm]
        carts = figures["carts"]
        assert carts > 5 and figures["decisions"] == carts  # every cart decided by the worker
        assert figures["first_week_carts"] <= figures["first_week_candidates"]
        r = figures["retention"]
        assert r["treated_customers"] > 0 and r["holdout_customers"] > 0
        assert r["messaged_not_treated"] == 0
        assert r["messaged_customers"] <= r["treated_customers"]
        assert r["responders"] <= r["messaged_customers"]
        if arm == NONE:
            assert figures["rankings"] == {} and sum(figures["takes"].values()) == 0
            continue
        # ... carrying the arm's ranking (all but a customer's carts after taking every action)
        assert set(figures["rankings"]) == {arm} and carts / 2 < figures["rankings"][arm] <= carts
        for action in ACTIONS:  # a customer takes an action at most once, after a showing
            assert figures["takes"][action] <= figures["shown"][action]
        assert sum(figures["shown"].values()) >= figures["rankings"][arm]
    # Without the journey nobody is stepped; against it, the holdout customers (sent nothing)
    # have exactly the value they have without the journey: the arms differ only by what the
    # worker did.
    assert summary["arms"][NO_RETENTION]["retention"]["treated_customers"] == 0
    paired = summary["retention_paired"]
    assert paired["treated_customers"] == summary["arms"][NONE]["retention"]["treated_customers"]
    assert paired["holdout_difference"] == pytest.approx(0.0, abs=1e-9)
