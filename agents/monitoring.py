"""Prometheus endpoint and the periodic gauges (consumer lag, state size)."""

from __future__ import annotations

import logging

from prometheus_client import generate_latest

from agents.runtime import metrics
from agents.runtime.app import NextbestApp

log = logging.getLogger(__name__)
GAUGE_INTERVAL_S = 5.0
PROMETHEUS_TEXT = "text/plain; version=0.0.4"


def consumer_lag(nb: NextbestApp) -> dict[tuple[str, int], int]:
    """Records between the last one read and the fetch high watermark, per assigned partition."""
    consumer = nb.app.consumer
    lag = {}
    for tp in consumer.assignment():
        highwater = consumer.highwater(tp)
        if highwater is None:
            continue
        read = consumer._read_offset.get(tp)  # last offset handed to a stream
        lag[(tp.topic, tp.partition)] = max(0, highwater - (read + 1 if read is not None else 0))
    return lag


def state_size(nb: NextbestApp) -> tuple[int, int]:
    """(records, bytes) estimated by RocksDB over this worker's partitions."""
    records = size = 0
    for db in getattr(nb.customers.data, "_dbs", {}).values():
        records += db.property_int_value("rocksdb.estimate-num-keys") or 0
        size += db.property_int_value("rocksdb.estimate-live-data-size") or 0
        size += db.property_int_value("rocksdb.cur-size-all-mem-tables") or 0
    return records, size


def register(nb: NextbestApp) -> None:
    app = nb.app

    @app.page("/metrics")
    async def metrics_page(web, request):  # noqa: ANN001 - faust view signature
        # ``?name[]=<sample>`` restricts the answer, as prometheus_client's own handler does
        names = request.query.getall("name[]", [])
        registry = metrics.REGISTRY.restricted_registry(names) if names else metrics.REGISTRY
        # aiohttp takes the charset separately from the content type
        return web.bytes(generate_latest(registry), content_type=PROMETHEUS_TEXT)

    @app.timer(GAUGE_INTERVAL_S)
    async def update_gauges() -> None:
        try:
            for (topic, partition), value in consumer_lag(nb).items():
                metrics.CONSUMER_LAG.labels(topic, str(partition)).set(value)
            records, size = state_size(nb)
            metrics.STATE_CUSTOMERS.set(records)
            metrics.STATE_BYTES.set(size)
        except Exception:  # gauges are best effort; never stop the worker for them
            log.exception("could not update gauges")
