"""Settings from NEXTBEST_* environment variables, topic overrides, Kafka client config."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path

import pytest

from agents.runtime.app import faust_config
from agents.runtime.settings import (
    DEFAULT_MERCHANTS,
    LOG_LEVELS,
    Settings,
    SettingsError,
    Topics,
    env_name,
    warn_unknown_variables,
)
from streams.promotion.experiments import Arm, Experiment


def test_defaults_without_any_variable():
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.merchants_path == DEFAULT_MERCHANTS
    assert settings.topics == Topics()
    assert settings.topics.cart == "nextbest.cart"


def test_unrelated_variables_are_ignored():
    env = {"HOME": "/root", "NEXTBEST_NOT_A_SETTING": "x", "NEXTBEST_TOPIC_NOPE": "y"}
    assert Settings.from_env(env) == Settings()


def test_a_misspelled_variable_is_named_with_the_setting_it_resembles(caplog):
    env = {"HOME": "/root", "NEXTBEST_BATCH_SIZ": "10", "NEXTBEST_BATCH_SIZE": "20"}
    with caplog.at_level(logging.WARNING, logger="agents.runtime.settings"):
        settings = Settings.from_env(env)
    assert settings.batch_size == 20
    assert warn_unknown_variables(env) == ["NEXTBEST_BATCH_SIZ"]
    assert "NEXTBEST_BATCH_SIZ is not a nextbest setting" in caplog.text
    assert "did you mean NEXTBEST_BATCH_SIZE?" in caplog.text


def test_every_field_type_is_parsed():
    env = {
        "NEXTBEST_BROKER_URL": "kafka://kafka:9092",
        "NEXTBEST_EMBEDDED_BROKER": "true",
        "NEXTBEST_SECURITY_PROTOCOL": "SASL_SSL",
        "NEXTBEST_SASL_MECHANISM": "SCRAM-SHA-512",
        "NEXTBEST_SASL_USERNAME": "worker",
        "NEXTBEST_SASL_PASSWORD": "s3cret",
        "NEXTBEST_SSL_CAFILE": "/etc/ca.pem",
        "NEXTBEST_APP_ID": "nextbest-eu",
        "NEXTBEST_STATE_DIR": "/data/state",
        "NEXTBEST_PARTITIONS": "12",
        "NEXTBEST_REPLICATION_FACTOR": "3",
        "NEXTBEST_WEB_HOST": "0.0.0.0",
        "NEXTBEST_WEB_PORT": "7070",
        "NEXTBEST_WEB_ADVERTISED_URL": "http://nextbest-1.nextbest:7070",
        "NEXTBEST_STANDBY_REPLICAS": "2",
        "NEXTBEST_BATCH_RECOVERY": "0",
        "NEXTBEST_SESSION_TIMEOUT_S": "10",
        "NEXTBEST_MERCHANTS_PATH": "/etc/nextbest/merchants.yaml",
        "NEXTBEST_MAX_EVENT_BYTES": "1024",
        "NEXTBEST_MAX_FUTURE_S": "3600",
        "NEXTBEST_MAX_STATE_BYTES": "131072",
        "NEXTBEST_PRODUCER_MAX_REQUEST_BYTES": "8388608",
        "NEXTBEST_BATCH_SIZE": "100",
        "NEXTBEST_BATCH_WINDOW_S": "0.25",
        "NEXTBEST_LEAN_DELIVERY": "false",
        "NEXTBEST_LOG_LEVEL": "info",
        "NEXTBEST_API_TOKENS": "shop-a=aaaaaaaaaaaaaaaa1, shop-b=bbbbbbbbbbbbbbbb2",
        "NEXTBEST_API_ADMIN_TOKEN": "admin-token-0123456789",
        "NEXTBEST_API_MAX_BODY_BYTES": "2048",
        "NEXTBEST_API_MAX_EVENTS": "10",
        "NEXTBEST_API_INGEST_TOKENS": "shop-a=iiiiiiiiiiiiiiii1",
        "NEXTBEST_API_READ_TOKENS": "shop-a=rrrrrrrrrrrrrrrr1",
        "NEXTBEST_API_TRAIN_TOKENS": "shop-b=tttttttttttttttt2",
        "NEXTBEST_API_RATE": "7.5",
        "NEXTBEST_API_BURST": "20",
        "NEXTBEST_MODELS_DIR": "/data/models",
        "NEXTBEST_TRAIN_ARGS": "--max-epochs 5",
        "NEXTBEST_JOURNEY_TICK_S": "2.5",
        "NEXTBEST_JOURNEY_LATENESS_S": "30",
        "NEXTBEST_MODEL_PATH": "/data/models/next_purchase",
        "NEXTBEST_MODEL_RELOAD_S": "30",
        "NEXTBEST_MODEL_THREADS": "2",
        "NEXTBEST_MODEL_TOP_K": "8",
        "NEXTBEST_ADD_ON_MIN_SIMILARITY": "0.3",
        "NEXTBEST_POLICY": "promotion",
        "NEXTBEST_PROMO_EXPERIMENT": '{"id": "ab-1", "holdout": 0.2, "arms": [{"name": "rules"}]}',
        "NEXTBEST_PROMO_HORIZON_WEEKS": "4",
        "NEXTBEST_PROMO_DEPENDENCY_COST": "0.25",
        "NEXTBEST_PROMO_BANDIT_START": "/data/promo/retrained.json",
    }
    # The test must set every field (topics aside), so a new setting needs a case here.
    assert {f"NEXTBEST_{f.name.upper()}" for f in fields(Settings) if f.name != "topics"} == set(
        env
    )
    settings = Settings.from_env(env)
    assert settings == Settings(
        broker_url="kafka://kafka:9092",
        embedded_broker=True,
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="worker",
        sasl_password="s3cret",
        ssl_cafile="/etc/ca.pem",
        app_id="nextbest-eu",
        state_dir=Path("/data/state"),
        partitions=12,
        replication_factor=3,
        web_host="0.0.0.0",
        web_port=7070,
        web_advertised_url="http://nextbest-1.nextbest:7070",
        standby_replicas=2,
        batch_recovery=False,
        session_timeout_s=10.0,
        merchants_path=Path("/etc/nextbest/merchants.yaml"),
        max_event_bytes=1024,
        max_future_s=3600.0,
        max_state_bytes=131072,
        producer_max_request_bytes=8388608,
        batch_size=100,
        batch_window_s=0.25,
        lean_delivery=False,
        log_level="info",
        api_tokens="shop-a=aaaaaaaaaaaaaaaa1, shop-b=bbbbbbbbbbbbbbbb2",
        api_admin_token="admin-token-0123456789",
        api_max_body_bytes=2048,
        api_max_events=10,
        api_ingest_tokens="shop-a=iiiiiiiiiiiiiiii1",
        api_read_tokens="shop-a=rrrrrrrrrrrrrrrr1",
        api_train_tokens="shop-b=tttttttttttttttt2",
        api_rate=7.5,
        api_burst=20,
        models_dir=Path("/data/models"),
        train_args="--max-epochs 5",
        journey_tick_s=2.5,
        journey_lateness_s=30.0,
        model_path="/data/models/next_purchase",
        model_reload_s=30.0,
        model_threads=2,
        model_top_k=8,
        add_on_min_similarity=0.3,
        policy="promotion",
        promo_experiment='{"id": "ab-1", "holdout": 0.2, "arms": [{"name": "rules"}]}',
        promo_horizon_weeks=4.0,
        promo_dependency_cost=0.25,
        promo_bandit_start="/data/promo/retrained.json",
    )
    every_scope = frozenset({"ingest", "read", "train"})
    assert settings.merchant_tokens() == {
        "aaaaaaaaaaaaaaaa1": ("shop-a", every_scope),
        "bbbbbbbbbbbbbbbb2": ("shop-b", every_scope),
        "iiiiiiiiiiiiiiii1": ("shop-a", frozenset({"ingest"})),
        "rrrrrrrrrrrrrrrr1": ("shop-a", frozenset({"read"})),
        "tttttttttttttttt2": ("shop-b", frozenset({"train"})),
    }
    assert settings.experiment() == Experiment("ab-1", 0.2, (Arm("rules", 1.0, "rules"),))
    assert isinstance(settings.state_dir, Path) and isinstance(settings.batch_window_s, float)
    assert type(settings.partitions) is int and settings.embedded_broker is True


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("true", True), ("TRUE", True), ("Yes", True), ("0", False), ("false", False),
     ("No", False)],
)  # fmt: skip
def test_bool_spellings(raw, expected):
    assert Settings.from_env({"NEXTBEST_EMBEDDED_BROKER": raw}).embedded_broker is expected


@pytest.mark.parametrize(
    ("name", "raw", "type_name"),
    [
        ("NEXTBEST_EMBEDDED_BROKER", "maybe", "bool"),
        ("NEXTBEST_EMBEDDED_BROKER", "", "bool"),
        ("NEXTBEST_PARTITIONS", "eight", "int"),
        ("NEXTBEST_PARTITIONS", "8.0", "int"),
        ("NEXTBEST_WEB_PORT", "", "int"),
        ("NEXTBEST_MAX_EVENT_BYTES", "64k", "int"),
        ("NEXTBEST_BATCH_WINDOW_S", "fast", "float"),
    ],
)
def test_invalid_values_name_the_variable(name, raw, type_name):
    with pytest.raises(ValueError) as info:
        Settings.from_env({name: raw})
    assert str(info.value) == f"{name}={raw!r} is not a valid {type_name}"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"NEXTBEST_BROKER_URL": "localhost:9092"}, "NEXTBEST_BROKER_URL must look like kafka://"),
        ({"NEXTBEST_PARTITIONS": "0"}, "NEXTBEST_PARTITIONS must be >= 1"),
        ({"NEXTBEST_SECURITY_PROTOCOL": "TLS"}, "unknown NEXTBEST_SECURITY_PROTOCOL 'TLS'"),
        ({"NEXTBEST_API_TOKENS": "shop-a:0123456789abcdef"}, "NEXTBEST_API_TOKENS must look"),
        ({"NEXTBEST_API_TOKENS": "shop-a=short"}, "at least 16 characters"),
        ({"NEXTBEST_API_ADMIN_TOKEN": "admin"}, "NEXTBEST_API_ADMIN_TOKEN must be at least"),
        ({"NEXTBEST_API_MAX_EVENTS": "0"}, "NEXTBEST_API_MAX_EVENTS"),
        ({"NEXTBEST_MAX_STATE_BYTES": "0"}, "NEXTBEST_MAX_STATE_BYTES must be >= 1"),
        ({"NEXTBEST_WEB_ADVERTISED_URL": "nextbest-0:6066"}, "NEXTBEST_WEB_ADVERTISED_URL must"),
        ({"NEXTBEST_WEB_ADVERTISED_URL": "http://0.0.0.0:6066"}, "not a wildcard address"),
        ({"NEXTBEST_STANDBY_REPLICAS": "-1"}, "NEXTBEST_STANDBY_REPLICAS must be >= 0"),
        ({"NEXTBEST_POLICY": "bandit"}, "NEXTBEST_POLICY must be one of rules, promotion"),
        ({"NEXTBEST_PROMO_EXPERIMENT": "[1]"}, "NEXTBEST_PROMO_EXPERIMENT: expected a JSON"),
        ({"NEXTBEST_PROMO_EXPERIMENT": '{"holdout": 2}'}, "NEXTBEST_PROMO_EXPERIMENT: .*holdout"),
        ({"NEXTBEST_PROMO_HORIZON_WEEKS": "0"}, "NEXTBEST_PROMO_HORIZON_WEEKS must be > 0"),
        ({"NEXTBEST_PROMO_DEPENDENCY_COST": "-1"}, "NEXTBEST_PROMO_DEPENDENCY_COST must be >= 0"),
    ],
)
def test_invalid_settings_name_the_variable(env, message):
    with pytest.raises(ValueError, match=message):
        Settings.from_env(env)


@pytest.mark.parametrize(
    ("env", "url"),
    [
        ({}, "http://127.0.0.1:6066"),
        ({"NEXTBEST_WEB_HOST": "10.0.0.7", "NEXTBEST_WEB_PORT": "7000"}, "http://10.0.0.7:7000"),
        ({"NEXTBEST_WEB_HOST": "::1"}, "http://[::1]:6066"),
        ({"NEXTBEST_WEB_HOST": "0.0.0.0"}, f"http://{socket.gethostname()}:6066"),
        ({"NEXTBEST_WEB_HOST": "::"}, f"http://{socket.gethostname()}:6066"),
        (
            {"NEXTBEST_WEB_HOST": "0.0.0.0", "NEXTBEST_WEB_ADVERTISED_URL": "http://w-2.nb:6066/"},
            "http://w-2.nb:6066",
        ),
    ],
)
def test_a_worker_bound_to_every_interface_advertises_its_own_name(env, url):
    """Faust keys partition ownership by the advertised URL: workers bound to 0.0.0.0 must not
    all advertise http://0.0.0.0:6066 (their entries would collapse into one)."""
    settings = Settings.from_env(env)
    assert settings.advertised_url() == url
    config = faust_config(settings)
    assert config["canonical_url"] == url
    assert config["web_bind"] == settings.web_host


