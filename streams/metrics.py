"""Prometheus metrics of a worker, served at ``/metrics`` by the worker's web server."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

EVENTS = Counter(
    "nextbest_events",
    "Input events received, by topic and event type",
    ["topic", "event_type"],
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "nextbest_dead_letters",
    "Inputs sent to the dead-letter topic, by reason",
    ["reason"],
    registry=REGISTRY,
)
DUPLICATES = Counter(
    "nextbest_duplicate_events",
    "Input events skipped because their event_id was already applied",
    registry=REGISTRY,
)
REROUTED = Counter(
    "nextbest_rerouted_events",
    "Input events that arrived with a wrong record key and were re-keyed to the right partition",
    registry=REGISTRY,
)
OFFERS = Counter(
    "nextbest_offers", "Offers emitted, by offer type", ["offer_type"], registry=REGISTRY
)
NOTIFICATIONS = Counter(
    "nextbest_notifications", "Notifications emitted, by channel", ["channel"], registry=REGISTRY
)
SUPPRESSED = Counter(
    "nextbest_messages_suppressed",
    "Notifications not sent, by reason (frequency_cap, no_consent, opted_out, duplicate)",
    ["reason"],
    registry=REGISTRY,
)
DECISION_LATENCY = Histogram(
    "nextbest_decision_latency_seconds",
    "From the cart change (its Kafka record timestamp) to the offer being emitted",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
BATCH_EVENTS = Histogram(
    "nextbest_batch_events",
    "Events per processed micro-batch",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000),
    registry=REGISTRY,
)
STATE_CUSTOMERS = Gauge(
    "nextbest_state_customers",
    "Customer and session records held by this worker (estimate)",
    registry=REGISTRY,
)
STATE_BYTES = Gauge(
    "nextbest_state_bytes",
    "Bytes of customer state held by this worker (RocksDB estimate)",
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "nextbest_consumer_lag",
    "Records behind the fetch high watermark, by topic and partition",
    ["topic", "partition"],
    registry=REGISTRY,
)
