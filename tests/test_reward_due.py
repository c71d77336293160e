"""The reward sweep's index kept in a table (`streams.promotion.rewards.reward_windows`): written
only when a customer's next window end changes, read back after a restart or a rebalance, clocks
stored."""

from __future__ import annotations

from types import SimpleNamespace

import orjson

from agents.promotion import LedgerTable, PromotionHooks
from agents.runtime.batch import CustomerEntry
from streams.promotion import rewards
from streams.state.customer_state import new_state
from tests.promo_fixtures import HOUR, T0
from tests.test_rewards import TERMS, WINDOW, decision
from tests.test_timers import MemoryStore

LATENESS = 60.0


def fake_event(partition: int) -> SimpleNamespace:
    return SimpleNamespace(message=SimpleNamespace(partition=partition))


class Worker:
    """`reward_windows` driven the way ``agents.promotion`` drives it, with a wall clock to move."""

    def __init__(self, store: MemoryStore) -> None:
        self.wall = 1_700_000_000.0
        self.windows = rewards.reward_windows(store, LATENESS, wall=lambda: self.wall)

    def batch(self, partition: int, event_time: float, states: dict[str, dict | None]) -> list:
        """An input event at ``event_time`` on ``partition``; the customers in ``states`` are
        touched. Returns the rewards closed (of the touched customers and the swept ones)."""
        event = fake_event(partition)
        self.windows.observe(partition, event_time)
        keys = set(states) | set(self.windows.sweep(partition, event))
        closed = []
        now = self.windows.now(partition)
        for key in sorted(keys):
            state = states.get(key, ALL_STATES.get(key))
            if state is not None and "promo" in state:
                closed += rewards.close_due(state, now)
            self.windows.update(partition, key, state, event)
        self.wall += 5.0
        return closed


ALL_STATES: dict[str, dict | None] = {}  # the customers' table, for the swept customers


def customer(key: str, *decisions: tuple[str, float]) -> dict:
    state = new_state()
    for decision_id, ts in decisions:
        rewards.open_decision(state, decision(decision_id, customer_key=key), ts, WINDOW, TERMS)
    ALL_STATES[key] = state
    return state


def test_a_window_closes_by_the_sweep_after_a_restart_and_is_written_only_when_it_changes():
    store = MemoryStore()
    worker = Worker(store)
    a = customer("shop:c:a", ("d1", T0))
    assert worker.batch(0, T0, {"shop:c:a": a}) == []
    assert store.due == {"shop:c:a": (0, T0 + WINDOW)}
    # a later decision and events of the customer leave the earliest window end as it is
    rewards.open_decision(a, decision("d2", customer_key="shop:c:a"), T0 + HOUR, WINDOW, TERMS)
    worker.batch(0, T0 + HOUR, {"shop:c:a": a})
    worker.batch(0, T0 + 2 * HOUR, {"shop:c:a": a})
    assert store.writes == [("shop:c:a", T0 + WINDOW)]

    # Restart: a fresh worker reads the index and the clock back; only another customer's
    # events move the partition's event time on, and the sweep finds the customer.
    restarted = Worker(store)
    customer("shop:c:b")
    closed = restarted.batch(0, T0 + WINDOW + LATENESS, {"shop:c:b": ALL_STATES["shop:c:b"]})
    assert [(r["decision_id"], r["purchased"]) for r in closed] == [("d1", False)]
    assert store.due == {"shop:c:a": (0, T0 + HOUR + WINDOW)}  # the next window's end
    closed = restarted.batch(0, T0 + HOUR + WINDOW + LATENESS, {})
    assert [r["decision_id"] for r in closed] == ["d2"]
    assert store.due == {}  # no window open: deleted
    assert store.writes[1:] == [("shop:c:a", T0 + HOUR + WINDOW), ("shop:c:a", None)]
    # a replay of the same events closes nothing again (the decisions are closed for good)
    assert restarted.batch(0, T0 + HOUR + WINDOW + LATENESS, {"shop:c:a": a}) == []
    assert len(store.writes) == 3


def test_a_window_closed_by_the_customers_own_event_is_deleted_from_the_store():
    store = MemoryStore()
    worker = Worker(store)
    c = customer("shop:c:c", ("d1", T0))
    worker.batch(1, T0, {"shop:c:c": c})
    closed = worker.batch(1, T0 + WINDOW + LATENESS, {"shop:c:c": c})
    assert [r["decision_id"] for r in closed] == ["d1"]
    assert store.due == {} and store.writes == [("shop:c:c", T0 + WINDOW), ("shop:c:c", None)]


def test_each_partition_has_its_own_clock_and_index():
    store = MemoryStore()
    worker = Worker(store)
    worker.batch(0, T0, {"shop:c:p0": customer("shop:c:p0", ("d0", T0))})
    worker.batch(1, T0, {"shop:c:p1": customer("shop:c:p1", ("d1", T0))})
    closed = worker.batch(1, T0 + WINDOW + LATENESS, {})
    assert [r["decision_id"] for r in closed] == ["d1"]
    assert store.due == {"shop:c:p0": (0, T0 + WINDOW)}  # partition 0's clock did not move
    assert worker.windows.pending(0) == 1 and worker.windows.pending(1) == 0