def test_standby_replicas_reach_faust():
    assert faust_config(Settings.from_env({}))["table_standby_replicas"] == 1
    config = faust_config(Settings.from_env({"NEXTBEST_STANDBY_REPLICAS": "0"}))
    assert config["table_standby_replicas"] == 0


def test_the_session_timeout_reaches_faust_but_not_on_the_embedded_broker():
    config = faust_config(Settings.from_env({"NEXTBEST_SESSION_TIMEOUT_S": "12"}))
    assert (config["broker_session_timeout"], config["broker_heartbeat_interval"]) == (12.0, 3.0)
    config = faust_config(Settings.from_env({"NEXTBEST_SESSION_TIMEOUT_S": "6"}))
    assert config["broker_heartbeat_interval"] == 2.0
    embedded = Settings.from_env(
        {"NEXTBEST_EMBEDDED_BROKER": "1", "NEXTBEST_SESSION_TIMEOUT_S": "30"}
    )
    assert faust_config(embedded)["broker_session_timeout"] == 6.0


def test_topic_overrides():
    env = {
        "NEXTBEST_TOPIC_CART": "shop.cart",
        "NEXTBEST_TOPIC_DEAD_LETTERS": "shop.dlq",
        "NEXTBEST_TOPIC_FEEDBACK": "shop.feedback",
    }
    topics = Settings.from_env(env).topics
    assert (topics.cart, topics.dead_letters, topics.feedback) == (
        "shop.cart",
        "shop.dlq",
        "shop.feedback",
    )
    assert topics.clickstream == Topics().clickstream
    assert topics.inputs == (
        "nextbest.clickstream",
        "shop.cart",
        "nextbest.orders",
        "nextbest.profiles",
        "shop.feedback",
        "nextbest.action-feedback",
    )
    assert topics.partitioned == (
        *topics.inputs,
        "nextbest.session-merges",
        "nextbest.promotions",
        "nextbest.notifications",
    )
    assert (
        topics.catalog not in topics.partitioned and topics.dead_letters not in topics.partitioned
    )


