"""The Faust transports nextbest runs on: aiokafka with a leaner delivery loop, and on the
embedded broker two Tansu adaptations on top.

Every broker: the ``nbkafka://`` scheme (`faust_broker_url` maps ``kafka://`` to it).

0. Delivery. Faust's fetcher hands each fetched record to the conductor through
   ``Service.wait_first(callback(message), suspend_flow.wait())``: four tasks and an
   ``asyncio.wait`` per record, so that a rebalance can interrupt a delivery blocked on a full
   stream buffer. Almost every delivery completes without blocking; `LeanDeliveryConsumer`
   runs the callback inline and falls back to ``wait_first`` only when the callback
   actually blocks (measured: about 13% of the worker's time went to that wrapper).
   While the app is rebalancing, no stream record is delivered (changelog records are, the
   Faust way): at the end of a rebalance Faust resumes the stream partitions, seeks them to
   their committed offsets, then clears the streams' buffers. Records delivered in that window
   landed in buffers about to be cleared, or were processed and then read again after the
   seek (beyond the 64 event ids a customer's state remembers: duplicate offers), and records
   of a fetch made before the seek arrived after it, where Faust takes the jump as a "gap"
   (meant for transaction markers) and acknowledges the offsets in between (lost: the restart
   test lost 14-131 of 3,000 events about one run in four with bulk delivery). Held records
   are read again once the rebalance is over, from where each stream stands, and a gap is
   read again once before it is accepted as one. A stream partition with no committed offset
   yet is read from its beginning after a rebalance (`LeanDeliveryConsumer.perform_seek`):
   aiokafka's seek to committed offsets leaves it where its fetcher stood, past the records
   cleared from the buffers.

Every broker, too: `RefusalTolerantProducer`. A record the producer refuses as too large
(``MessageSizeTooLargeError`` from ``send``) used to raise in Faust's producer buffer task,
which crashes the app; the restarted worker read the same batch and crashed again. It is
logged and counted (``nextbest_output_errors_total{topic}``) instead, as is a record the broker
refuses after it was sent (Faust only logs those). The pipeline checks sizes before it sends
(docs/architecture.md, "Failure isolation"): this is the net under that check. Its buffer is a
`DrainingBuffer`: the flush the consumer awaits before committing offsets returns only once
every record put in the buffer reached the client, where Faust's returns after 0.1 s without
progress (offsets committed past changelog records still buffered, lost in a SIGKILL).

The embedded broker: the ``tansu://`` scheme, registered here. Against a real Kafka nothing of
points 1 and 2 applies.

1. Fetch wait. Faust's aiokafka driver asks for ``fetch_max_wait_ms=1500``. Apache Kafka
   answers a fetch as soon as one byte is available, so the wait only matters on idle
   partitions. Tansu holds every fetch for its full wait even when records arrive meanwhile:
   a record then waits 750 ms on average before the worker sees it (measured: p50 715 ms at
   1,500 ms, 215 ms at 500 ms, 3 ms at 10 ms). This consumer asks for
   ``TANSU_FETCH_MAX_WAIT_MS``.
2. End offsets. Tansu's ListOffsets answers less than the real end of a partition when the
   last records were produced in batches (measured: 817 for a partition whose last offset is
   839, with aiokafka and librdkafka alike). Faust recovers a table by reading its changelog up
   to that offset, so a worker that starts on an empty state directory would miss the last
   changes of its customers. The high watermark in a Fetch response is right, so
   ``highwaters`` takes the larger of the two (`fetch_high_watermarks`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Mapping
from typing import Any

import aiokafka
from aiokafka.errors import MessageSizeTooLargeError
from confluent_kafka import Consumer, KafkaError, TopicPartition
from faust.exceptions import ProducerSendError
from faust.transport import drivers
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.producer import ProducerBuffer
from faust.types import TP
from faust.types.tuples import RecordMetadata
from mode import ServiceT

from agents.runtime import metrics

log = logging.getLogger(__name__)

SCHEME = "tansu"
KAFKA_SCHEME = "nbkafka"
STOCK_TANSU_SCHEME = "tansustock"  # Tansu adaptations, Faust's own delivery: bench references
TANSU_FETCH_MAX_WAIT_MS = 20
FETCHING = "FETCHING"  # faust's consumer diagnostics flag


async def resume_delivery(coro: Coroutine[Any, Any, Any], blocked_on: Any) -> None:
    """Run a coroutine that was started inline and suspended on ``blocked_on`` to its end."""
    try:
        while True:
            if blocked_on is None:  # a bare yield, as in ``asyncio.sleep(0)``
                await asyncio.sleep(0)
            else:
                blocked_on._asyncio_future_blocking = False
                await asyncio.wait([blocked_on])  # never cancels it: the coroutine owns it
            try:
                blocked_on = coro.send(None)
            except StopIteration:
                return
    finally:
        coro.close()


class LeanDeliveryConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer; records reach the streams without a task per record."""

    async def _deliver(self, delivery: Coroutine[Any, Any, Any]) -> None:
        try:
            blocked_on = delivery.send(None)
        except StopIteration:
            return
        await self.wait_first(resume_delivery(delivery, blocked_on), self.suspend_flow.wait())

    async def perform_seek(self) -> None:
        """Faust's seek of every partition to its committed offset, and of each stream
        partition without one to its beginning.

        aiokafka's ``seek_to_committed`` leaves a partition with no committed offset where its
        fetcher stood. After a rebalance that position is past the records fetched into the
        streams' buffers, which Faust clears: they were never read again (the SIGKILL loop: a
        partition's first commit not yet made, 140 of its events skipped, committed with the
        next batch, lost)."""
        await super().perform_seek()
        acks_enabled_for = self.app.topics.acks_enabled_for
        for tp in self.assignment():
            if acks_enabled_for(tp.topic) and not self._read_offset.get(tp):
                await self.seek(tp, 0)

    async def _read_held_again(self, held: set[TP], reread: set[TP]) -> None:
        """After a rebalance, send each partition whose records were held back to where its
        stream stands: its last delivered or committed offset, or its beginning."""
        for tp in held:
            await self.seek(tp, self._read_offset[tp] or 0)
            reread.add(tp)
        held.clear()

    async def _drain_messages(self, fetcher: ServiceT) -> None:  # pragma: no cover - hot loop
        """Faust's ``Consumer._drain_messages`` (faust-streaming 0.11) with `_deliver`."""
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set  # type: ignore[attr-defined]
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        set_flag, unset_flag = self.diag.set_flag, self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        deliver = self._deliver
        app, suspend_flow = self.app, self.suspend_flow
        is_changelog = self._is_changelog_tp
        yield_every, since_yield = 100, 0
        gaps_seen: dict[TP, int] = {}
        held: set[TP] = set()  # partitions whose records were not delivered while rebalancing
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(FETCHING)
                reread: set[TP] = set()  # partitions sent back: drop the rest of this fetch
                if held and not app.rebalancing:
                    # No fetch in hand: aiokafka drops what it fetched before a seek, so the
                    # next fetch starts at the seek and none of it may be dropped.
                    await self._read_held_again(held, set())
                records = getmany(timeout=1.0)
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in records:
                        since_yield += 1
                        if since_yield > yield_every:
                            await asyncio.sleep(0)
                            since_yield = 0
                        offset = message.offset
                        if tp in reread:
                            continue
                        if app.rebalancing and not is_changelog(tp):
                            # Faust seeks the streams to their committed offsets and clears
                            # their buffers as the rebalance ends: what a stream got now would
                            # be thrown away, or processed and then read again
                            held.add(tp)
                            gaps_seen.clear()
                            continue
                        if held:
                            await self._read_held_again(held, reread)
                            if tp in reread:
                                continue
                        read_offset = get_read_offset(tp)
                        if read_offset is None or offset >= read_offset:
                            gap = offset - (read_offset or 0)
                            if gap > 1 and read_offset and acks_enabled_for(message.topic):
                                if gaps_seen.get(tp) != read_offset:
                                    gaps_seen[tp] = read_offset
                                    reread.add(tp)
                                    self.log.info(
                                        "records %d..%d of %s skipped: reading them again",
                                        read_offset,
                                        offset - 1,
                                        tp,
                                    )
                                    await self.seek(tp, read_offset)
                                    continue
                                await self._add_gap(tp, read_offset + 1, offset)
                            if commit_every is not None and self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                            if app.rebalancing:  # changelogs: Faust's own delivery
                                await self.wait_first(callback(message), suspend_flow.wait())
                            else:
                                await deliver(callback(message))
                            set_read_offset(tp, offset)
                    unset_flag(FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(FETCHING)


class DrainingBuffer(ProducerBuffer):
    """Faust's producer buffer, whose ``flush`` returns only once every record put in it was
    handed to the client (aiokafka), the one being handed over included.

    Faust's consumer awaits the producer's ``flush`` before it commits offsets. Faust's buffer
    flush returns as soon as 0.1 s pass without a record leaving the buffer: on a busy worker
    the event loop runs the agent's batch meanwhile, the buffer's task waits, and the offsets
    were committed while changelog and output records of the batches before them were still in
    the buffer; a worker killed then lost them for good (the SIGKILL loop: customers whose
    records never reached the changelog). And a record the buffer's task had taken but not yet
    handed over counted as flushed."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.handing_over = 0  # records taken from ``pending``, not yet handed to the client

    async def _send_pending(self, fut: Any) -> None:
        self.handing_over += 1
        try:
            await super()._send_pending(fut)
        finally:
            self.handing_over -= 1

    async def flush(self) -> None:
        while self.size or self.handing_over:
            if self.state != "running":
                raise RuntimeError("Cannot flush: Producer not Running")
            self.message_sent.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.message_sent.wait(), timeout=0.1)


class RefusalTolerantProducer(faust_aiokafka.Producer):
    """Faust's aiokafka producer; a record refused as too large fails its own future (logged,
    counted) instead of raising in the producer buffer's task, which would crash the app. Its
    buffer is a `DrainingBuffer`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        buffer = DrainingBuffer(loop=self.loop, beacon=self.beacon)
        buffer.app = self.buffer.app
        if hasattr(self.buffer, "threaded_producer"):
            buffer.threaded_producer = self.buffer.threaded_producer
        self.buffer = buffer

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
        *,
        transactional_id: str | None = None,
    ) -> asyncio.Future[RecordMetadata]:
        try:
            sent = await super().send(
                topic, key, value, partition, timestamp, headers, transactional_id=transactional_id
            )
        except ProducerSendError as exc:
            if not isinstance(exc.__cause__, MessageSizeTooLargeError):
                raise
            sent = asyncio.get_running_loop().create_future()
            sent.set_exception(exc)
        sent.add_done_callback(lambda done: _count_refusal(topic, done))
        return sent


