"""`streams.timers.PartitionTimers`: the one clock-and-due-index mechanism of the journeys and
the reward windows, with their differences as parameters."""

from __future__ import annotations

from types import SimpleNamespace

from streams.timers import PartitionClock, PartitionTimers

T0 = 1_000_000.0


class MemoryStore:
    """A timer table as a dict (it outlives the `PartitionTimers`, like the real table); writes
    must be routed to the key's partition."""

    def __init__(self) -> None:
        self.due: dict[str, tuple[int, float]] = {}
        self.clocks: dict[int, dict] = {}
        self.writes: list[tuple[str, float | None]] = []
        self.clock_writes = 0

    def read_partition(self, partition):
        entries = [(k, due) for k, (p, due) in self.due.items() if p == partition]
        return PartitionClock.from_json(self.clocks.get(partition)), entries

    def write_due(self, key, partition, due, event):
        assert event.message.partition == partition  # routed to the customer's partition
        self.writes.append((key, due))
        if due is None:
            self.due.pop(key, None)
        else:
            self.due[key] = (partition, due)

    def write_clock(self, partition, clock, event):
        assert event.message.partition == partition
        self.clock_writes += 1
        self.clocks[partition] = clock.to_json()


EVENT = SimpleNamespace(message=SimpleNamespace(partition=0))


def timers(store: MemoryStore, wall: list[float], **rules: bool) -> PartitionTimers:
    return PartitionTimers(store, lambda state: state["due"], 60.0, wall=lambda: wall[0], **rules)


def test_earlier_only_stores_a_new_or_earlier_time_and_a_popped_key_always():
    store, wall = MemoryStore(), [0.0]
    t = timers(store, wall, idle_advance=True, earlier_only=True)
    t.update(0, "a", {"due": T0 + 100}, EVENT)
    t.update(0, "a", {"due": T0 + 200}, EVENT)  # later: left as stored
    t.update(0, "a", {"due": None}, EVENT)  # cancelled: left as stored
    t.update(0, "a", {"due": T0 + 50}, EVENT)  # earlier: stored
    assert store.writes == [("a", T0 + 100), ("a", T0 + 50)]
    t.observe(0, T0 + 110)
    assert t.pop_due(0, t.now(0)) == ["a"]
    t.update(0, "a", {"due": T0 + 500}, EVENT)  # popped: its real time is stored
    assert store.writes[-1] == ("a", T0 + 500) and t.total_pending() == 1


def test_on_change_stores_every_change_and_deletes_a_key_with_nothing_due():
    store, wall = MemoryStore(), [0.0]
    t = timers(store, wall, idle_advance=False, earlier_only=False)
    t.update(0, "a", {"due": T0 + 100}, EVENT)
    t.update(0, "a", {"due": T0 + 100}, EVENT)  # unchanged: no write
    t.update(0, "a", {"due": T0 + 200}, EVENT)
    t.update(0, "a", None, EVENT)
    assert store.writes == [("a", T0 + 100), ("a", T0 + 200), ("a", None)]


def test_idle_advance_moves_a_quiet_partition_on_at_wall_clock_speed():
    wall = [0.0]
    running = timers(MemoryStore(), wall, idle_advance=True, earlier_only=True)
    event_only = timers(MemoryStore(), wall, idle_advance=False, earlier_only=False)
    for t in (running, event_only):
        assert t.now(0) is None
        t.observe(0, T0)
    wall[0] = 300.0
    assert running.now(0) == T0 - 60 + 300
    assert event_only.now(0) == T0 - 60


def test_the_clock_is_stored_when_it_moved_at_most_once_per_interval_and_read_back():
    store, wall = MemoryStore(), [0.0]
    t = timers(store, wall, idle_advance=True, earlier_only=True)
    t.observe(0, T0)
    t.save_clock(0, EVENT)
    t.observe(0, T0 + 5)
    t.save_clock(0, EVENT)  # within the second: not yet
    wall[0] = 1.0
    t.observe(0, T0 - 50)  # a late event does not move the clock back
    t.save_clock(0, EVENT)
    wall[0] = 5.0
    t.save_clock(0, EVENT)  # not moved since: nothing to store
    assert store.clock_writes == 2 and store.clocks[0]["event_time"] == T0 + 5
    restarted = timers(store, wall, idle_advance=False, earlier_only=False)
    assert restarted.now(0) == T0 + 5 - 60
