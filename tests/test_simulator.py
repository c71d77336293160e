"""Customer-response simulator: reproducible by seed, truth consistent with sampled responses,
calibrated from the real data; the offline loop's accounting matches the reward join."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.promotion import simulation as promo_simulation
from models.promotion.simulation import SimulateConfig, run_policy, simulate
from models.promotion.simulator import (
    Calibration,
    Population,
    SimConfig,
    Simulator,
    calibrate,
    sim_merchant,
)
from streams.promotion.actions import CouponCandidate, candidate_actions

SMALL = Calibration(
    orders_per_year=np.array([1.0, 2.0, 4.0, 12.0, 40.0]),
    mean_basket=np.array([80.0, 150.0, 300.0, 450.0, 900.0]),
    basket_log_sd=0.8,
    line_values=np.array([2.5, 8.0, 15.0, 30.0]),
    control_rate=np.full((4, 3), 0.1) + np.linspace(0, 0.05, 12).reshape(4, 3),
    lift=np.full((4, 3), 0.5) + np.linspace(0, 0.3, 12).reshape(4, 3),
)


def test_population_is_reproducible_by_seed():
    config = SimConfig(customers=200, weeks=3, seed=4)
    a, b = Population.draw(SMALL, config), Population.draw(SMALL, config)
    for name in ("base_logit", "sensitivity", "cart_rate", "u_buy", "cart_value", "intent"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.history == b.history
    c = Population.draw(SMALL, SimConfig(customers=200, weeks=3, seed=5))
    assert not np.array_equal(a.u_buy, c.u_buy)


def test_truth_is_the_mean_of_sampled_responses():
    config = SimConfig(customers=50, weeks=1, seed=1)
    sim = Simulator(Population.draw(SMALL, config), config, sim_merchant())
    sim.dependency[:] = 0.5  # some habituation
    i, week = 7, 0
    signals = sim.signals(i, week)
    coupon = CouponCandidate(
        signals.coupon_product_id, signals.coupon_probability, signals.coupon_price
    )
    value = 210.0  # within reach of the 15% tier at 300, whose 45 beats 20% of 210
    actions = candidate_actions(sim.merchant, value, "GBP", sim.week_start(0), coupon)
    assert {a.kind for a in actions} == {
        "none",
        "free_shipping",
        "percent_off",
        "threshold_nudge",
        "product_coupon",
    }
    rng = np.random.default_rng(0)
    draws = 20_000
    for action in actions:
        total = 0.0
        for _ in range(draws):
            sim.pop.u_buy[i, week], sim.pop.u_topup[i, week], sim.pop.u_item[i, week] = rng.random(
                3
            )
            total += sim.respond(i, week, action).profit
        truth = sim.expected_profit(i, week, action)
        assert total / draws == pytest.approx(truth, rel=0.05, abs=0.3), action.id


def test_habituation_lowers_the_no_offer_purchase_probability():
    config = SimConfig(customers=20, weeks=1, seed=2)
    sim = Simulator(Population.draw(SMALL, config), config, sim_merchant())
    none = candidate_actions(sim.merchant, 100.0, "GBP", sim.week_start(0))[0]
    before = sim.expected_profit(3, 0, none)
    sim.end_week(np.full(20, 0.2))  # everyone redeemed 20% off
    assert sim.expected_profit(3, 0, none) < before


def test_offline_loop_is_reproducible_and_its_accounting_matches_the_reward_join():
    config = SimConfig(customers=250, weeks=3, seed=3)
    a = run_policy(SMALL, config, "bandit", keep_log=True)
    b = run_policy(SMALL, config, "bandit", keep_log=True)
    assert np.array_equal(a.profit, b.profit) and a.records == b.records
    assert a.decisions == len(a.records) == len(a.rewards) > 100
    # every cent the simulator booked was attributed by the reward join (rounding aside)
    booked = a.profit.sum() + a.future_loss  # coupons' lost later sales are not in rewards
    assert a.reward_profit == pytest.approx(booked, abs=0.02 * a.decisions)
    assert set(a.truth) == {r["decision_id"] for r in a.records}
    none = run_policy(SMALL, config, "static:none")
    assert none.offers == {} and not none.deep.any()


def test_calibration_from_the_real_data():
    calibration = calibrate()
    assert calibration.sources["customers"] == 4338
    assert calibration.sources["hillstrom_rows"] == 64000
    assert calibration.orders_per_year.mean() == pytest.approx(4.18, abs=0.05)
    assert calibration.basket_log_sd == pytest.approx(0.84, abs=0.01)
    assert calibration.control_rate.shape == calibration.lift.shape == (4, 3)
    assert calibration.control_rate.min() > 0.05 and calibration.control_rate.max() < 0.2
    # visit lift per cell, scaled to the e-mail's overall conversion lift (0.63)
    assert calibration.lift.min() > 0.45 and calibration.lift.max() < 1.0
    assert calibration.lift.mean() == pytest.approx(0.63, abs=0.05)


def test_simulate_command_reports_bars_and_ope(tmp_path):
    config = SimulateConfig(
        sim=SimConfig(customers=200, weeks=2), seeds=(0,), out=tmp_path, experiment=True
    )
    summary = simulate(config, calibration=SMALL)
    assert set(summary["mean_incremental_per_customer"]) == {
        *promo_simulation.STATIC,
        "learned",
        "oracle",
    }
    assert isinstance(summary["bar_best_static"], bool)
    (seed,) = summary["seeds"]
    assert {row["policy"] for row in seed["ope"]} >= {"none", "greedy-final"}
    for row in seed["ope"]:
        assert all(row[m]["low"] <= row[m]["high"] for m in ("IPS", "SNIPS", "DR"))
    lines = (tmp_path / "learned-log.jsonl").read_text().splitlines()
    kinds = {json.loads(line)["record"] for line in lines}
    assert kinds == {"decision", "reward"}
    arms = {json.loads(line)["arm"] for line in (tmp_path / "experiment-log.jsonl").open()}
    assert arms == {"holdout", "learned", "rules"}
    promo_simulation.print_summary(summary)
