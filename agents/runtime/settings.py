"""All nextbest settings in one typed object, read from ``NEXTBEST_*`` environment variables."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from models.next_purchase.paths import merchant_model_root
from streams.merchants.catalog import DEFAULT_MERCHANTS
from streams.promotion.experiments import Experiment

POLICIES = ("rules", "promotion")


@dataclass(frozen=True)
class Topics:
    """Kafka topic names. Inputs are keyed by ``merchant_id:customer_or_session_id``."""

    clickstream: str = "nextbest.clickstream"
    cart: str = "nextbest.cart"
    orders: str = "nextbest.orders"
    profiles: str = "nextbest.profiles"
    feedback: str = "nextbest.offer-feedback"
    promotions: str = "nextbest.promotions"
    notifications: str = "nextbest.notifications"
    dead_letters: str = "nextbest.dead-letters"
    catalog: str = "nextbest.promotion-catalog"
    merges: str = "nextbest.session-merges"
    decisions: str = "nextbest.decisions"  # promotion policy: one DecisionRecord per decision
    rewards: str = "nextbest.rewards"  # promotion policy: one RewardRecord per closed decision

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
    broker_url: str = "kafka://127.0.0.1:9092"
    embedded_broker: bool = False
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = ""
    ssl_cafile: str = ""
    app_id: str = "nextbest"
    state_dir: Path = Path("var/state")
    partitions: int = 8
    replication_factor: int = 1
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    merchants_path: Path = DEFAULT_MERCHANTS
    max_event_bytes: int = 65536
    #: Inputs whose event_time is further ahead of this machine's clock are dead-lettered
    #: (0: no limit)
    max_future_s: float = 86400.0
    batch_size: int = 500
    batch_window_s: float = 0.05
    #: Records reach the streams without a task per record (agents/runtime/transport.py); 0: Faust's
    #: own delivery loop
    lean_delivery: bool = True
    log_level: str = "warn"
    model_path: str = ""  # next-purchase artifact root (or version dir); empty: rules only
    model_reload_s: float = 10.0
    model_threads: int = 1
    model_top_k: int = 5
    #: REST API bearer tokens, ``merchant=token,merchant2=token2`` (a token sees its merchant only)
    api_tokens: str = ""
    api_admin_token: str = ""  # every merchant, plus the admin endpoints
    api_max_body_bytes: int = 1048576
    api_max_events: int = 500  # events per POST /events
    models_dir: Path = Path("var/models")  # POST /predictors: <models_dir>/<merchant>/next_purchase
    train_args: str = ""  # extra `nextbest train` options for POST /predictors jobs
    journey_tick_s: float = 5.0  # wake-up ticks for idle partitions (journey timers)
    journey_lateness_s: float = 60.0  # journey clocks trail the newest event time by this
    #: Cart decisions: "rules" (the catalog's threshold rules) or "promotion" (the promotion
    #: policy: experiments, guard rails, bandit, decision and reward topics)
    policy: str = "rules"
    #: The promotion policy's experiment, JSON ``{"id", "holdout", "arms": [{"name", "weight",
    #: "variant"}]}`` (variants: bandit, rules, static:<action>); empty: ``promo-1``, a 10%
    #: holdout and the bandit for everyone else
    promo_experiment: str = ""
    #: The promotion objective's horizon in weeks: a customer's expected margin without offers
    #: and a discount's dependency cost are counted over it (`streams.promotion.objective`)
    promo_horizon_weeks: float = 10.0
    #: Future margin lost per unit of discount depth, as a share of the horizon's margin (the
    #: discount-dependency term of `streams.promotion.objective`)
    promo_dependency_cost: float = 0.5
    #: A ``nextbest promo-retrain`` output the bandit starts from instead of the bare prior, per
    #: merchant in it (for a new deployment or a fresh bandit table: rewards in it that the
    #: worker learns again count twice); empty: the prior
    promo_bandit_start: str = ""
    topics: Topics = field(default_factory=Topics)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Build settings from ``NEXTBEST_<FIELD>`` and ``NEXTBEST_TOPIC_<NAME>`` variables."""
        env = dict(os.environ if env is None else env)
        values: dict[str, object] = {}
        for f in fields(cls):
            if f.name == "topics":
                continue
            raw = env.get(f"NEXTBEST_{f.name.upper()}")
            if raw is None:
                continue
            values[f.name] = _parse(f.name, raw, f.type)
        topic_values = {
            t.name: env[f"NEXTBEST_TOPIC_{t.name.upper()}"]
            for t in fields(Topics)
            if f"NEXTBEST_TOPIC_{t.name.upper()}" in env
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
                    env[f"NEXTBEST_TOPIC_{t.name.upper()}"] = getattr(value, t.name)
            elif value is not None:
                env[f"NEXTBEST_{f.name.upper()}"] = (
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
        raise ValueError(f"NEXTBEST_{name.upper()}={raw!r} is not a valid {type_name}") from exc
    return raw
