"""Micro-batches that go as soon as their events are ready: `take_ready`.

Faust's ``Stream.take_events(max_, within)`` hands over a batch when it holds ``max_`` events or
when ``within`` seconds have passed: on a worker that keeps up, every event waits for the window
(50 ms then), and a window of 0 means no timeout at all. `take_ready` hands a batch over as soon
as it holds ``max_`` events or every event that had arrived (the stream's channel holds no
more): an idle worker takes a lone event at once, and a busy one gets full batches, because
events pile up in the channel while the last batch is processed. ``linger_s > 0`` makes a batch
wait up to that long after its first event to fill instead.

The rest is `take_events`' machinery, in the same order: a processor on the stream appends each
event to the buffer, Faust's passive drainer feeds it (the stream's own acks are off meanwhile),
the drainer waits while a batch is out, and the buffer never holds more than ``max_``.
Acknowledgements differ in one point: a batch's events are acknowledged when the consumer asks
for the next batch, that is after it processed this one, and never when it leaves the loop
(exception, cancellation, ``break``, the stream stopping): those events are read again after a
restart. (``take_events`` acknowledges them in a ``finally``.)

Readiness is seen by the processor: the buffer is full, or the channel's queue is empty after an
append. In a rebalance Faust skips the queued events (the processor never sees them) and then
clears the queue, so a batch that was waiting for them is handed over `READY_AFTER_S` after its
first event instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from typing import Any

import faust
from mode.utils.futures import notify

#: The longest a batch waits for the events that were queued behind its first one
READY_AFTER_S = 0.1


def _queue_empty(channel: Any) -> Callable[[], bool]:
    """Whether nothing more waits in the stream's channel (a stream over a plain async
    iterable cannot tell: every event counts as the last one)."""
    if isinstance(channel, faust.ChannelT):
        return channel.queue.empty
    return lambda: True


def take_ready(
    stream: faust.StreamT, max_: int, linger_s: float = 0.0
) -> AsyncGenerator[list[faust.EventT], None]:
    """Batches of at most ``max_`` events of ``stream``, each as soon as it is ready (above)."""
    batches = _take_ready(stream, max_, linger_s)
    stream._active_agens.add(batches)  # closed when the stream stops, as take_events' are
    return batches


async def _take_ready(
    stream: faust.StreamT, max_: int, linger_s: float
) -> AsyncGenerator[list[faust.EventT], None]:
    loop = asyncio.get_running_loop()
    events: list[faust.EventT] = []
    ready = asyncio.Event()  # the buffer is to be handed over
    handed = asyncio.Event()  # the full buffer was handed over
    handing: asyncio.Future | None = None  # a batch is out: the drainer waits
    timer: asyncio.TimerHandle | None = None
    queue_empty = _queue_empty(stream.channel)
    wait_first = linger_s if linger_s > 0 else READY_AFTER_S

    async def add_to_buffer(value: Any) -> Any:
        nonlocal handing, timer
        try:
            if handing is not None:
                try:
                    await handing
                finally:
                    handing = None
            event = stream.current_event
            if event is None:
                raise RuntimeError("take_ready found no current event")
            events.append(event)
            if len(events) >= max_:
                ready.set()
                handed.clear()
                await stream.wait(handed)
            elif not linger_s and queue_empty():
                ready.set()
            elif len(events) == 1:
                timer = loop.call_later(wait_first, ready.set)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            stream.log.exception("Error adding to take_ready's buffer: %r", exc)
            await stream.crash(exc)
        return value

    stream_enable_acks = stream.enable_acks
    stream.enable_acks = False  # acknowledged here, once processed
    stream.add_processor(add_to_buffer)
    stream._enable_passive(aiter(stream.channel))
    try:
        while not stream.should_stop:
            if not ready.is_set() and await stream.wait_for_stopped(ready):
                break  # stopping: the buffer's events are read again after the restart
            handing = loop.create_future()
            try:
                yield list(events)
                for event in events:
                    await stream.ack(event)
            finally:
                events.clear()
                ready.clear()
                if timer is not None:
                    timer.cancel()
                    timer = None
                notify(handing)
                handed.set()
    finally:
        if timer is not None:
            timer.cancel()
        stream.enable_acks = stream_enable_acks
        stream._processors.remove(add_to_buffer)