def test_every_topic_can_be_overridden():
    env = {f"NEXTBEST_TOPIC_{t.name.upper()}": f"x.{t.name}" for t in fields(Topics)}
    topics = Settings.from_env(env).topics
    assert all(getattr(topics, t.name) == f"x.{t.name}" for t in fields(Topics))


def test_from_env_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("NEXTBEST_PARTITIONS", "3")
    monkeypatch.setenv("NEXTBEST_TOPIC_ORDERS", "env.orders")
    settings = Settings.from_env()
    assert settings.partitions == 3 and settings.topics.orders == "env.orders"


def test_settings_are_immutable():
    with pytest.raises(AttributeError):
        Settings().partitions = 2  # type: ignore[misc]


def test_bootstrap_servers_and_plaintext_client_config():
    settings = Settings.from_env({"NEXTBEST_BROKER_URL": "kafka://a:9092;kafka://b:9093"})
    assert settings.bootstrap_servers == "a:9092,b:9093"
    assert settings.kafka_client_config() == {"bootstrap.servers": "a:9092,b:9093"}
    assert Settings().kafka_client_config() == {"bootstrap.servers": "127.0.0.1:9092"}


def test_kafka_client_config_with_sasl_ssl():
    settings = Settings.from_env(
        {
            "NEXTBEST_BROKER_URL": "kafka://broker.example.com:9094",
            "NEXTBEST_SECURITY_PROTOCOL": "SASL_SSL",
            "NEXTBEST_SASL_MECHANISM": "PLAIN",
            "NEXTBEST_SASL_USERNAME": "user",
            "NEXTBEST_SASL_PASSWORD": "pass",
            "NEXTBEST_SSL_CAFILE": "/etc/ssl/ca.pem",
        }
    )
    assert settings.kafka_client_config() == {
        "bootstrap.servers": "broker.example.com:9094",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "user",
        "sasl.password": "pass",
        "ssl.ca.location": "/etc/ssl/ca.pem",
    }


