"""All nextbest settings in one typed object, read from ``NEXTBEST_*`` environment variables."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from models.next_purchase.paths import merchant_model_root
from streams.merchants.catalog import DEFAULT_MERCHANTS
from streams.promotion.experiments import Experiment

POLICIES = ("rules", "promotion")


def env_name(setting: str) -> str:
    """The environment variable a `Settings` field is read from: ``NEXTBEST_<FIELD>``."""
    return f"NEXTBEST_{setting.upper()}"


def topic_env_name(topic: str) -> str:
    """The environment variable that renames a `Topics` field: ``NEXTBEST_TOPIC_<NAME>``."""
    return f"NEXTBEST_TOPIC_{topic.upper()}"


def _setting(default: Any, doc: str, secret: bool = False) -> Any:
    """A settings field with its one-line description (docs/configuration.md is rendered from
    these; a secret's default is never shown)."""
    return field(default=default, metadata={"doc": doc, "secret": secret})


@dataclass(frozen=True)
class Topics:
    """Kafka topic names. Inputs are keyed by ``merchant_id:customer_or_session_id``."""

    clickstream: str = _setting(
        "nextbest.clickstream", "in: page, product and category views, searches"
    )
    cart: str = _setting("nextbest.cart", "in: cart changes and checkouts")
    orders: str = _setting("nextbest.orders", "in: orders, cancellations")
    profiles: str = _setting(
        "nextbest.profiles", "in: consent, addresses, preferred channel, time zone, opt-out"
    )
    feedback: str = _setting(
        "nextbest.offer-feedback", "in: offers delivered, opened, clicked, redeemed, dismissed"
    )
    promotions: str = _setting("nextbest.promotions", "out: the offer for a cart change")
    notifications: str = _setting(
        "nextbest.notifications", "out: messages to deliver on a channel, with a dedupe key"
    )
    dead_letters: str = _setting(
        "nextbest.dead-letters", "out: every unusable input, whole, with its reason"
    )
    catalog: str = _setting(
        "nextbest.promotion-catalog",
        "in, compacted: a merchant's configuration, keyed by merchant id",
    )
    merges: str = _setting(
        "nextbest.session-merges",
        "internal: anonymous-session merges and the journeys' wake-up ticks",
    )
    decisions: str = _setting(
        "nextbest.decisions", "out, promotion policy: one decision record per decision"
    )
    rewards: str = _setting(
        "nextbest.rewards", "out, promotion policy: one reward record per closed decision"
    )

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.clickstream, self.cart, self.orders, self.profiles, self.feedback)

    @property
    def partitioned(self) -> tuple[str, ...]:
        """Topics that share the input partition count (co-partitioned with state)."""
        return (*self.inputs, self.merges, self.promotions, self.notifications)


def merchant_models_present(models_dir: str | Path) -> bool:
    """Whether any merchant has a model folder under ``models_dir``."""
    root = Path(models_dir)
    return root.is_dir() and any(merchant_model_root(root, d.name).is_dir() for d in root.iterdir())


