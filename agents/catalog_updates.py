"""Apply promotion-catalog updates from the compacted catalog topic, on every worker.

Each worker reads the whole topic from the beginning with its own group-less consumer (every
worker needs every merchant's catalog). Key: merchant id; value: that merchant's config as JSON
(the same shape as one entry of the merchants file) or null to remove the merchant. An update
that fails validation is logged, counted as a dead letter and leaves the catalog unchanged.
"""

from __future__ import annotations

import logging
import threading

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from agents.runtime import metrics
from agents.runtime.settings import Settings
from streams.merchants.catalog import CatalogError, MerchantRegistry

log = logging.getLogger(__name__)


def apply_record(registry: MerchantRegistry, key: bytes | None, value: bytes | None) -> str | None:
    """Apply one catalog record; returns an error message, or None when it was applied."""
    if not key:
        return "catalog record without a merchant id key"
    try:
        config = None if value is None else orjson.loads(value)
        registry.apply_update(key.decode(), config)
    except (orjson.JSONDecodeError, UnicodeDecodeError, CatalogError, TypeError) as exc:
        return str(exc)
    return None


class CatalogWatcher(threading.Thread):
    def __init__(self, settings: Settings, registry: MerchantRegistry) -> None:
        super().__init__(name="catalog-watcher", daemon=True)
        self.settings = settings
        self.registry = registry
        self.stopping = threading.Event()

    def run(self) -> None:
        topic = self.settings.topics.catalog
        consumer = Consumer(
            {
                **self.settings.kafka_client_config(),
                "group.id": f"{self.settings.app_id}-catalog-reader",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        try:
            metadata = consumer.list_topics(topic, timeout=10)
            partitions = metadata.topics[topic].partitions if topic in metadata.topics else {}
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
            while not self.stopping.is_set():
                message = consumer.poll(0.5)
                if message is None:
                    continue
                if message.error():
                    if message.error().code() != KafkaError._PARTITION_EOF:
                        log.warning("catalog consumer: %s", message.error())
                    continue
                error = apply_record(self.registry, message.key(), message.value())
                if error:
                    log.error("rejected catalog update for %r: %s", message.key(), error)
                    metrics.DEAD_LETTERS.labels("invalid_catalog").inc()
        except Exception:
            log.exception("catalog watcher stopped")
        finally:
            consumer.close()

    def stop(self) -> None:
        self.stopping.set()
