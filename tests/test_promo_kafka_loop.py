"""The promotion simulator's loop through the real worker and the embedded broker closes:
every cart gets a decision from the worker, every decision a joined reward, and the worker's
bandit learns from them (``agents.tools.promo_kafka_loop``, a few customers for two weeks)."""

from __future__ import annotations

import pytest

from agents.tools.promo_kafka_loop import LEARNED, LoopConfig, bench
from models.promotion.simulator import Population, SimConfig, Simulator, calibrate, sim_merchant

pytestmark = pytest.mark.integration


def test_the_loop_closes_through_the_worker(tmp_path):
    sim = SimConfig(customers=40, weeks=2, seed=3)
    calibration = calibrate()
    config = LoopConfig(sim=sim, arms=(LEARNED,), out=tmp_path, offline=False)
    summary = bench(config, calibration)

    simulator = Simulator(Population.draw(calibration, sim), sim, sim_merchant("sim-shop"))
    carts = sum(simulator.has_cart(i, w) for i in range(sim.customers) for w in range(sim.weeks))
    learned = summary["arms"][LEARNED]
    # Every cart was decided by the worker and every decision got its reward from the join.
    assert carts > 5 and learned["decisions"] == carts
    assert learned["rewards"] == learned["rewards_window_closed"] == carts
    # The offers the worker emitted are the ones it logged as sent, and feedback reached them:
    # what the reward join attributed is what the simulated customers did (the join does not
    # see a coupon's lost later sale, booked by the simulator at redemption).
    assert learned["offers_emitted"] == sum(learned["offers_sent"].values()) > 0
    joined = learned["simulated_profit"] + learned["coupon_future_loss"]
    assert learned["reward_join_profit"] == pytest.approx(joined, abs=0.01 * carts)
    # The bandit in the worker learned from every reward (its checkpoint at shutdown).
    assert learned["bandit_updates"] == carts
    # Off-policy evaluation ran on the worker's log, with the simulator's truth beside it.
    assert {"none", "product_coupon", "greedy-final"} <= {row["policy"] for row in summary["ope"]}
    assert (tmp_path / "learned-log.jsonl").stat().st_size > 0
