"""Create nextbest's topics (idempotent). Faust creates its own changelog topics."""

from __future__ import annotations

from aiokafka.partitioner import murmur2
from confluent_kafka.admin import AdminClient, NewTopic

from agents.runtime.settings import Settings


def key_partition(key: bytes | str, partitions: int) -> int:
    """The partition a Java-compatible producer (murmur2, as every producer here) sends ``key``
    to, out of ``partitions``."""
    raw = key.encode() if isinstance(key, str) else key
    return (murmur2(raw) & 0x7FFFFFFF) % partitions


def wanted_topics(settings: Settings) -> list[NewTopic]:
    t = settings.topics
    rf = settings.replication_factor
    topics = [NewTopic(name, settings.partitions, rf) for name in t.partitioned]
    topics.append(NewTopic(t.dead_letters, settings.partitions, rf))
    if settings.policy == "promotion":
        topics += [NewTopic(name, settings.partitions, rf) for name in (t.decisions, t.rewards)]
    topics.append(NewTopic(t.catalog, 1, rf, config={"cleanup.policy": "compact"}))
    return topics


def ensure_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Create missing topics; returns the names created. Raises if a creation fails."""
    admin = AdminClient(settings.kafka_client_config())
    existing = set(admin.list_topics(timeout=timeout).topics)
    missing = [topic for topic in wanted_topics(settings) if topic.topic not in existing]
    if not missing:
        return []
    created = []
    for name, future in admin.create_topics(missing, request_timeout=timeout).items():
        try:
            future.result(timeout)
            created.append(name)
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    return created
