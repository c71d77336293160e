"""Thompson-sampling bandit: logged propensities are the probabilities actually used, it learns
the better offer, its state is JSON and replayed rewards change nothing; the other variants."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from streams.promotion.actions import CouponCandidate, candidate_actions
from streams.promotion.bandit import (
    BanditChooser,
    BanditConfig,
    ChoiceInput,
    LinearThompson,
    RulesChooser,
    StaticChooser,
)
from streams.promotion.features import FEATURE_NAMES
from tests.promo_fixtures import T0, context, shop

D = len(FEATURE_NAMES)


def row(
    features: np.ndarray | None = None, value: float = 100.0, horizon: float = 0.0
) -> ChoiceInput:
    merchant = shop()
    actions = candidate_actions(merchant, value, "GBP", T0)  # none, fs, p10
    x = np.full(D, 0.3) if features is None else features
    return ChoiceInput(None, merchant, x, actions, horizon)


def test_propensities_are_a_distribution_with_an_exploration_floor():
    bandit = LinearThompson(BanditConfig(explore=0.1, explore_depth_scale=None))
    rng = np.random.default_rng(0)
    r = row()
    choice = bandit.choose(r, rng)
    assert sum(choice.probabilities) == pytest.approx(1.0)
    assert min(choice.probabilities) >= 0.1 / 3 - 1e-12
    assert choice.propensity == choice.probabilities[choice.index]
    assert choice.version == "linear-ts/2:0"


def test_exploration_favours_cheap_offers():
    """An exploring bandit (explore = 1) plays each action with weight 1 / (1 + depth / 0.02):
    no offer (depth 0) most, 10% off least; every action keeps a positive propensity."""
    bandit = LinearThompson(BanditConfig(explore=1.0, explore_depth_scale=0.02))
    rng = np.random.default_rng(3)
    r = row()
    depths = np.array([a.depth for a in r.actions])
    weights = 1.0 / (1.0 + depths / 0.02)
    expected = weights / weights.sum()
    choice = bandit.choose(r, rng)
    assert choice.probabilities == pytest.approx(expected)
    assert expected[0] > expected[1] > expected[2] > 0
    counts = np.bincount([bandit.choose(r, rng).index for _ in range(20_000)], minlength=3)
    assert counts / counts.sum() == pytest.approx(expected, abs=0.012)


def test_a_deep_discount_must_beat_the_other_offers_by_its_premium():
    """A learned bandit whose 10%-off uplift is worth about 1.5 at a cart of 100: with 10% off
    counted deep, a premium of 1% of the cart leaves it the greedy choice, 5% does not."""
    x = np.full(D, 0.3)
    bandit = LinearThompson(BanditConfig(explore=0.0))
    rng = np.random.default_rng(0)
    r = row(x, value=100.0)
    for i in range(3000):
        arm = ["none", "percent_off:p10"][i % 2]
        bandit.update(f"d{i}", x, arm, rng.random() < (0.2 if arm == "none" else 0.5), True)
    assert r.actions[bandit.greedy(r)].id == "percent_off:p10"

    def priced(cost: float) -> ChoiceInput:
        merchant = replace(r.merchant, deep_discount_depth=0.10, deep_discount_cost=cost)
        return ChoiceInput(None, merchant, x, r.actions, 0.0)

    assert r.actions[bandit.greedy(priced(0.01))].id == "percent_off:p10"
    assert r.actions[bandit.greedy(priced(0.05))].id != "percent_off:p10"


def test_logged_propensity_matches_the_frequency_of_choices():
    """Given the posterior draws, the choice frequencies are the logged probabilities."""
    bandit = LinearThompson(BanditConfig(explore=0.2))
    rng = np.random.default_rng(1)
    r = row(value=400.0)
    first = bandit.choose(r, rng)
    counts = np.zeros(len(r.actions))
    for _ in range(20_000):
        choice = bandit.choose(r, rng)
        assert choice.probabilities == first.probabilities  # same draws, same distribution
        counts[choice.index] += 1
    assert counts / counts.sum() == pytest.approx(np.array(first.probabilities), abs=0.012)


def test_the_draws_are_a_function_of_the_statistics():
    """A replay on a restarted worker (the model rebuilt from JSON, knowing other actions too)
    sees the same posterior draws: the same probabilities for the same row."""
    x = np.full(D, 0.3)
    learned = LinearThompson(BanditConfig())
    rng = np.random.default_rng(5)
    for i in range(200):
        arm = ["none", "percent_off:p10", "free_shipping:fs"][i % 3]
        learned.update(f"d{i}", x * rng.random(), arm, rng.random() < 0.4, True)
    r = row(value=400.0)
    first = learned.choose(r, np.random.default_rng(0))
    restored = LinearThompson.from_dict(json.loads(json.dumps(learned.to_dict())))
    coupon = CouponCandidate("SKU9", 0.4, 20.0)
    wider = candidate_actions(shop(), 400.0, "GBP", T0, coupon)  # one more action heard of
    assert len(wider) > len(r.actions)
    restored.choose(replace(r, actions=wider), np.random.default_rng(1))
    again = restored.choose(r, np.random.default_rng(0))
    assert again.probabilities == pytest.approx(first.probabilities, abs=1e-9)
    assert (again.index, again.version) == (first.index, first.version)
    learned.update("one-more", x, "none", True, False)  # new statistics: new draws
    assert learned.choose(r, np.random.default_rng(0)).probabilities != first.probabilities


def _learn(bandit: LinearThompson, n: int, seed: int = 0) -> None:
    """Customers buy at 0.3; 10% off lifts that to 0.6 for x0 > 0.5, free shipping never."""
    rng = np.random.default_rng(seed)
    arms = ["none", "free_shipping:fs", "percent_off:p10"]
    for i in range(n):
        x = rng.random(D)
        arm = arms[i % 3]
        p = 0.3 + (0.3 if arm == "percent_off:p10" and x[0] > 0.5 else 0.0)
        bought = bool(rng.random() < p)
        bandit.update(f"d{i}", x, arm, bought, bought and arm != "none")


def test_learns_to_offer_where_the_uplift_pays():
    bandit = LinearThompson(BanditConfig(uplift_precision=50.0))  # a weak prior: learns fast
    _learn(bandit, 6000)
    lifted = np.full(D, 0.5)
    lifted[0] = 0.95
    flat = np.full(D, 0.5)
    flat[0] = 0.05
    # margin 0.4 * 100 = 40; 10% off costs 10: pays when P(buy) goes 0.3 -> 0.6, not at 0.3
    assert row(lifted).actions[bandit.greedy(row(lifted))].id == "percent_off:p10"
    assert row(flat).actions[bandit.greedy(row(flat))].id == "none"
    p = bandit.purchase_probability(lifted, row().actions)
    assert p[0] == pytest.approx(0.3, abs=0.05) and p[2] > p[0] + 0.15
    assert p[1] >= p[0]  # an offer never lowers P(buy)


def test_state_round_trips_through_json_and_replayed_rewards_are_ignored():
    bandit = LinearThompson()
    _learn(bandit, 300)
    restored = LinearThompson.from_dict(json.loads(json.dumps(bandit.to_dict())))
    r = row(value=250.0)
    a = bandit.choose(r, np.random.default_rng(5))
    b = restored.choose(r, np.random.default_rng(5))
    assert a == b
    updates = restored.updates
    assert not restored.update("d3", np.zeros(D), "none", True, False)  # learned before
    assert restored.updates == updates
    with pytest.raises(ValueError):
        LinearThompson.from_dict({**bandit.to_dict(), "format": 1})


def test_chooser_per_merchant_and_learn_from_reward_dict():
    chooser = BanditChooser()
    reward = {
        "merchant_id": "shop",
        "decision_id": "d1",
        "features": [0.1] * D,
        "action": "percent_off:p10",
        "purchased": True,
        "redeemed": True,
    }
    assert chooser.learn(reward) and not chooser.learn(reward)
    assert chooser.model("shop").arms["percent_off:p10"].counts["bought"] == 1
    state = json.loads(json.dumps(chooser.state_dict()))
    other = BanditChooser()
    other.load_state_dict(state)
    assert other.model("shop").updates == 1


def test_static_and_rules_choosers():
    rng = np.random.default_rng(0)
    r = row(value=100.0)
    assert r.actions[StaticChooser("percent_off:p10").choose(r, rng).index].id == "percent_off:p10"
    assert r.actions[StaticChooser("free_shipping").choose(r, rng).index].kind == "free_shipping"
    choice = StaticChooser("threshold_nudge").choose(r, rng)
    assert (r.actions[choice.index].id, choice.propensity) == ("none", 1.0)
    ctx = context(shop(), 100.0)
    rules = ChoiceInput(ctx, ctx.merchant, np.zeros(D), r.actions, 0.0)
    # the rules policy's best reached tier by customer value: 10% of 100 beats shipping at 5
    assert r.actions[RulesChooser().choose(rules, rng).index].id == "percent_off:p10"


def test_config_is_checked():
    with pytest.raises(ValueError):
        BanditConfig(explore=1.5)
    with pytest.raises(ValueError):
        BanditConfig(uplift_precision=0)
    with pytest.raises(ValueError):
        BanditConfig(explore_depth_scale=0)
