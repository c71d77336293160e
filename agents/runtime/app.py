"""The Faust app: topics and the customer-state table, declared together from one Settings."""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import faust

from agents.runtime.recovery import batch_recovery_table_manager
from agents.runtime.settings import Settings
from agents.runtime.transport import faust_broker_url
from streams.merchants.catalog import MerchantRegistry

#: Settings that only make sense on the embedded Tansu broker (see docs/architecture.md); the
#: embedded broker is also reached through the ``tansu://`` transport (agents/runtime/transport.py).
TANSU_OVERRIDES = {
    "broker_session_timeout": 6.0,
    "broker_heartbeat_interval": 1.0,
    "recovery_consistency_check": False,
}


@dataclass
class NextbestApp:
    settings: Settings
    app: faust.App
    registry: MerchantRegistry
    inputs: faust.TopicT  # every input topic plus the internal session-merge topic
    topic_kinds: dict[str, str]  # topic name -> kind ("cart", "orders", ..., "merges")
    promotions: faust.TopicT
    notifications: faust.TopicT
    dead_letters: faust.TopicT
    merges: faust.TopicT
    customers: faust.Table
    #: ``NEXTBEST_POLICY=promotion`` only: decision and reward topics, and the promotions'
    #: budget ledgers (``merchant:promotion:partition`` -> JSON, see
    #: streams/promotion/guardrails.py)
    decisions: faust.TopicT | None = None
    rewards: faust.TopicT | None = None
    ledgers: faust.Table | None = None
    #: ``NEXTBEST_POLICY=promotion`` only: the bandit's statistics, one entry per
    #: ``merchant:partition`` (JSON, see agents/promotion.py), replicated to every worker
    bandit: faust.Table | None = None
    #: the engagement take models' statistics, one entry per ``merchant:partition`` (JSON, see
    #: agents/engagement.py), replicated to every worker (None: not shared, e.g. in unit tests)
    engagement_models: faust.Table | None = None


def broker_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    context = None
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=settings.ssl_cafile or None)
    if settings.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password,
            mechanism=settings.sasl_mechanism or "PLAIN",
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def faust_config(settings: Settings) -> dict:
    config = {
        "broker": faust_broker_url(
            settings.broker_url, settings.embedded_broker, settings.lean_delivery
        ),
        "broker_credentials": broker_credentials(settings),
        "store": "rocksdb://",
        "datadir": str(settings.state_dir),
        "topic_partitions": settings.partitions,
        "topic_replication_factor": settings.replication_factor,
        "web_port": settings.web_port,
        "web_bind": settings.web_host,
        "canonical_url": settings.advertised_url(),
        "table_standby_replicas": settings.standby_replicas,
        "broker_session_timeout": settings.session_timeout_s,
        "broker_heartbeat_interval": min(3.0, settings.session_timeout_s / 3),
        "web_in_thread": False,
        "consumer_auto_offset_reset": "earliest",
        "producer_linger_ms": 5,
        "producer_max_batch_size": 262144,
        "producer_max_request_size": settings.producer_max_request_bytes,
        "stream_buffer_maxsize": 16384,
    }
    if settings.batch_recovery:
        config["TableManager"] = batch_recovery_table_manager(settings)
    if settings.embedded_broker:
        config.update(TANSU_OVERRIDES)
    return config


def _parts_table(app: faust.App, settings: Settings, name: str, model: str) -> faust.Table:
    """A GlobalTable of a model's statistics per ``merchant:partition`` (JSON, raw bytes; see
    agents/runtime/parts_table.py)."""
    return app.GlobalTable(
        name,
        default=None,
        partitions=settings.partitions,
        key_type=bytes,
        value_type=bytes,
        help=f"The {model} statistics per merchant:partition, JSON, on every worker",
        # Faust's advice for a GlobalTable on several workers (faust/tables/globaltable.py):
        # without it a second worker's stream never starts (test_promotion_shared_bandit.py)
        recovery_buffer_size=1,
    )


def create_app(settings: Settings, registry: MerchantRegistry | None = None) -> NextbestApp:
    app = faust.App(settings.app_id, **faust_config(settings))
    t = settings.topics
    raw = {
        "key_type": bytes,
        "value_type": bytes,
        "key_serializer": "raw",
        "value_serializer": "raw",
        "partitions": settings.partitions,
    }
    kinds = {
        t.clickstream: "clickstream",
        t.cart: "cart",
        t.orders: "orders",
        t.profiles: "profiles",
        t.feedback: "feedback",
        t.action_feedback: "action_feedback",
        t.merges: "merges",
    }
    customers = app.Table(
        "customers",
        default=None,
        partitions=settings.partitions,
        key_type=bytes,
        value_type=bytes,  # raw: the pipeline stores orjson bytes
        help="Per-customer (and anonymous session) rolling state, JSON",
    )
    engagement_models = _parts_table(app, settings, "engagement-models", "engagement take models'")
    promotion = settings.policy == "promotion"
    ledgers = bandit = None
    if promotion:
        bandit = _parts_table(app, settings, "promo-bandit", "promotion bandit's")
        ledgers = app.Table(
            "promo-ledgers",
            default=None,
            partitions=settings.partitions,
            key_type=bytes,
            value_type=bytes,
            help="Promotion budget ledgers, one per merchant:promotion:partition, JSON",
        )
    return NextbestApp(
        settings=settings,
        app=app,
        registry=registry or MerchantRegistry.from_file(settings.merchants_path),
        inputs=app.topic(*kinds, **raw),
        topic_kinds=kinds,
        promotions=app.topic(t.promotions, **raw),
        notifications=app.topic(t.notifications, **raw),
        dead_letters=app.topic(t.dead_letters, **raw),
        merges=app.topic(t.merges, **raw),
        customers=customers,
        engagement_models=engagement_models,
        decisions=app.topic(t.decisions, **raw) if promotion else None,
        rewards=app.topic(t.rewards, **raw) if promotion else None,
        ledgers=ledgers,
        bandit=bandit,
    )
