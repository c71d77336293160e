"""All nextbest settings in one typed object, read from ``NEXTBEST_*`` environment variables."""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
import socket
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from models.next_purchase.paths import merchant_model_root
from streams.merchants.catalog import DEFAULT_MERCHANTS
from streams.promotion.experiments import Experiment

log = logging.getLogger(__name__)

POLICIES = ("rules", "promotion")
#: Bind addresses that mean every interface: a worker bound so advertises its host name.
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})
LOG_LEVELS = ("debug", "info", "warn", "warning", "error", "critical")


class SettingsError(ValueError):
    """A setting that cannot be used; the message names ``variable``, the variable to fix."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(message)
        self.variable = variable


#: REST API scopes: ``ingest`` (POST /events), ``read`` (recommendations, promotions, customer
#: state), ``train`` (POST /predictors, job status); the token settings that grant them.
API_SCOPES = ("ingest", "read", "train")
TOKEN_SCOPES = {
    "api_tokens": frozenset(API_SCOPES),
    "api_ingest_tokens": frozenset({"ingest"}),
    "api_read_tokens": frozenset({"read"}),
    "api_train_tokens": frozenset({"train"}),
}


def env_name(setting: str) -> str:
    """The environment variable a `Settings` field is read from: ``NEXTBEST_<FIELD>``."""
    return f"NEXTBEST_{setting.upper()}"


def topic_env_name(topic: str) -> str:
    """The environment variable that renames a `Topics` field: ``NEXTBEST_TOPIC_<NAME>``."""
    return f"NEXTBEST_TOPIC_{topic.upper()}"


def _setting(
    default: Any,
    doc: str,
    *,
    secret: bool = False,
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
) -> Any:
    """A settings field with its one-line description (docs/configuration.md is rendered from
    these; a secret's default is never shown, nor its value in the repr) and, for a number, the
    bounds `Settings.validate` holds it to: ``>= minimum``, ``> above``, ``<= maximum``."""
    bounds = {"minimum": minimum, "above": above, "maximum": maximum}
    return field(default=default, metadata={"doc": doc, "secret": secret, "bounds": bounds})


def _broken_bound(value: float, bounds: dict[str, float | None]) -> str | None:
    """The bound ``value`` breaks, e.g. ``">= 1"``, or None (bounds as `_setting` keeps them)."""
    low, strictly_low, high = bounds["minimum"], bounds["above"], bounds["maximum"]
    if low is not None and value < low:
        return f">= {low}"
    if strictly_low is not None and value <= strictly_low:
        return f"> {strictly_low}"
    if high is not None and value > high:
        return f"<= {high}"
    return None


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
    action_feedback: str = _setting(
        "nextbest.action-feedback", "in: engagement actions shown, taken, dismissed"
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
        return (
            self.clickstream,
            self.cart,
            self.orders,
            self.profiles,
            self.feedback,
            self.action_feedback,
        )

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
        8, "Partitions of every input and co-partitioned topic (caps the useful workers)", minimum=1
    )
    replication_factor: int = _setting(
        1, "Replication factor of the topics nextbest creates", minimum=1
    )
    web_host: str = _setting(
        "127.0.0.1",
        "Address the worker's web server (REST API, /metrics) binds; 0.0.0.0 or `::`: every "
        "interface",
    )
    web_advertised_url: str = _setting(
        "",
        "URL at which the other workers reach this one (API calls forwarded to the owner of a "
        "key's partition), e.g. `http://nextbest-0.nextbest:6066`; unique per worker. Empty: "
        "`http://<web_host>:<web_port>`, with this machine's host name (a container's or pod's "
        "name) when web_host binds every interface",
    )
    web_port: int = _setting(
        6066, "Port of the worker's web server (REST API, /metrics)", minimum=0, maximum=65535
    )
    standby_replicas: int = _setting(
        1,
        "Warm standby copies of each table partition, kept on other workers from the changelog "
        "(Faust's `table_standby_replicas`): a worker taking over a partition starts from its "
        "standby instead of replaying the changelog",
        minimum=0,
    )
    batch_recovery: bool = _setting(
        True,
        "A worker reads its tables' changelog partitions into RocksDB in batches before "
        "Faust's record-by-record recovery, which then finds nothing left to read "
        "(agents/runtime/recovery.py); 0: Faust's recovery only",
    )
    session_timeout_s: float = _setting(
        60.0,
        "Consumer-group session timeout against a real Kafka (Faust's `broker_session_timeout`; "
        "heartbeats every third of it, at most 3 s): how long a worker that died unannounced "
        "keeps its partitions before the others take them over. Within the broker's "
        "`group.min.session.timeout.ms` and `group.max.session.timeout.ms` (6-1,800 s by "
        "default). The embedded broker always uses 6 s",
        minimum=1,
    )
    merchants_path: Path = _setting(
        DEFAULT_MERCHANTS, "Merchants file: promotion catalogs, product rule, delivery, journeys"
    )
    max_event_bytes: int = _setting(
        65536, "Larger input records are dead-lettered (`oversize_payload`)", minimum=1
    )
    max_future_s: float = _setting(
        86400.0,
        "Inputs whose event_time is further ahead of this machine's clock are dead-lettered "
        "(`schema_violation`); 0: no limit",
        minimum=0,
    )
    batch_size: int = _setting(500, "Most events per micro-batch", minimum=1)
    batch_window_s: float = _setting(
        0.0,
        "Longest wait, in seconds, for a micro-batch to fill after its first event; 0: a batch "
        "takes the events that have arrived (up to `batch_size`) and goes at once "
        "(agents/runtime/microbatch.py)",
        minimum=0,
    )
    max_state_bytes: int = _setting(
        262144,
        "Largest customer state record (JSON) written to the table and its changelog; an event "
        "that would make one larger is dead-lettered (`state_too_large`) and the record keeps "
        "its value",
        minimum=1,
    )
    producer_max_request_bytes: int = _setting(
        1_000_000,
        "Largest record the worker produces, key and value (Faust's `producer_max_request_size`; "
        "at most the broker's `message.max.bytes`): an output that would be larger is "
        "dead-lettered with its input (`output_too_large`), a larger state record is refused "
        "and counted (`nextbest_output_errors_total`), so keep `NEXTBEST_MAX_STATE_BYTES` below "
        "it; at least 64 KiB, room for a dead letter's 4 KiB excerpts",
        minimum=65536,
    )
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
        10.0, "Seconds between checks of the models' `latest` pointers (hot reload)", above=0
    )
    model_threads: int = _setting(
        1, "Torch threads for inference on the event loop's thread", minimum=1
    )
    model_top_k: int = _setting(5, "Add-ons an offer carries (`recommendations`)", minimum=1)
    add_on_min_similarity: float = _setting(
        0.15,  # models.next_purchase.similar_items.STRONG_SIMILARITY (tested)
        "Pair similarity from which a product bought together with the cart's goes before the "
        "next-purchase model's picks on an offer's add-ons (0 to 1; above 1: never)",
        minimum=0.0,
    )
    api_tokens: str = _setting(
        "",
        "REST API bearer tokens with every scope (ingest, read, train), "
        "`merchant=token,merchant2=token2` (a token sees its merchant only; at least 16 "
        "characters)",
        secret=True,
    )
    api_ingest_tokens: str = _setting(
        "",
        "REST API tokens that can only send their merchant's events (`POST /events`; safe in a "
        "browser), `merchant=token,...`",
        secret=True,
    )
    api_read_tokens: str = _setting(
        "",
        "REST API tokens that can only read their merchant's recommendations, promotions and "
        "customer state, `merchant=token,...`",
        secret=True,
    )
    api_train_tokens: str = _setting(
        "",
        "REST API tokens that can only start and follow their merchant's training jobs, "
        "`merchant=token,...`",
        secret=True,
    )
    api_admin_token: str = _setting(
        "", "REST API bearer token that sees every merchant (at least 16 characters)", secret=True
    )
    api_max_body_bytes: int = _setting(
        1048576, "Largest REST request body (larger: 413)", minimum=1
    )
    api_max_events: int = _setting(500, "Most events per `POST /events` (more: 413)", minimum=1)
    api_rate: float = _setting(
        50.0,
        "Requests per second each REST API token may make on one worker (more: 429); 0: no limit",
        minimum=0,
    )
    api_burst: int = _setting(
        100, "Requests a REST API token may make at once, above `NEXTBEST_API_RATE`", minimum=1
    )
    models_dir: Path = _setting(
        Path("var/models"),
        "Merchant models: `POST /predictors` writes, and the worker serves, "
        "`<models_dir>/<merchant>/next_purchase`",
    )
    train_args: str = _setting("", "Extra `nextbest train` options for `POST /predictors` jobs")
    journey_tick_s: float = _setting(
        5.0, "Seconds between the wake-up ticks for idle partitions (journey timers)", above=0
    )
    journey_lateness_s: float = _setting(
        60.0,
        "Journey clocks and promotion attribution windows trail the newest event time by this "
        "many seconds",
        minimum=0,
    )
    policy: str = _setting(
        "promotion",
        "Cart decisions: `promotion` (the learned promotion policy: experiments with a holdout, "
        "guard rails, the bandit from its prior, the next-purchase model's signals when a model "
        "is present, decision and reward topics) or `rules` (the catalog's threshold rules)",
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
        above=0,
    )
    promo_dependency_cost: float = _setting(
        0.5,
        "Future margin lost per unit of discount depth, as a share of the horizon's margin (the "
        "discount-dependency term of streams/promotion/objective.py)",
        minimum=0,
    )
    promo_bandit_start: str = _setting(
        "",
        "A `nextbest promo-retrain` output the bandit starts from instead of the bare prior, per "
        "merchant in it (for a new deployment or a fresh bandit table: rewards in it that the "
        "worker learns again count twice); empty: the prior",
    )
    topics: Topics = field(default_factory=Topics, metadata={"doc": "Kafka topic names"})

    def __repr__(self) -> str:
        """The dataclass repr, with every secret that is set shown as ``'***'``."""
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            text = "'***'" if f.metadata.get("secret") and value else repr(value)
            shown.append(f"{f.name}={text}")
        return f"Settings({', '.join(shown)})"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Build settings from ``NEXTBEST_<FIELD>`` and ``NEXTBEST_TOPIC_<NAME>`` variables.

        Raises `SettingsError` on a value that does not parse or that `validate` refuses.
        """
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
        warn_unknown_variables(env)
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
        """Raise `SettingsError`, naming the variable, on the first setting that is unusable."""
        if not self.broker_url.startswith("kafka://"):
            raise SettingsError(
                "NEXTBEST_BROKER_URL",
                f"NEXTBEST_BROKER_URL must look like kafka://host:port, got {self.broker_url!r}",
            )
        for f in fields(self):
            bounds = f.metadata.get("bounds")
            value = getattr(self, f.name)
            if bounds and (bound := _broken_bound(value, bounds)):
                name = env_name(f.name)
                raise SettingsError(name, f"{name} must be {bound}, got {value}")
        if self.security_protocol not in {"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"}:
            raise SettingsError(
                "NEXTBEST_SECURITY_PROTOCOL",
                f"unknown NEXTBEST_SECURITY_PROTOCOL {self.security_protocol!r}",
            )
        if self.log_level.lower() not in LOG_LEVELS:
            raise SettingsError(
                "NEXTBEST_LOG_LEVEL",
                f"NEXTBEST_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, "
                f"got {self.log_level!r}",
            )
        if self.policy not in POLICIES:
            raise SettingsError(
                "NEXTBEST_POLICY",
                f"NEXTBEST_POLICY must be one of {', '.join(POLICIES)}, got {self.policy!r}",
            )
        if self.web_advertised_url:
            url = urlsplit(self.web_advertised_url)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise SettingsError(
                    "NEXTBEST_WEB_ADVERTISED_URL",
                    "NEXTBEST_WEB_ADVERTISED_URL must look like http://host:port, got "
                    f"{self.web_advertised_url!r}",
                )
            if url.hostname in WILDCARD_HOSTS:
                raise SettingsError(
                    "NEXTBEST_WEB_ADVERTISED_URL",
                    "NEXTBEST_WEB_ADVERTISED_URL must name this worker, not a wildcard address "
                    f"({url.hostname}): the other workers forward API calls to it",
                )
        if self.promo_experiment:
            self.experiment()
        self.merchant_tokens()  # raises on a malformed NEXTBEST_API_*TOKENS
        if self.api_admin_token and len(self.api_admin_token) < 16:
            raise SettingsError(
                "NEXTBEST_API_ADMIN_TOKEN",
                "NEXTBEST_API_ADMIN_TOKEN must be at least 16 characters",
            )

    def advertised_url(self) -> str:
        """The URL the other workers use for this one (``web_advertised_url``, or derived)."""
        if self.web_advertised_url:
            return self.web_advertised_url.rstrip("/")
        host = self.web_host
        if host in WILDCARD_HOSTS:
            host = socket.gethostname()
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.web_port}"

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
            raise SettingsError(
                "NEXTBEST_PROMO_EXPERIMENT", f"NEXTBEST_PROMO_EXPERIMENT: {exc}"
            ) from None

    def merchant_tokens(self) -> dict[str, tuple[str, frozenset[str]]]:
        """Bearer token -> (merchant id, scopes), from ``NEXTBEST_API_TOKENS`` (every scope) and
        ``NEXTBEST_API_{INGEST,READ,TRAIN}_TOKENS``; a token may be listed only once."""
        tokens: dict[str, tuple[str, frozenset[str]]] = {}
        for name, scopes in TOKEN_SCOPES.items():
            for pair in filter(None, (part.strip() for part in getattr(self, name).split(","))):
                merchant, sep, token = pair.partition("=")
                if not sep or not merchant.strip() or len(token.strip()) < 16:
                    raise SettingsError(
                        env_name(name),
                        f"{env_name(name)} must look like merchant=token,... with tokens of at "
                        "least 16 characters",
                    )
                if token.strip() in tokens or token.strip() == self.api_admin_token:
                    raise SettingsError(
                        env_name(name), f"{env_name(name)}: a token is listed more than once"
                    )
                tokens[token.strip()] = (merchant.strip(), scopes)
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
    """The value of field ``name`` from its variable's text; NaN and infinities are no floats."""
    type_name = type_ if isinstance(type_, str) else getattr(type_, "__name__", str(type_))
    try:
        if type_name == "bool":
            if raw.lower() not in {"1", "0", "true", "false", "yes", "no"}:
                raise ValueError(raw)
            return raw.lower() in {"1", "true", "yes"}
        if type_name == "int":
            return int(raw)
        if type_name == "float":
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError(raw)
            return value
        if type_name == "Path":
            return Path(raw)
    except ValueError:
        variable = env_name(name)
        raise SettingsError(variable, f"{variable}={raw!r} is not a valid {type_name}") from None
    return raw


def known_variables() -> list[str]:
    """Every ``NEXTBEST_*`` variable `Settings.from_env` reads."""
    names = [env_name(f.name) for f in fields(Settings) if f.name != "topics"]
    return names + [topic_env_name(t.name) for t in fields(Topics)]


def warn_unknown_variables(env: dict[str, str]) -> list[str]:
    """Log each ``NEXTBEST_*`` variable that is no setting (a typo changes nothing silently),
    with the closest setting's name; returns the unknown names."""
    known = known_variables()
    unknown = sorted(name for name in env if name.startswith("NEXTBEST_") and name not in known)
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        log.warning("%s is not a nextbest setting and is ignored%s", name, hint)
    return unknown