def test_kafka_client_config_with_ssl_only():
    settings = Settings(security_protocol="SSL", ssl_cafile="/ca.pem")
    assert settings.kafka_client_config() == {
        "bootstrap.servers": "127.0.0.1:9092",
        "security.protocol": "SSL",
        "ssl.ca.location": "/ca.pem",
    }


def test_sasl_credentials_are_left_out_without_a_mechanism():
    settings = Settings(security_protocol="SASL_PLAINTEXT", sasl_username="u", sasl_password="p")
    assert settings.kafka_client_config() == {
        "bootstrap.servers": "127.0.0.1:9092",
        "security.protocol": "SASL_PLAINTEXT",
    }


def test_to_env_round_trips_every_field():
    settings = replace(
        Settings.from_env({}),
        embedded_broker=True,
        partitions=3,
        state_dir=Path("/tmp/state"),
        api_admin_token="a" * 16,
        topics=Topics(cart="shop.cart"),
    )
    assert Settings.from_env(settings.to_env()) == settings


BAD_VALUES = [
    ("NEXTBEST_BATCH_SIZE", "abc", "NEXTBEST_BATCH_SIZE='abc' is not a valid int"),
    ("NEXTBEST_BATCH_SIZE", "-5", "NEXTBEST_BATCH_SIZE must be >= 1, got -5"),
    ("NEXTBEST_BATCH_WINDOW_S", "-0.1", "NEXTBEST_BATCH_WINDOW_S must be >= 0, got -0.1"),
    ("NEXTBEST_BATCH_WINDOW_S", "nan", "NEXTBEST_BATCH_WINDOW_S='nan' is not a valid float"),
    ("NEXTBEST_MAX_FUTURE_S", "inf", "NEXTBEST_MAX_FUTURE_S='inf' is not a valid float"),
    ("NEXTBEST_WEB_PORT", "70000", "NEXTBEST_WEB_PORT must be <= 65535, got 70000"),
    ("NEXTBEST_JOURNEY_TICK_S", "0", "NEXTBEST_JOURNEY_TICK_S must be > 0, got 0.0"),
    ("NEXTBEST_REPLICATION_FACTOR", "0", "NEXTBEST_REPLICATION_FACTOR must be >= 1, got 0"),
    ("NEXTBEST_POLICY", "bogus", "NEXTBEST_POLICY must be one of rules, promotion, got 'bogus'"),
    ("NEXTBEST_LOG_LEVEL", "loud", "NEXTBEST_LOG_LEVEL must be one of debug, info, warn, "),
    ("NEXTBEST_BROKER_URL", "localhost:9092", "NEXTBEST_BROKER_URL must look like kafka://"),
    ("NEXTBEST_SECURITY_PROTOCOL", "TLS", "unknown NEXTBEST_SECURITY_PROTOCOL 'TLS'"),
    ("NEXTBEST_PROMO_EXPERIMENT", "[1]", "NEXTBEST_PROMO_EXPERIMENT: expected a JSON object"),
    ("NEXTBEST_API_TOKENS", "shop-a=short", "NEXTBEST_API_TOKENS must look like"),
    ("NEXTBEST_API_ADMIN_TOKEN", "admin", "NEXTBEST_API_ADMIN_TOKEN must be at least 16"),
]


