"""One take model per merchant for all workers: take windows learned per merchant:partition
add up to the take model that learned every window (streams.engagement.ranking.Rankers), and
the engagement hooks share them through a table view (agents.runtime.parts_table.PartsTable),
without a broker (the real-broker test is in test_engagement_stream.py)."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from agents.engagement import Engagement
from agents.runtime.parts_table import PartsTable
from streams.engagement.ranking import ACTION_FEATURE_NAMES, Rankers, TakeModel
from streams.state.customer_state import apply_event, new_state
from tests.test_bandit_sharing import FakeEvent
from tests.test_engagement import Counts, feedback, merchant, parsed

ACTION_IDS = ("join-loyalty", "get-app", "explore-candles")
PARTITIONS = 4


def random_windows(count: int, seed: int = 0) -> list[dict]:
    """Closed take windows (``streams.engagement.rewards``) with random features."""
    rng = np.random.default_rng(seed)
    return [
        {
            "reward_id": f"w{i}|{ACTION_IDS[i % 3]}",
            "action_id": ACTION_IDS[i % 3],
            "features": rng.random(len(ACTION_FEATURE_NAMES)).round(4).tolist(),
            "taken": bool(rng.random() < 0.4),
            "customer": i % 29,
        }
        for i in range(count)
    ]


def learned_in_one(windows: list[dict]) -> TakeModel:
    model = TakeModel()
    for w in windows:
        model.update(w["reward_id"], w["action_id"], w["features"], w["taken"])
    return model


def learn_per_partition(rankers: Rankers, windows: list[dict]) -> None:
    for w in windows:
        rankers.learn(f"shop:{w['customer'] % PARTITIONS}", [w])


def assert_same_model(merged: TakeModel, whole: TakeModel) -> None:
    assert merged.updates == whole.updates and merged.version == whole.version
    assert set(merged.stats.arms) == set(whole.stats.arms)
    for action_id, stats in whole.stats.arms.items():
        mine = merged.stats.arms[action_id]
        assert (mine.n, mine.counts) == (stats.n, stats.counts)
        assert np.allclose(mine.gram, stats.gram) and np.allclose(mine.target, stats.target)
    shop = merchant()
    x = [0.3] * len(ACTION_FEATURE_NAMES)
    for action in shop.engagement_actions:
        assert merged.p_take(action, x) == pytest.approx(whole.p_take(action, x), abs=1e-12)


def test_parts_add_up_to_the_take_model_that_learned_every_window():
    windows = random_windows(240)
    rankers = Rankers()
    learn_per_partition(rankers, windows)
    assert set(rankers.parts) == {f"shop:{p}" for p in range(PARTITIONS)}
    assert all(part.updates for part in rankers.parts.values())
    assert_same_model(rankers.model("shop"), learned_in_one(windows))
    assert_same_model(TakeModel.merged(rankers.parts.values()), learned_in_one(windows))
    summary = rankers.summary()["shop"]
    assert summary["updates"] == 240 and sum(summary["parts"].values()) == 240


def test_replayed_windows_are_not_learned_twice_and_parts_reload_elsewhere():
    windows = random_windows(120, seed=1)
    rankers = Rankers()
    learn_per_partition(rankers, windows)
    assert not any(rankers.learn(f"shop:{w['customer'] % PARTITIONS}", [w]) for w in windows)
    assert rankers.model("shop").updates == 120
    # Another worker loads the entries as JSON (the table's changelog): the same model, and a
    # replay into a part it now owns is a no-op (the part remembers the windows it learned).
    entries = {key: orjson.loads(orjson.dumps(rankers.entry(key))) for key in rankers.parts}
    other = Rankers()
    assert other.load(entries) == []
    assert_same_model(other.model("shop"), learned_in_one(windows))
    assert not other.learn(f"shop:{windows[0]['customer'] % PARTITIONS}", windows[:1])
    assert other.summary() == rankers.summary()
    # An unusable entry (another format, other context features) is left out.
    assert other.load({"shop:9": {"format": 1, "actions": {}}}) == ["shop:9"]
    assert other.model("shop").updates == 120


def take_events(customer: str) -> list[dict]:
    shown = feedback("action_shown", "get-app", "2011-12-01T10:00:00Z", f"s-{customer}")
    taken = feedback("action_taken", "get-app", "2011-12-01T10:20:00Z", f"t-{customer}")
    return [parsed({**shown, "customer_id": customer}), parsed({**taken, "customer_id": customer})]


def take(worker: Engagement, shop: object, customer: str, event: FakeEvent) -> None:
    """The customer is shown the app and takes it (two events of the partition of ``event``)."""
    state = new_state()
    for data in take_events(customer):
        apply_event(state, "action_feedback", data)
        worker.on_input(Counts(), shop, state, "action_feedback", data, event)


def test_a_take_learned_on_one_worker_moves_the_other_workers_ranking():
    table: dict[bytes, bytes] = {}  # the global table: every worker reads every entry
    a, b = (
        Engagement(rankers, PartsTable(table, rankers, "take model", write_s=0.0))
        for rankers in (Rankers(), Rankers())
    )
    shop = merchant(take_window_hours=1)
    before = b.rank(shop, new_state(), 0.0, "r1")
    # Worker a owns partition 2: fifty customers there take the app they were shown.
    for i in range(50):
        take(a, shop, f"c{i}", FakeEvent(2))
    assert a.table.dirty == {"shop:2"}
    assert a.table.flush() == ["shop:2"] and set(table) == {b"shop:2"}
    b.table.refresh()
    after = b.rank(shop, new_state(), 0.0, "r1")
    p_before = {item.action.id: item.p_take for item in before.items}
    p_after = {item.action.id: item.p_take for item in after.items}
    assert p_after["get-app"] > p_before["get-app"] + 0.3
    assert after.version == "engagement-ts/1:50" and before.version == "engagement-ts/1:0"
    assert after.first.action.id == "get-app"

    # a learns one more and writes it; then b takes partition 2 over before its next refresh:
    # its first learning there continues from a's entry, and a window a learned (its events
    # redelivered to b) is not learned again.
    take(a, shop, "c50", FakeEvent(2))
    assert a.table.flush() == ["shop:2"]
    a.forget([2])
    take(b, shop, "c50", FakeEvent(2))
    assert not b.table.dirty and b.rankers.model("shop").updates == 51
    take(b, shop, "c99", FakeEvent(2))
    assert b.table.flush() == ["shop:2"]
    a.table.refresh()
    both = {"shop": {"updates": 52, "parts": {"shop:2": 52}}}
    assert a.rankers.summary() == b.rankers.summary() == both
    assert a.rank(shop, new_state(), 0.0, "r2") == b.rank(shop, new_state(), 0.0, "r2")


def test_a_rebuilt_model_recomputes_only_the_posteriors_that_changed():
    windows = random_windows(90, seed=5)
    rankers = Rankers()
    learn_per_partition(rankers, windows)
    actions = merchant().engagement_actions
    before = rankers.model("shop")
    kept = {action.id: before._posterior(action) for action in actions}
    get_app = {**windows[0], "reward_id": "new|get-app", "action_id": "get-app"}
    assert rankers.learn("shop:1", [get_app])
    after = rankers.model("shop")
    fresh = TakeModel.merged(rankers.parts.values())
    for action in actions:
        mean, draws = after._posterior(action)
        fresh_mean, fresh_draws = fresh._posterior(action)
        np.testing.assert_array_equal(mean, fresh_mean)
        np.testing.assert_array_equal(draws, fresh_draws)
        assert (draws is kept[action.id][1]) == (action.id != "get-app")