def _count_refusal(topic: str, sent: asyncio.Future) -> None:
    if sent.cancelled() or sent.exception() is None:
        return
    metrics.OUTPUT_ERRORS.labels(topic).inc()
    log.error("a record for %s was refused and dropped: %s", topic, sent.exception())


class LeanKafkaTransport(faust_aiokafka.Transport):
    Consumer = LeanDeliveryConsumer
    Producer = RefusalTolerantProducer


class TansuConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(
        self, transport: faust_aiokafka.Transport
    ) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = TANSU_FETCH_MAX_WAIT_MS  # read by its fetcher at start
        return consumer

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        listed = await super()._highwaters(partitions)
        fetched = await asyncio.to_thread(fetch_high_watermarks, self._bootstrap_servers(), listed)
        return {tp: max(offset, fetched.get(tp, offset)) for tp, offset in listed.items()}

    def _bootstrap_servers(self) -> str:
        return ",".join(f"{url.host}:{url.port}" for url in self.app.conf.broker_consumer)


class TansuConsumer(LeanDeliveryConsumer):
    def _new_consumer_thread(self) -> TansuConsumerThread:
        return TansuConsumerThread(self, loop=self.loop, beacon=self.beacon)


class TansuTransport(faust_aiokafka.Transport):
    Consumer = TansuConsumer
    Producer = RefusalTolerantProducer


class StockDeliveryTansuConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> TansuConsumerThread:
        return TansuConsumerThread(self, loop=self.loop, beacon=self.beacon)


class StockDeliveryTansuTransport(faust_aiokafka.Transport):
    Consumer = StockDeliveryTansuConsumer
    Producer = RefusalTolerantProducer


drivers.TRANSPORTS.aliases.setdefault(SCHEME, f"{__name__}:TansuTransport")
drivers.TRANSPORTS.aliases.setdefault(KAFKA_SCHEME, f"{__name__}:LeanKafkaTransport")
drivers.TRANSPORTS.aliases.setdefault(STOCK_TANSU_SCHEME, f"{__name__}:StockDeliveryTansuTransport")


def fetch_high_watermarks(
    bootstrap_servers: str, partitions: Mapping[TP, int], timeout: float = 10.0
) -> dict[TP, int]:
    """The high watermark of each partition, read from a Fetch response.

    Fetches from the offset ListOffsets gave (one record at most is read and dropped) and
    takes the high watermark the response carried. A partition that does not answer in time
    is left out; the caller keeps the ListOffsets figure for it.
    """
    if not partitions:
        return {}
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": "nextbest-highwater-probe",  # never joins: partitions are assigned
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": TANSU_FETCH_MAX_WAIT_MS,
        }
    )
    try:
        consumer.assign(
            [
                TopicPartition(tp.topic, tp.partition, max(offset - 1, 0))
                for tp, offset in partitions.items()
            ]
        )
        pending = {(tp.topic, tp.partition): tp for tp in partitions}
        found: dict[TP, int] = {}
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None:
                continue
            error = message.error()
            if error is not None and error.code() != KafkaError._PARTITION_EOF:
                continue
            tp = pending.pop((message.topic(), message.partition()), None)
            if tp is None:
                continue
            _low, high = consumer.get_watermark_offsets(
                TopicPartition(tp.topic, tp.partition), cached=True
            )
            if high >= 0:
                found[tp] = high
        return found
    finally:
        consumer.close()


def faust_broker_url(broker_url: str, embedded: bool, lean_delivery: bool = True) -> str:
    """``kafka://host:port`` -> ``nbkafka://`` (or ``tansu://`` on the embedded broker), for
    every URL of a comma-separated list. ``lean_delivery=False``: Faust's own delivery loop
    (plain ``kafka://``, or ``tansustock://`` on the embedded broker), for the bench references.
    """
    if embedded:
        scheme = SCHEME if lean_delivery else STOCK_TANSU_SCHEME
    else:
        scheme = KAFKA_SCHEME if lean_delivery else "kafka"
    return ",".join(
        f"{scheme}://{url.split('://', 1)[-1]}" for url in broker_url.split(",") if url.strip()
    )