@pytest.mark.parametrize(("name", "raw", "message"), BAD_VALUES)
def test_a_bad_variable_raises_a_settings_error_naming_it(name, raw, message):
    with pytest.raises(SettingsError) as info:
        Settings.from_env({name: raw})
    assert info.value.variable == name and message in str(info.value)
    assert "\n" not in str(info.value)


def bounded_fields() -> list[tuple[str, dict]]:
    return [
        (f.name, f.metadata["bounds"])
        for f in fields(Settings)
        if any(v is not None for v in f.metadata.get("bounds", {}).values())
    ]


@pytest.mark.parametrize(("name", "bounds"), bounded_fields())
def test_every_bound_is_enforced_at_its_edge(name, bounds):
    """Each bound: its edge value is accepted, the first value past it refused."""
    variable = env_name(name)
    edges = []  # (accepted, refused)
    if bounds["minimum"] is not None:
        edges.append((bounds["minimum"], bounds["minimum"] - 1))
    if bounds["above"] is not None:
        edges.append((bounds["above"] + 1, bounds["above"]))
    if bounds["maximum"] is not None:
        edges.append((bounds["maximum"], bounds["maximum"] + 1))
    for accepted, refused in edges:
        assert getattr(Settings.from_env({variable: str(accepted)}), name) == accepted
        with pytest.raises(SettingsError, match=f"^{variable} must be ") as info:
            Settings.from_env({variable: str(refused)})
        assert info.value.variable == variable


