"""What the pipeline and its hooks (journeys, promotion) share of a micro-batch: one entry per
customer, the loader that fills it, and the pinning that routes table I/O to a partition."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import faust
from faust.streams import _current_event


@dataclass
class CustomerEntry:
    """A customer's state while a batch is processed (read once, written once if ``dirty``)."""

    state: dict | None
    event: faust.EventT  # an event of this key's partition: table I/O is routed by it
    dirty: bool = False


#: The pipeline's loader: (batch, customer key, an event of the key's partition) -> the entry.
LoadEntry = Callable[[object, str, faust.EventT], CustomerEntry]


def pin(event: object) -> None:
    """Route the table reads and writes that follow to ``event``'s partition (Faust routes
    table I/O by the current event)."""
    _current_event.set(weakref.ref(event))
