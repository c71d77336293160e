"""Apply promotion-catalog updates from the compacted catalog topic, on every worker.

Each worker reads the whole topic from the beginning with its own group-less consumer (every
worker needs every merchant's catalog). Key: merchant id; value: that merchant's config as JSON
(the same shape as one entry of the merchants file, `streams.merchants.catalog.MerchantConfig`)
or null to remove the merchant. An update that fails validation leaves the merchant's last good
catalog in force and goes to the dead-letter topic (reason ``invalid_catalog``, the error naming
the field, the origin topic/partition/offset and the record whole).

Every worker rereads the topic, so dead-lettering is remembered: after writing a dead letter the
worker commits the next offset for the ``<app_id>-catalog-reader`` group (the group only marks
"dead-lettered up to here"; nothing subscribes with it), and a record below the committed offset
is not dead-lettered again. At least once: two workers reading a bad record at the same moment
may both write it; the origin (topic, partition, offset) identifies the copies.
"""

from __future__ import annotations

import logging
import threading
import time

import orjson
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from agents.runtime import metrics
from agents.runtime.settings import Settings
from schemas.records import dead_letter_record
from streams.merchants.catalog import CatalogError, MerchantRegistry

log = logging.getLogger(__name__)
INVALID_CATALOG = "invalid_catalog"


def apply_record(registry: MerchantRegistry, key: bytes | None, value: bytes | None) -> str | None:
    """Apply one catalog record; returns an error message, or None when it was applied."""
    if not key:
        return "catalog record without a merchant id key"
    try:
        config = None if value is None else orjson.loads(value)
        registry.apply_update(key.decode(), config)
    except (orjson.JSONDecodeError, UnicodeDecodeError, CatalogError) as exc:
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
        producer = Producer(
            {**self.settings.kafka_client_config(), "partitioner": "murmur2_random"}
        )
        try:
            metadata = consumer.list_topics(topic, timeout=10)
            partitions = metadata.topics[topic].partitions if topic in metadata.topics else {}
            assigned = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions]
            consumer.assign(assigned)
            dead_lettered = self._dead_lettered_up_to(consumer, assigned)
            while not self.stopping.is_set():
                message = consumer.poll(0.5)
                if message is None:
                    continue
                if message.error():
                    if message.error().code() != KafkaError._PARTITION_EOF:
                        log.warning("catalog consumer: %s", message.error())
                    continue
                error = apply_record(self.registry, message.key(), message.value())
                if error is None:
                    continue
                log.error("rejected catalog update for %r: %s", message.key(), error)
                if message.offset() >= dead_lettered.get(message.partition(), 0):
                    self._dead_letter(producer, consumer, message, error)
                    dead_lettered[message.partition()] = message.offset() + 1
        except Exception:
            log.exception("catalog watcher stopped")
        finally:
            producer.flush(10)
            consumer.close()

    def stop(self) -> None:
        self.stopping.set()

    @staticmethod
    def _dead_lettered_up_to(consumer: Consumer, assigned: list[TopicPartition]) -> dict[int, int]:
        """Partition -> the first offset not dead-lettered yet (by any worker)."""
        try:
            committed = consumer.committed(assigned, timeout=10)
        except KafkaException as exc:
            log.warning("catalog dead letters may repeat: no committed offsets (%s)", exc)
            return {}
        return {tp.partition: max(tp.offset, 0) for tp in committed}

    def _dead_letter(
        self, producer: Producer, consumer: Consumer, message: Message, error: str
    ) -> None:
        letter = dead_letter_record(
            reason=INVALID_CATALOG,
            error=error,
            source_topic=message.topic(),
            partition=message.partition(),
            offset=message.offset(),
            key=message.key(),
            received_at=time.time(),
            payload=message.value(),
        )
        producer.produce(
            self.settings.topics.dead_letters, key=message.key(), value=orjson.dumps(letter)
        )
        producer.flush(10)  # written before the commit that marks it done
        metrics.DEAD_LETTERS.labels(INVALID_CATALOG).inc()
        try:
            consumer.commit(
                offsets=[
                    TopicPartition(message.topic(), message.partition(), message.offset() + 1)
                ],
                asynchronous=False,
            )
        except KafkaException as exc:
            log.warning("catalog dead letter at offset %d may repeat: %s", message.offset(), exc)
