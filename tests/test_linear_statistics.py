"""The Bayesian linear statistics both learned models keep (streams.learning.linear): parts
add up to one model that learned every reward, a replayed reward is not learned twice, and the
JSON form round-trips bit for bit in the promotion bandit's format."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.learning.linear import LinearStatistics
from streams.promotion.bandit import LinearThompson
from streams.promotion.features import FEATURE_NAMES

DIM = 4
COUNTERS = ("bought", "redeemed")

rewards_strategy = st.lists(
    st.tuples(
        st.integers(0, 30),  # reward id (repeats: replays)
        st.sampled_from(("none", "a", "b")),
        st.lists(st.floats(-1, 1, allow_nan=False), min_size=DIM - 1, max_size=DIM - 1),
        st.booleans(),
    ),
    max_size=60,
)


def learn_all(stats: LinearStatistics, rewards: list) -> None:
    for reward_id, arm, features, y in rewards:
        stats.learn(f"r{reward_id}", arm, stats.design(features), float(y), COUNTERS[: int(y)])


@settings(max_examples=60, deadline=None)
@given(rewards_strategy, st.integers(1, 4))
def test_parts_add_up_to_the_model_that_learned_every_reward(rewards, parts):
    whole = LinearStatistics(DIM, COUNTERS, remember=1000)
    learn_all(whole, rewards)
    first_of = {}  # a reward id is learned where it first came
    for reward in rewards:
        first_of.setdefault(reward[0], reward[0] % parts)
    split = [LinearStatistics(DIM, COUNTERS, remember=1000) for _ in range(parts)]
    for reward in rewards:
        learn_all(split[first_of[reward[0]]], [reward])
    merged = LinearStatistics(DIM, COUNTERS, remember=1000)
    for part in split:
        merged.add(part)
    assert merged.updates == whole.updates == len(first_of)
    assert set(merged.arms) == set(whole.arms)
    for arm_id, arm in whole.arms.items():
        mine = merged.arms[arm_id]
        assert (mine.n, mine.counts) == (arm.n, arm.counts)
        assert np.allclose(mine.gram, arm.gram) and np.allclose(mine.target, arm.target)


def test_a_replayed_reward_is_a_no_op_until_it_is_forgotten():
    stats = LinearStatistics(DIM, COUNTERS, remember=2)
    x = stats.design([0.5, 0.25, 1.0])
    assert stats.learn("r1", "a", x, 1.0, ("bought",))
    assert not stats.learn("r1", "a", x, 1.0, ("bought",))
    assert (stats.updates, stats.arms["a"].n, stats.arms["a"].counts["bought"]) == (1, 1, 1)
    assert stats.learn("r2", "a", x, 0.0) and stats.learn("r3", "b", x, 0.0)
    assert list(stats.seen) == ["r2", "r3"]  # the oldest forgotten first
    assert stats.learn("r1", "a", x, 1.0, ("bought",))  # forgotten: learned again
    np.testing.assert_array_equal(stats.arms["a"].target, 2 * x)


@settings(max_examples=30, deadline=None)
@given(rewards_strategy)
def test_json_round_trips_bit_for_bit(rewards):
    stats = LinearStatistics(DIM, COUNTERS, remember=1000)
    learn_all(stats, rewards)
    back = LinearStatistics(DIM, COUNTERS, remember=1000)
    back.load(stats.to_dict())
    assert back.to_dict() == stats.to_dict()
    for arm_id, arm in stats.arms.items():
        np.testing.assert_array_equal(back.arms[arm_id].gram, arm.gram)


def test_other_dimensions_are_refused_and_change_nothing():
    stats = LinearStatistics(DIM, COUNTERS, remember=10)
    other = LinearStatistics(DIM + 1, COUNTERS, remember=10)
    other.learn("r1", "a", other.design([0.0] * DIM), 1.0)
    with pytest.raises(ValueError, match="5 weights, not 4"):
        stats.load(other.to_dict())
    assert stats.arms == {} and stats.updates == 0


def test_the_bandit_keeps_its_json_format():
    model = LinearThompson()
    model.update("d1", [0.5] * len(FEATURE_NAMES), "percent_off:ten-off", True, True)
    data = model.to_dict()
    assert list(data) == ["format", "feature_set", "updates", "arms", "seen"]
    assert list(data["arms"]) == ["none", "percent_off:ten-off"]
    arm = data["arms"]["percent_off:ten-off"]
    assert list(arm) == ["gram", "target", "n", "bought", "redeemed"]
    assert (arm["n"], arm["bought"], arm["redeemed"], data["seen"]) == (1, 1, 1, ["d1"])
    assert LinearThompson.from_dict(data).to_dict() == data
