"""`take_ready`: micro-batches that go as soon as their events are ready, on Faust's own stream
machinery over an in-memory channel. No clocks: "at once" is a bounded number of event-loop
turns, with every timer of the loop set to an hour."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable

import faust
import pytest

from agents.runtime import microbatch
from agents.runtime.microbatch import take_ready

HOUR = 3600.0
TURNS = 50  # event-loop turns that a handover may take


@pytest.fixture(autouse=True)
def no_fallback_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    """A handover the tests see cannot come from `READY_AFTER_S`' timer."""
    monkeypatch.setattr(microbatch, "READY_AFTER_S", HOUR)


class Harness:
    """An in-memory channel and its stream; the values of the events acknowledged, in order."""

    def __init__(self) -> None:
        self.app = faust.App("nextbest-microbatch-test", broker="kafka://localhost:1")
        self.app.flow_control.resume()  # as a worker does once its partitions are assigned
        self.channel = self.app.channel()
        self.stream = self.app.stream(self.channel)
        self.acked: list[int] = []
        ack = self.stream.ack

        async def recording_ack(event: faust.EventT) -> bool:
            self.acked.append(event.value)
            return await ack(event)

        self.stream.ack = recording_ack  # type: ignore[method-assign]

    async def send(self, *values: int) -> None:
        for value in values:
            await self.channel.send(value=value)


def run(scenario: Callable[[Harness], Awaitable[None]]) -> None:
    async def main() -> None:
        harness = Harness()
        async with harness.stream:
            await scenario(harness)

    asyncio.run(main())


async def turns(n: int = TURNS) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def values(batch: list[faust.EventT]) -> list[int]:
    return [event.value for event in batch]


async def next_batch(batches: AsyncGenerator[list[faust.EventT], None]) -> list[int]:
    """The next batch, which must come within `TURNS` loop turns."""
    task = asyncio.ensure_future(anext(batches))
    await turns()
    assert task.done(), "no batch handed over at once"
    return values(task.result())


def test_the_events_already_there_go_in_one_batch():
    async def scenario(h: Harness) -> None:
        await h.send(*range(7))
        batches = take_ready(h.stream, 500)
        assert await next_batch(batches) == list(range(7))
        await batches.aclose()

    run(scenario)


def test_an_idle_stream_hands_over_its_first_event_at_once():
    async def scenario(h: Harness) -> None:
        batches = take_ready(h.stream, 500)
        waiting = asyncio.ensure_future(anext(batches))
        await turns()
        assert not waiting.done()  # nothing to hand over: it waits, for as long as it takes
        await h.send(1)
        await turns()
        assert waiting.done() and values(waiting.result()) == [1]
        await batches.aclose()

    run(scenario)


def test_a_burst_goes_in_full_batches_in_order():
    async def scenario(h: Harness) -> None:
        await h.send(*range(25))
        batches = take_ready(h.stream, 10)
        assert await next_batch(batches) == list(range(10))
        assert await next_batch(batches) == list(range(10, 20))
        assert await next_batch(batches) == list(range(20, 25))
        await batches.aclose()

    run(scenario)


def test_events_that_arrive_while_a_batch_is_processed_make_the_next_batches():
    async def scenario(h: Harness) -> None:
        await h.send(0, 1, 2)
        batches = take_ready(h.stream, 10)
        assert await next_batch(batches) == [0, 1, 2]
        await h.send(*range(3, 15))  # while the first batch is out
        await turns()
        assert await next_batch(batches) == list(range(3, 13))
        assert await next_batch(batches) == [13, 14]
        await batches.aclose()

    run(scenario)


def test_a_batch_is_acknowledged_only_when_the_next_one_is_asked_for():
    async def scenario(h: Harness) -> None:
        await h.send(0, 1, 2)
        batches = take_ready(h.stream, 10)
        assert await next_batch(batches) == [0, 1, 2]
        await h.send(3, 4)
        await turns()
        assert h.acked == []  # the batch is out, being processed
        assert await next_batch(batches) == [3, 4]
        assert h.acked == [0, 1, 2]
        await batches.aclose()  # leaving the loop with a batch out: not processed
        assert h.acked == [0, 1, 2]

    run(scenario)


def test_stopping_the_stream_acknowledges_nothing_and_restores_it():
    async def scenario(h: Harness) -> None:
        await h.send(0, 1)
        batches = take_ready(h.stream, 10)
        assert await next_batch(batches) == [0, 1]
        await h.stream.stop()
        assert h.acked == []
        assert h.stream.enable_acks and h.stream._processors == []

    run(scenario)


def test_stopping_while_a_batch_fills_hands_nothing_over():
    async def scenario(h: Harness) -> None:
        await h.send(0)
        batches = take_ready(h.stream, 10, linger_s=HOUR)
        waiting = asyncio.ensure_future(anext(batches))
        await turns()
        await h.stream.stop()
        with pytest.raises(StopAsyncIteration):
            await waiting
        assert h.acked == []

    run(scenario)


def test_a_linger_waits_for_the_batch_to_fill():
    async def scenario(h: Harness) -> None:
        await h.send(0, 1, 2)
        batches = take_ready(h.stream, 10, linger_s=HOUR)
        waiting = asyncio.ensure_future(anext(batches))
        await turns()
        assert not waiting.done()
        await h.send(*range(3, 12))
        await turns()
        assert waiting.done() and values(waiting.result()) == list(range(10))
        await batches.aclose()

    run(scenario)


def test_a_batch_whose_queued_events_a_rebalance_skipped_still_goes(
    monkeypatch: pytest.MonkeyPatch,
):
    """Faust skips the events queued while the app's flow control is off (a rebalance), without
    running the processors: the batch that waited for them goes after `READY_AFTER_S`."""
    monkeypatch.setattr(microbatch, "READY_AFTER_S", 0.01)

    async def scenario(h: Harness) -> None:
        def rebalance_after_first(value: int) -> int:
            if value == 0:
                h.app.flow_control.suspend()
            return value

        h.stream.add_processor(rebalance_after_first)  # runs before take_ready's own
        await h.send(0, 1)
        batches = take_ready(h.stream, 10)
        assert values(await asyncio.wait_for(anext(batches), HOUR)) == [0]
        await batches.aclose()

    run(scenario)
