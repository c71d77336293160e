"""Time for event-time timers: a clock per input partition and an index of who is due when.

Used by the journeys (``journey-timers``: the next step of each customer) and the promotion's
reward windows (``reward-due``: the end of each customer's next attribution window), both
through `PartitionTimers`.

**How time advances.** Each input partition has its own clock. It follows the highest event
time seen on the partition, minus an allowed lateness (events of one customer arrive on several
topics that are consumed at slightly different paces; lateness keeps a reminder from firing
just before the checkout that cancels it is read). With ``idle_advance`` (the journeys), a
quiet partition's clock keeps running at wall-clock speed from the last event: a timer due an
hour after the last cart change fires an hour later even if nothing else happens on that
partition; without it (the reward windows) the clock moves with events only. A replay that
compresses event time moves the clock as fast as its events do.

**How due timers are found.** Not by scanning customers: `DueIndex` keeps, per partition, a
heap of (due time, customer key) for the customers that have something due. The index is
rebuilt from a `TimerStore` (a table: one small record per customer with something due, plus
one clock record per partition, all changelogged and co-partitioned with the customers) when a
partition is first seen by a worker, so timers survive restarts and rebalances.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

CLOCK_PREFIX = "__clock__:"
#: A partition's clock is stored at most this often (wall seconds).
CLOCK_SAVE_S = 1.0


@dataclass
class PartitionClock:
    event_time: float | None = None  # highest input event time seen on the partition
    wall: float = 0.0  # wall-clock time when event_time was last raised

    def observe(self, event_time: float, wall: float) -> None:
        if self.event_time is None or event_time > self.event_time:
            self.event_time, self.wall = event_time, wall

    def now(self, wall: float, lateness_s: float) -> float | None:
        """The partition's event time at wall time ``wall`` (None before its first event)."""
        if self.event_time is None:
            return None
        return self.event_time - lateness_s + max(0.0, wall - self.wall)

    def to_json(self) -> dict:
        return {"event_time": self.event_time, "wall": self.wall}

    @classmethod
    def from_json(cls, raw: dict | None) -> PartitionClock:
        return cls(**raw) if raw else cls()


class TimerStore(Protocol):
    """Where a partition's due times and clock persist: ``agents.runtime.timer_table`` on a
    Faust table (customer key -> ``{"due", "p"}``, plus one clock per partition), a dict in
    tests. ``event``: one of the partition's, the write is routed by it."""

    def read_partition(self, partition: int) -> tuple[PartitionClock, list[tuple[str, float]]]: ...

    def write_due(self, key: str, partition: int, due: float | None, event: object) -> None: ...

    def write_clock(self, partition: int, clock: PartitionClock, event: object) -> None: ...


