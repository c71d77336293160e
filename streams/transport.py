"""The Faust transport for the embedded Tansu broker: aiokafka with a short fetch wait.

Faust's aiokafka driver asks for ``fetch_max_wait_ms=1500``. Apache Kafka answers a fetch as
soon as one byte is available, so the wait only matters on idle partitions. Tansu holds every
fetch for its full wait even when records arrive meanwhile: a record then waits 750 ms on
average before the worker sees it (measured: p50 715 ms at 1,500 ms, 215 ms at 500 ms, 3 ms
at 10 ms). On the embedded broker the app therefore uses the ``tansu://`` scheme, registered
here, whose consumer asks for ``TANSU_FETCH_MAX_WAIT_MS``. Against a real Kafka nothing changes.
"""

from __future__ import annotations

import aiokafka
from faust.transport import drivers
from faust.transport.drivers import aiokafka as faust_aiokafka

SCHEME = "tansu"
TANSU_FETCH_MAX_WAIT_MS = 20


class TansuConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(
        self, transport: faust_aiokafka.Transport
    ) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = TANSU_FETCH_MAX_WAIT_MS  # read by its fetcher at start
        return consumer


class TansuConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> TansuConsumerThread:
        return TansuConsumerThread(self, loop=self.loop, beacon=self.beacon)


class TansuTransport(faust_aiokafka.Transport):
    Consumer = TansuConsumer


drivers.TRANSPORTS.aliases.setdefault(SCHEME, f"{__name__}:TansuTransport")


def tansu_url(broker_url: str) -> str:
    """``kafka://host:port`` -> ``tansu://host:port`` (every URL of a comma-separated list)."""
    return ",".join(
        f"{SCHEME}://{url.split('://', 1)[-1]}" for url in broker_url.split(",") if url.strip()
    )