@dataclass(frozen=True)
class Settings:
    broker_url: str = _setting(
        "kafka://127.0.0.1:9092",
        "Kafka brokers, `kafka://host:port`; several separated by `;` (quote the value in a shell)",
    )
    embedded_broker: bool = _setting(
        False,
        "The broker is the embedded Tansu broker (`nextbest broker`): applies its workarounds "
        "(`tansu://` transport, 6 s sessions)",
    )
    security_protocol: str = _setting(
        "PLAINTEXT", "`PLAINTEXT`, `SSL`, `SASL_PLAINTEXT` or `SASL_SSL`"
    )
    sasl_mechanism: str = _setting(
        "", "SASL mechanism, e.g. `SCRAM-SHA-512`; empty with a `SASL_*` protocol: `PLAIN`"
    )
    sasl_username: str = _setting("", "SASL user name")
    sasl_password: str = _setting("", "SASL password", secret=True)
    ssl_cafile: str = _setting(
        "", "CA bundle (PEM) for TLS (`SSL`, `SASL_SSL`); empty: the system's CAs"
    )
    app_id: str = _setting("nextbest", "Consumer group id and prefix of the changelog topics")
    state_dir: Path = _setting(
        Path("var/state"), "RocksDB state of the tables (an empty one is rebuilt from changelogs)"
    )
    partitions: int = _setting(
        8, "Partitions of every input and co-partitioned topic (caps the useful workers)"
    )
    replication_factor: int = _setting(1, "Replication factor of the topics nextbest creates")
    web_host: str = _setting("127.0.0.1", "Address of the worker's web server (REST API, /metrics)")
    web_port: int = _setting(6066, "Port of the worker's web server (REST API, /metrics)")
    merchants_path: Path = _setting(
        DEFAULT_MERCHANTS, "Merchants file: promotion catalogs, product rule, delivery, journeys"
    )
    max_event_bytes: int = _setting(
        65536, "Larger input records are dead-lettered (`oversize_payload`)"
    )
    max_future_s: float = _setting(
        86400.0,
        "Inputs whose event_time is further ahead of this machine's clock are dead-lettered "
        "(`schema_violation`); 0: no limit",
    )
    max_state_bytes: int = _setting(
        262144,
        "Largest customer state record (JSON) written to the table and its changelog; an event "
        "that would make one larger is dead-lettered (`state_too_large`) and the record keeps "
        "its value",
    )
    batch_size: int = _setting(500, "Most events per micro-batch")
    batch_window_s: float = _setting(0.05, "Longest wait, in seconds, to fill a micro-batch")
    lean_delivery: bool = _setting(
        True,
        "Records reach the streams without a task per record (agents/runtime/transport.py); "
        "0: Faust's own delivery loop",
    )
    log_level: str = _setting("warn", "Worker log level (`debug`, `info`, `warn`, `error`)")
    model_path: str = _setting(
        "",
        "Shared next-purchase artifact root (or one version directory); empty: merchant models "
        "only, or rules only",
    )
    model_reload_s: float = _setting(
        10.0, "Seconds between checks of the models' `latest` pointers (hot reload)"
    )
    model_threads: int = _setting(1, "Torch threads for inference on the event loop's thread")
    model_top_k: int = _setting(5, "Predicted next products an offer carries (`recommendations`)")
    api_tokens: str = _setting(
        "",
        "REST API bearer tokens, `merchant=token,merchant2=token2` (a token sees its merchant "
        "only; at least 16 characters)",
        secret=True,
    )
    api_admin_token: str = _setting(
        "", "REST API bearer token that sees every merchant (at least 16 characters)", secret=True
    )
    api_max_body_bytes: int = _setting(1048576, "Largest REST request body (larger: 413)")
    api_max_events: int = _setting(500, "Most events per `POST /events` (more: 413)")
    models_dir: Path = _setting(
        Path("var/models"),
        "Merchant models: `POST /predictors` writes, and the worker serves, "
        "`<models_dir>/<merchant>/next_purchase`",
    )
    train_args: str = _setting("", "Extra `nextbest train` options for `POST /predictors` jobs")
    journey_tick_s: float = _setting(
        5.0, "Seconds between the wake-up ticks for idle partitions (journey timers)"
    )
    journey_lateness_s: float = _setting(
        60.0,
        "Journey clocks and promotion attribution windows trail the newest event time by this "
        "many seconds",
    )
    policy: str = _setting(
        "rules",
        "Cart decisions: `rules` (the catalog's threshold rules) or `promotion` (the promotion "
        "policy: experiments, guard rails, bandit, decision and reward topics)",
    )
    promo_experiment: str = _setting(
        "",
        'The promotion policy\'s experiment, JSON `{"id", "holdout", "arms": [{"name", "weight", '
        '"variant"}]}` (variants: bandit, rules, static:<action>); empty: `promo-1`, a 10% '
        "holdout and the bandit for everyone else",
    )
    promo_horizon_weeks: float = _setting(
        10.0,
        "The promotion objective's horizon in weeks: a customer's expected margin without offers "
        "and a discount's dependency cost are counted over it (streams/promotion/objective.py)",
    )
    promo_dependency_cost: float = _setting(
        0.5,
        "Future margin lost per unit of discount depth, as a share of the horizon's margin (the "
        "discount-dependency term of streams/promotion/objective.py)",
    )
    promo_bandit_start: str = _setting(
        "",
        "A `nextbest promo-retrain` output the bandit starts from instead of the bare prior, per "
        "merchant in it (for a new deployment or a fresh bandit table: rewards in it that the "
        "worker learns again count twice); empty: the prior",
    )
    topics: Topics = field(default_factory=Topics, metadata={"doc": "Kafka topic names"})

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Build settings from ``NEXTBEST_<FIELD>`` and ``NEXTBEST_TOPIC_<NAME>`` variables."""
        env = dict(os.environ if env is None else env)
        values: dict[str, object] = {}
        for f in fields(cls):
            if f.name == "topics":
                continue
            raw = env.get(env_name(f.name))
            if raw is None:
                continue
            values[f.name] = _parse(f.name, raw, f.type)
        topic_values = {
            t.name: env[topic_env_name(t.name)]
            for t in fields(Topics)
            if topic_env_name(t.name) in env
        }
        settings = cls(**values, topics=Topics(**topic_values))  # type: ignore[arg-type]
        settings.validate()
        return settings

    def to_env(self) -> dict[str, str]:
        """The ``NEXTBEST_*`` variables that `from_env` reads back into these settings."""
        env = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "topics":
                for t in fields(Topics):
                    env[topic_env_name(t.name)] = getattr(value, t.name)
            elif value is not None:
                env[env_name(f.name)] = (
                    ("1" if value else "0") if isinstance(value, bool) else str(value)
                )
        return env

    def validate(self) -> None:
        if not self.broker_url.startswith("kafka://"):
            raise ValueError(
                f"NEXTBEST_BROKER_URL must look like kafka://host:port, got {self.broker_url!r}"
            )
        if self.partitions < 1:
            raise ValueError("NEXTBEST_PARTITIONS must be >= 1")
        if self.security_protocol not in {"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"}:
            raise ValueError(f"unknown NEXTBEST_SECURITY_PROTOCOL {self.security_protocol!r}")
        if self.model_reload_s <= 0 or self.model_threads < 1 or self.model_top_k < 1:
            raise ValueError(
                "NEXTBEST_MODEL_RELOAD_S must be > 0, NEXTBEST_MODEL_THREADS and "
                "NEXTBEST_MODEL_TOP_K >= 1"
            )
        if self.policy not in POLICIES:
            raise ValueError(
                f"NEXTBEST_POLICY must be one of {', '.join(POLICIES)}, got {self.policy!r}"
            )
        if self.promo_experiment:
            self.experiment()
        if self.promo_horizon_weeks <= 0 or self.promo_dependency_cost < 0:
            raise ValueError(
                "NEXTBEST_PROMO_HORIZON_WEEKS must be > 0 and NEXTBEST_PROMO_DEPENDENCY_COST >= 0"
            )
        self.merchant_tokens()  # raises on a malformed NEXTBEST_API_TOKENS
        if self.api_admin_token and len(self.api_admin_token) < 16:
            raise ValueError("NEXTBEST_API_ADMIN_TOKEN must be at least 16 characters")
        if self.max_state_bytes < 1:
            raise ValueError("NEXTBEST_MAX_STATE_BYTES must be > 0")
        if self.api_max_body_bytes < 1 or self.api_max_events < 1 or self.journey_tick_s <= 0:
            raise ValueError(
                "NEXTBEST_API_MAX_BODY_BYTES, NEXTBEST_API_MAX_EVENTS and "
                "NEXTBEST_JOURNEY_TICK_S must be > 0"
            )

    def experiment(self) -> Experiment:
        """The promotion policy's experiment, from ``NEXTBEST_PROMO_EXPERIMENT``."""
        if not self.promo_experiment:
            return Experiment()
        try:
            config = json.loads(self.promo_experiment)
            if not isinstance(config, dict):
                raise ValueError("expected a JSON object")
            return Experiment.from_config(config)
        except ValueError as exc:
            raise ValueError(f"NEXTBEST_PROMO_EXPERIMENT: {exc}") from None

    def merchant_tokens(self) -> dict[str, str]:
        """Bearer token -> merchant id, from ``NEXTBEST_API_TOKENS``."""
        tokens: dict[str, str] = {}
        for pair in filter(None, (part.strip() for part in self.api_tokens.split(","))):
            merchant, sep, token = pair.partition("=")
            if not sep or not merchant.strip() or len(token.strip()) < 16:
                raise ValueError(
                    "NEXTBEST_API_TOKENS must look like merchant=token,... with tokens of at "
                    "least 16 characters"
                )
            tokens[token.strip()] = merchant.strip()
        return tokens

    @property
    def bootstrap_servers(self) -> str:
        """``host:port[,host:port]`` for librdkafka clients."""
        return ",".join(part.removeprefix("kafka://") for part in self.broker_url.split(";"))

    def kafka_client_config(self) -> dict[str, str]:
        """confluent-kafka (librdkafka) connection settings, SASL/TLS included."""
        config = {"bootstrap.servers": self.bootstrap_servers}
        if self.security_protocol != "PLAINTEXT":
            config["security.protocol"] = self.security_protocol
        if self.sasl_mechanism:
            config["sasl.mechanism"] = self.sasl_mechanism
            config["sasl.username"] = self.sasl_username
            config["sasl.password"] = self.sasl_password
        if self.ssl_cafile:
            config["ssl.ca.location"] = self.ssl_cafile
        return config


def _parse(name: str, raw: str, type_: object) -> object:
    type_name = type_ if isinstance(type_, str) else getattr(type_, "__name__", str(type_))
    try:
        if type_name == "bool":
            if raw.lower() not in {"1", "0", "true", "false", "yes", "no"}:
                raise ValueError(raw)
            return raw.lower() in {"1", "true", "yes"}
        if type_name == "int":
            return int(raw)
        if type_name == "float":
            return float(raw)
        if type_name == "Path":
            return Path(raw)
    except ValueError as exc:
        raise ValueError(f"{env_name(name)}={raw!r} is not a valid {type_name}") from exc
    return raw
