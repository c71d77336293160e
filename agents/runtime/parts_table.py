"""A model learned per ``merchant:partition`` (``streams.learning.partitioned``) shared through
a Faust GlobalTable: the promotion bandit (``promo-bandit``, agents/promotion.py) and the
engagement take models (``engagement-models``, agents/engagement.py).

One JSON entry per part, written by the worker that owns the part's input partition while an
event of that partition is pinned (one writer per entry; its changelog record lands on that
partition), at most every `WRITE_S` seconds per entry (a timer writes what the batches left,
pinned to the latest event seen of the partition); every worker reads every entry (a global
table's changelog is replicated to all of them) and loads those that changed, every
`REFRESH_S` seconds and, for a part it is about to learn into, first (`catch_up`: after a
rebalance this worker's copy of a partition it now owns was recovered from the changelog, maybe
after the last refresh). A worker restarted on an empty state directory gets every part back
from the changelog.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

import faust
import orjson

from agents.runtime.batch import pin

log = logging.getLogger(__name__)
REFRESH_S = 2.0
WRITE_S = 1.0


class Parts(Protocol):
    """What `PartsTable` reads and writes (``streams.learning.partitioned.PartitionedModels``)."""

    def load(self, entries: Mapping[str, dict]) -> list[str]: ...

    def entry(self, key: str) -> dict: ...


class PartsTable:
    """A GlobalTable as a model's parts: loaded when they changed, written by their owner."""

    def __init__(
        self, table: faust.Table, learning: Parts, name: str, write_s: float = WRITE_S
    ) -> None:
        self.table = table
        self.learning = learning
        self.name = name  # of the model, for the log
        self.write_s = write_s
        self.raw: dict[str, bytes] = {}  # each entry's bytes as last loaded or written
        self.dirty: set[str] = set()  # learned, not yet written
        self.written_at: dict[str, float] = {}  # time.monotonic() of each entry's last write
        self.events: dict[int, faust.EventT] = {}  # partition -> its latest event seen
        self.refreshed = -math.inf  # time.monotonic() of the last refresh
        self.changed = False  # since the last export

    def _load(self, fresh: Mapping[str, bytes]) -> None:
        entries = {}
        for key, raw in fresh.items():
            self.raw[key] = raw
            try:
                entries[key] = orjson.loads(raw)
            except orjson.JSONDecodeError:
                log.error("%s entry %s is not JSON; left out", self.name, key)
        for key in self.learning.load(entries):
            log.error("%s entry %s is unusable (another format?); left out", self.name, key)
        self.changed = self.changed or bool(entries)

    def refresh(self) -> None:
        """Load every entry that changed since it was last loaded (other workers' learning)."""
        self.refreshed = time.monotonic()
        fresh = {}
        for raw_key, raw in self.table.items():
            key = raw_key.decode()
            if key not in self.dirty and raw is not None and raw != self.raw.get(key):
                fresh[key] = raw
        self._load(fresh)

    def refresh_if_due(self) -> None:
        if time.monotonic() - self.refreshed >= REFRESH_S:
            self.refresh()

    def catch_up(self, keys: Iterable[str]) -> None:
        """Load these entries where the table's differ from what was last loaded or written
        (before learning into them: module doc); entries learned and not yet written keep
        this worker's."""
        fresh = {}
        for key in sorted(set(keys) - self.dirty):
            raw = self.table.get(key.encode())
            if raw is not None and raw != self.raw.get(key):
                fresh[key] = raw
        self._load(fresh)

    def learned(
        self, keys: Iterable[str], events: Mapping[int, faust.EventT] | None = None
    ) -> None:
        """These entries learned (written at the next `flush`); ``events``: an event of each
        partition, to pin their writes to."""
        keys = set(keys)
        self.dirty |= keys
        self.changed = self.changed or bool(keys)
        self.events.update(events or {})

    def flush(self, events: Mapping[int, faust.EventT] | None = None) -> list[str]:
        """Write the learned entries not written in the last `write_s` seconds, each pinned to
        an event of its partition (this batch's, else the latest seen: the timer's flush
        writes what a batch left); returns the keys written."""
        self.events.update(events or {})
        now = time.monotonic()
        written = []
        for key in sorted(self.dirty):
            event = self.events.get(int(key.rsplit(":", 1)[1]))
            if event is None or now - self.written_at.get(key, -math.inf) < self.write_s:
                continue
            raw = orjson.dumps(self.learning.entry(key))
            pin(event)
            self.table[key.encode()] = raw
            self.raw[key] = raw
            self.written_at[key] = now
            written.append(key)
        self.dirty.difference_update(written)
        return written

    def forget(self, partitions: Sequence[int]) -> None:
        """Partitions revoked: their unwritten learning is dropped; the next refresh loads
        the table's entries of them again."""
        for partition in partitions:
            self.events.pop(partition, None)
        gone = {str(p) for p in partitions}
        for key in [k for k in self.dirty if k.rsplit(":", 1)[1] in gone]:
            self.dirty.discard(key)
            self.raw.pop(key, None)


def serve(app: faust.App, table: PartsTable, page: str, summary: Callable[[], dict]) -> None:
    """Refresh and write ``table`` every `WRITE_S` (not during a rebalance) and show
    ``summary()`` at ``page``."""

    @app.timer(WRITE_S, name=f"maintain {table.name} table")
    async def maintain() -> None:
        if app.rebalancing:
            return
        try:
            table.refresh_if_due()
            table.flush()
        except Exception:  # retried at the next tick; never stop the worker for it
            log.exception("could not refresh or write the %s table", table.name)

    @app.page(page, name=f"{table.name} parts")
    async def parts_page(web, request):  # noqa: ANN001 - faust view signature
        return web.json(summary())