def test_the_sizes_and_durations_are_bounded():
    names = {name for name, _ in bounded_fields()}
    assert {"batch_size", "batch_window_s", "max_event_bytes", "partitions", "web_port"} <= names
    assert {"journey_lateness_s", "model_top_k", "promo_horizon_weeks"} <= names


@pytest.mark.parametrize("level", [*LOG_LEVELS, "INFO", "Warn"])
def test_log_levels_accepted(level):
    assert Settings.from_env({"NEXTBEST_LOG_LEVEL": level}).log_level == level


def test_secrets_stay_out_of_the_repr():
    settings = Settings(
        sasl_username="worker",
        sasl_password="s3cret-sasl",
        api_tokens="shop-a=aaaaaaaaaaaaaaaa1",
        api_ingest_tokens="shop-a=iiiiiiiiiiiiiiii1",
        api_read_tokens="shop-a=rrrrrrrrrrrrrrrr1",
        api_train_tokens="shop-a=tttttttttttttttt1",
        api_admin_token="admin-token-0123456789",
    )
    text = repr(settings)
    secrets = ("s3cret-sasl", "aaaaaaaaaaaaaaaa1", "admin-token-0123456789")
    for secret in (*secrets, "iiiiiiiiiiiiiiii1", "rrrrrrrrrrrrrrrr1", "tttttttttttttttt1"):
        assert secret not in text and secret not in str(settings)
    assert "sasl_password='***'" in text and "api_admin_token='***'" in text
    assert "sasl_username='worker'" in text and "batch_size=500" in text
    assert "api_tokens=''" in repr(Settings())  # an unset secret shows as unset
    secret_fields = {f.name for f in fields(Settings) if f.metadata.get("secret")}
    assert secret_fields == {
        "sasl_password",
        "api_tokens",
        "api_ingest_tokens",
        "api_read_tokens",
        "api_train_tokens",
        "api_admin_token",
    }


def test_repr_lists_every_field_like_the_dataclass_repr():
    text = repr(Settings())
    assert text.startswith("Settings(broker_url='kafka://127.0.0.1:9092', ")
    assert all(f"{f.name}=" in text for f in fields(Settings))
    assert text.endswith(f"topics={Topics()!r})")


def nextbest(args: list[str], **variables: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXTBEST_")}
    script = Path(sys.executable).with_name("nextbest")
    return subprocess.run(
        [str(script), *args],
        env={**env, **variables},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("args", "variable", "raw"),
    [
        (["worker"], "NEXTBEST_BATCH_SIZE", "abc"),
        (["worker"], "NEXTBEST_POLICY", "bogus"),
        (["topics"], "NEXTBEST_PARTITIONS", "-3"),
        (["import-endpoints", "missing.csv", "--merchant", "m", "--out", "/nonexistent/x.jsonl"],
         "NEXTBEST_MAX_EVENT_BYTES", "0"),
    ],
)  # fmt: skip
def test_the_cli_exits_2_with_one_line_on_a_bad_variable(args, variable, raw):
    done = nextbest(args, **{variable: raw})
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"nextbest: {variable}")
    assert "Traceback" not in done.stderr and done.stdout == ""
