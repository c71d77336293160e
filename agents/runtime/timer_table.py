"""`streams.timers.TimerStore` on a Faust table, for `streams.timers.PartitionTimers`: the
journeys' ``journey-timers`` and the promotion's ``reward-due``."""

from __future__ import annotations

import faust
import orjson

from agents.runtime.app import NextbestApp
from agents.runtime.batch import pin
from streams.timers import CLOCK_PREFIX, PartitionClock


class TableTimerStore:
    """Customer key -> ``{"due", "p"}`` plus ``__clock__:<partition>`` -> the partition's clock;
    writes are routed by pinning an event of the partition."""

    def __init__(self, table: faust.Table) -> None:
        self.table = table

    def read_partition(self, partition: int) -> tuple[PartitionClock, list[tuple[str, float]]]:
        clock_key = f"{CLOCK_PREFIX}{partition}".encode()
        clock, entries = PartitionClock(), []
        for raw_key, raw in self.table.items():
            if raw_key == clock_key:
                clock = PartitionClock.from_json(orjson.loads(raw))
            elif not raw_key.startswith(CLOCK_PREFIX.encode()):
                record = orjson.loads(raw)
                if record["p"] == partition:
                    entries.append((raw_key.decode(), record["due"]))
        return clock, entries

    def write_due(self, key: str, partition: int, due: float | None, event: object) -> None:
        pin(event)
        if due is None:
            self.table.pop(key.encode(), None)
        else:
            self.table[key.encode()] = orjson.dumps({"due": due, "p": partition})

    def write_clock(self, partition: int, clock: PartitionClock, event: object) -> None:
        pin(event)
        self.table[f"{CLOCK_PREFIX}{partition}".encode()] = orjson.dumps(clock.to_json())


def timer_table(nb: NextbestApp, name: str, help_text: str) -> TableTimerStore:
    """A `TableTimerStore` on a new table co-partitioned with the customers."""
    table = nb.app.Table(
        name,
        default=None,
        partitions=nb.settings.partitions,
        key_type=bytes,
        value_type=bytes,
        help=help_text,
    )
    return TableTimerStore(table)
