"""Time for event-time timers: a clock per input partition and an index of who is due when.

**How time advances.** Each input partition has its own clock. It follows the highest event
time seen on the partition, minus an allowed lateness (events of one customer arrive on several
topics that are consumed at slightly different paces; lateness keeps a reminder from firing
just before the checkout that cancels it is read). When a partition goes quiet, its clock keeps
running at wall-clock speed from the last event: a timer due an hour after the last cart
change fires an hour later even if nothing else happens on that partition. A replay that
compresses event time moves the clock as fast as its events do.

**How due timers are found.** Not by scanning customers: `DueIndex` keeps, per partition, a
heap of (due time, customer key) for the customers that have a pending step. The index is
rebuilt from the ``journey-timers`` table (one small record per customer with a pending step,
plus one clock record per partition, all changelogged and co-partitioned with the customers)
when a partition is assigned to a worker, so timers survive restarts and rebalances.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

CLOCK_PREFIX = "__clock__:"


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
    """Where a partition's due times and clock persist: ``agents.outreach.TableTimerStore`` on
    a Faust table (customer key -> ``{"due", "p"}``, plus one clock per partition), a dict in
    tests. Used by the journey timers and the promotion's reward windows."""

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