class DueIndex:
    """Per partition: which customer keys have a step due, earliest first (lazy deletion)."""

    def __init__(self) -> None:
        self._heaps: dict[int, list[tuple[float, str]]] = {}
        self._due: dict[int, dict[str, float]] = {}

    def loaded(self, partition: int) -> bool:
        return partition in self._due

    def load(self, partition: int, entries: Iterable[tuple[str, float]]) -> None:
        due = dict(entries)
        self._due[partition] = due
        heap = [(when, key) for key, when in due.items()]
        heapq.heapify(heap)
        self._heaps[partition] = heap

    def forget(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self._due.pop(partition, None)
            self._heaps.pop(partition, None)

    def get(self, partition: int, key: str) -> float | None:
        return self._due.get(partition, {}).get(key)

    def set(self, partition: int, key: str, when: float | None) -> None:
        due = self._due.setdefault(partition, {})
        if when is None:
            due.pop(key, None)
            return
        if due.get(key) != when:
            due[key] = when
            heap = self._heaps.setdefault(partition, [])
            heapq.heappush(heap, (when, key))
            if len(heap) > 4 * len(due) + 1024:  # re-armed timers leave stale entries behind
                self.load(partition, list(due.items()))

    def pop_due(self, partition: int, now: float) -> list[str]:
        """Keys due at or before ``now``; they leave the index until `set` again."""
        heap = self._heaps.get(partition, [])
        due = self._due.get(partition, {})
        keys = []
        while heap and heap[0][0] <= now:
            when, key = heapq.heappop(heap)
            if due.get(key) == when:
                del due[key]
                keys.append(key)
        return keys

    def pending(self, partition: int) -> int:
        return len(self._due.get(partition, {}))


class PartitionTimers:
    """Per input partition: its `PartitionClock` and a `DueIndex` of when each customer is due
    next, mirrored to a `TimerStore`.

    A customer's time is ``next_due(state)``, given to `update` after each change of their
    state. It is stored when it changes; with ``earlier_only``, only when it comes earlier than
    the stored one (a later or no time stays as it was: the customer is woken up early for
    nothing, and `update` then stores the real time). Keys that `pop_due` took out of the
    index are still in the store: their next `update` is always stored.

    The clock is the newest event time seen on the partition minus ``lateness_s`` (with
    ``idle_advance`` plus the wall time since, see the module docstring). `save_clock` stores it
    when it moved, at most every ``clock_save_s`` wall seconds, so after a restart it may trail
    the events it saw by that long: timers then fire a little late, never early, and a replay
    of older events after a restart does not move it back.

    A partition's index and clock are read back from the store the first time the partition
    is seen after it was assigned (`forget` on revocation), on another worker too.
    """

    def __init__(
        self,
        store: TimerStore,
        next_due: Callable[[dict], float | None],
        lateness_s: float,
        *,
        idle_advance: bool,
        earlier_only: bool,
        clock_save_s: float = CLOCK_SAVE_S,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.next_due = next_due
        self.lateness_s = lateness_s
        self.idle_advance = idle_advance
        self.earlier_only = earlier_only
        self.clock_save_s = clock_save_s
        self.wall = wall
        self.index = DueIndex()
        self.clocks: dict[int, PartitionClock] = {}
        self._saved: dict[int, tuple[float | None, float]] = {}  # event time, wall of last write
        self._popped: dict[int, set[str]] = {}  # left the index, still in the store

    def _ensure(self, partition: int) -> PartitionClock:
        if not self.index.loaded(partition):
            clock, entries = self.store.read_partition(partition)
            self.index.load(partition, entries)
            self.clocks[partition] = clock
            self._saved[partition] = (clock.event_time, -math.inf)
        return self.clocks[partition]

    def observe(self, partition: int, event_time: float) -> None:
        """An input event of ``partition`` at ``event_time``."""
        self._ensure(partition).observe(event_time, self.wall())

    def now(self, partition: int) -> float | None:
        """The partition's event time for timers (None before its first event)."""
        clock = self._ensure(partition)
        if not self.idle_advance:
            return None if clock.event_time is None else clock.event_time - self.lateness_s
        return clock.now(self.wall(), self.lateness_s)

    def save_clock(self, partition: int, event: object) -> None:
        """Store the partition's clock if it moved since it was last stored, at most every
        ``clock_save_s`` wall seconds."""
        clock = self._ensure(partition)
        wall = self.wall()
        saved_time, saved_at = self._saved[partition]
        if clock.event_time != saved_time and wall - saved_at >= self.clock_save_s:
            self.store.write_clock(partition, clock, event)
            self._saved[partition] = (clock.event_time, wall)

    def pop_due(self, partition: int, now: float) -> list[str]:
        """Customer keys of ``partition`` due at or before ``now``; each must then be given to
        `update` (after its due work was done)."""
        self._ensure(partition)
        keys = self.index.pop_due(partition, now)
        self._popped.setdefault(partition, set()).update(keys)
        return keys

    def sweep(self, partition: int, event: object) -> list[str]:
        """`save_clock`, then `pop_due` at `now` (none before the partition's first event)."""
        self.save_clock(partition, event)
        now = self.now(partition)
        return [] if now is None else self.pop_due(partition, now)

    def update(self, partition: int, key: str, state: dict | None, event: object) -> None:
        """Index (and store, by the rules above) the customer's next due time; ``state`` None:
        the customer is gone, or has nothing due."""
        self._ensure(partition)
        due = self.next_due(state) if state is not None else None
        stored = self.index.get(partition, key)
        popped = self._popped.get(partition, set())
        if key in popped:
            popped.discard(key)
        elif self.earlier_only:
            if due is None or (stored is not None and due >= stored):
                return
        elif due == stored:
            return
        self.index.set(partition, key, due)
        self.store.write_due(key, partition, due, event)

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions revoked from this worker: read back from the store if they return."""
        partitions = list(partitions)
        self.index.forget(partitions)
        for partition in partitions:
            self.clocks.pop(partition, None)
            self._saved.pop(partition, None)
            self._popped.pop(partition, None)

    def pending(self, partition: int) -> int:
        return self.index.pending(partition)

    def total_pending(self) -> int:
        """Keys due later, over every partition of this worker."""
        return sum(self.index.pending(partition) for partition in self.clocks)
