"""The Faust transport for the embedded Tansu broker: aiokafka, adapted to two Tansu quirks.

On the embedded broker the app uses the ``tansu://`` scheme, registered here. Against a real
Kafka nothing of this applies.

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
import time
from collections.abc import Mapping

import aiokafka
from confluent_kafka import Consumer, KafkaError, TopicPartition
from faust.transport import drivers
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

SCHEME = "tansu"
TANSU_FETCH_MAX_WAIT_MS = 20


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


class TansuConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> TansuConsumerThread:
        return TansuConsumerThread(self, loop=self.loop, beacon=self.beacon)


class TansuTransport(faust_aiokafka.Transport):
    Consumer = TansuConsumer


drivers.TRANSPORTS.aliases.setdefault(SCHEME, f"{__name__}:TansuTransport")


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


def tansu_url(broker_url: str) -> str:
    """``kafka://host:port`` -> ``tansu://host:port`` (every URL of a comma-separated list)."""
    return ",".join(
        f"{SCHEME}://{url.split('://', 1)[-1]}" for url in broker_url.split(",") if url.strip()
    )