def test_a_customer_gone_from_the_table_leaves_the_index():
    store = MemoryStore()
    worker = Worker(store)
    worker.batch(0, T0, {"shop:s:anon": customer("shop:s:anon", ("d1", T0))})
    ALL_STATES["shop:s:anon"] = None  # claimed by a signed-in customer: state deleted
    assert worker.batch(0, T0 + WINDOW + LATENESS, {}) == []
    assert store.due == {} and worker.windows.pending(0) == 0


def test_the_clock_is_stored_at_most_once_a_second_and_does_not_move_back_after_a_restart():
    store = MemoryStore()
    worker = Worker(store)
    windows = worker.windows
    windows.observe(0, T0)
    windows.sweep(0, fake_event(0))
    assert store.clocks[0]["event_time"] == T0
    windows.observe(0, T0 + 10)
    windows.sweep(0, fake_event(0))
    assert store.clocks[0]["event_time"] == T0  # the same wall second
    worker.wall += 1.0
    windows.sweep(0, fake_event(0))
    assert store.clocks[0]["event_time"] == T0 + 10

    restarted = rewards.reward_windows(store, LATENESS)
    restarted.observe(0, T0 - HOUR)  # a replay of older events
    assert restarted.now(0) == T0 + 10 - LATENESS
    assert restarted.now(3) is None  # no event seen on it yet


def test_a_partition_revoked_and_assigned_again_is_read_back_from_the_store():
    store = MemoryStore()
    first, second = Worker(store), Worker(store)
    first.batch(0, T0, {"shop:c:a": customer("shop:c:a", ("d1", T0))})
    first.windows.forget([0])
    # meanwhile the partition's other owner closed the window
    second.batch(0, T0 + WINDOW + LATENESS, {})
    assert store.due == {}
    assert first.batch(0, T0 + WINDOW + LATENESS + 1, {}) == []
    assert first.windows.pending(0) == 0


# -- the agent's hooks, driven like the pipeline -------------------------------------------


class FakeEvent:
    """What the hooks read of a Faust event: its partition (weak-referenceable)."""

    def __init__(self, partition: int) -> None:
        self.message = SimpleNamespace(partition=partition)


class FakeBandit:
    def refresh_if_due(self) -> None: ...

    def learn(self, closed, partition_of) -> None: ...

    def flush(self, events=None) -> list[str]:
        return []


def drive(store: MemoryStore, table: dict):
    """`PromotionHooks` over ``store``, and a function that runs one batch the way the
    pipeline does: another customer's page view at ``event_time`` on partition 0, then a
    decision for each customer of ``decide`` loaded without an event of theirs (as the
    journeys' timer loads an abandoned cart); it returns the rewards emitted."""
    records: list[dict] = []
    policy = SimpleNamespace(drain_records=lambda: (records[:], []), drain_blocked=lambda: {})
    nb = SimpleNamespace(
        settings=SimpleNamespace(partitions=4), decisions="decisions", rewards="rewards"
    )
    hooks = PromotionHooks(
        nb, policy, LedgerTable({}), FakeBandit(), rewards.reward_windows(store, LATENESS)
    )

    def load(batch, key, event):
        if key not in batch.entries:
            batch.entries[key] = CustomerEntry(table.get(key), event)
        return batch.entries[key]

    def run(event_time: float, decide: tuple[str, ...] = ()) -> list:
        event = FakeEvent(0)
        batch = SimpleNamespace(entries={}, outputs=[])
        hooks.begin(batch, [event])
        other = load(batch, "shop:c:other", event)
        other.state = table.setdefault("shop:c:other", new_state())
        hooks.on_input("shop:c:other", other.state, "clickstream", {"_ts": event_time}, event)
        records.clear()
        for key in decide:
            entry = load(batch, key, event)
            entry.state = table[key] = new_state()
            record = decision(f"d-{key}", customer_key=key)
            rewards.open_decision(entry.state, record, event_time, WINDOW, TERMS)
            records.append(record)
        hooks.finish(batch, load)
        return [orjson.loads(value) for topic, _, value in batch.outputs if topic == "rewards"]

    return run


def test_a_decision_without_an_event_of_its_customer_in_the_batch_is_indexed():
    """An abandoned-cart reminder's offer is decided for a customer loaded by the journeys'
    timer, not by an event of theirs: its window is indexed and closed by the sweep."""
    store = MemoryStore()
    run = drive(store, {})
    assert run(T0, decide=("shop:c:r",)) == []
    assert store.due == {"shop:c:r": (0, T0 + WINDOW)}
    [reward] = run(T0 + WINDOW + LATENESS)
    assert reward["decision_id"] == "d-shop:c:r" and reward["purchased"] is False
    assert store.due == {}


def test_one_customer_whose_windows_fail_to_close_costs_the_others_nothing(monkeypatch, caplog):
    """The sweep closes two customers' windows; closing one of them raises: the other's reward
    still goes out, and the failure is logged, not raised into the batch."""
    close_due = rewards.close_due

    def failing(state: dict, now: float) -> list[dict]:
        if state.get("broken"):
            raise KeyError("pending")
        return close_due(state, now)

    monkeypatch.setattr(rewards, "close_due", failing)
    table: dict = {}
    run = drive(MemoryStore(), table)
    assert run(T0, decide=("shop:c:a", "shop:c:b")) == []
    table["shop:c:a"]["broken"] = True
    with caplog.at_level("ERROR"):
        closed = run(T0 + WINDOW + LATENESS)
    assert [r["decision_id"] for r in closed] == ["d-shop:c:b"]
    assert "shop:c:a" in caplog.text
