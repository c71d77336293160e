"""Merchant configs that cannot be silently wrong: unknown keys and bad values fail with the
field path, the published JSON Schema of catalog records agrees with the model, the
``nextbest catalog`` command, and bad catalog-topic records dead-lettered by the watcher."""

from __future__ import annotations

import copy
import json
import time
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
import yaml
from jsonschema import Draft202012Validator

from agents.tools.catalog import (
    CATALOG_SCHEMA,
    catalog_records,
    read_catalog,
    stale_catalog_schema,
)
from agents.tools.cli import main
from schemas.json_schema import render
from streams.merchants.catalog import (
    DEFAULT_MERCHANTS,
    CatalogError,
    MerchantConfig,
    catalog_record_schema,
    load_merchants,
    parse_merchant,
)

REPO = Path(__file__).resolve().parents[1]
DEPLOY_MERCHANTS = REPO / "deploy" / "merchants.yaml"
SCHEMA = Draft202012Validator(json.loads(CATALOG_SCHEMA.read_text()))

FULL = {
    "name": "Full shop",
    "currency": "EUR",
    "shipping_cost": 4.5,
    "nudge_max_gap": 10,
    "frequency_cap": {"max_messages": 3, "period_hours": 12},
    "channel_order": ["email", "push"],
    "margin_rate": 0.4,
    "min_margin_rate": 0.1,
    "offer_ttl_hours": 24,
    "deep_discount_depth": 0.2,
    "deep_discount_cost": 0.05,
    "product_pattern": "^SKU-",
    "delivery": {
        "quiet_hours": {"start": "22:00", "end": 420, "channels": ["sms"]},
        "time_zones": ["Europe/Paris"],
    },
    "journeys": {
        "abandoned_cart": {"after_minutes": 30, "message": "Still want {items}?"},
        "replenishment": {"min_orders": 4, "lead_days": 1, "min_interval_days": 5},
        "follow_up": {"trigger": "order", "first": "email", "wait_days": 2},
    },
    "training": {"data": "/data/interactions.csv", "format": "interactions"},
    "promotions": [
        {
            "id": "p10",
            "type": "percent_off",
            "percent": 10,
            "min_spend": 100,
            "valid_from": "2011-11-01T00:00:00Z",
            "valid_to": "2011-12-01T00:00:00+01:00",
            "budget": 500,
            "max_discount": 40,
            "max_per_customer": 2,
            "per_customer_days": 30,
            "group": "percent",
            "title": "10% off",
        },
        {"id": "fs", "type": "free_shipping", "min_spend": 50, "exclusive": True},
        {"id": "coupon", "type": "product_coupon", "percent": 20},
    ],
}


def changed(path: str, value: object) -> dict:
    """FULL with ``value`` at ``path`` (dots; numbers index lists)."""
    config = copy.deepcopy(FULL)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node = config
    for part in parents:
        node = node[part]
    node[last] = value
    return config


def errors_of(config: object) -> list[str]:
    with pytest.raises(CatalogError) as info:
        parse_merchant("shop", config)
    return list(info.value.errors)


def schema_accepts(record: object) -> bool:
    return SCHEMA.is_valid(record)


# --- unknown keys, at every level -----------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("promotion", "merchants.shop.promotion: unknown field (did you mean 'promotions'?)"),
        ("promotions.0.min_spnd", "merchants.shop.promotions[0].min_spnd: unknown field"),
        ("promotions.2.percnt", "merchants.shop.promotions[2].percnt: unknown field"),
        ("frequency_cap.max_message", "merchants.shop.frequency_cap.max_message: unknown field"),
        ("delivery.quiet_hour", "merchants.shop.delivery.quiet_hour: unknown field"),
        ("delivery.quiet_hours.stop", "merchants.shop.delivery.quiet_hours.stop: unknown field"),
        ("journeys.abandoned_cart.after", "journeys.abandoned_cart.after: unknown field"),
        ("journeys.replenishment.lead", "journeys.replenishment.lead: unknown field"),
        ("journeys.follow_up.wait", "merchants.shop.journeys.follow_up.wait: unknown field"),
        ("journeys.abandoned", "merchants.shop.journeys: unknown journey(s) ['abandoned']"),
        ("training.file", "merchants.shop.training.file: unknown field"),
    ],
)
def test_an_unknown_key_anywhere_is_an_error_naming_its_path(path, message):
    config = changed(path, 60)
    assert any(message in e for e in errors_of(config)), errors_of(config)
    assert not schema_accepts(config)


def test_a_misspelled_key_suggests_the_field():
    (error,) = errors_of(changed("promotions.0.min_spnd", 60))
    assert error == (
        "merchants.shop.promotions[0].min_spnd: unknown field (did you mean 'min_spend'?)"
    )


def test_misspelled_min_spend_no_longer_gives_free_shipping_from_zero(tmp_path):
    """The issue's case: ``min_spnd: 60`` was ignored, so free shipping applied to every cart."""
    path = tmp_path / "merchants.yaml"
    path.write_text(
        "merchants:\n  uci-gift-shop:\n    currency: GBP\n    promotions:\n"
        "      - {id: free-shipping-60, type: free_shipping, min_spnd: 60}\n"
    )
    with pytest.raises(CatalogError, match=r"merchants\.uci-gift-shop\.promotions\[0\]\.min_spnd"):
        load_merchants(path)


def test_every_error_of_every_merchant_is_reported_at_once(tmp_path):
    path = tmp_path / "merchants.yaml"
    path.write_text(
        "merchants:\n"
        "  a: {currency: gbp, shipping_cost: -1}\n"
        "  b: {currency: EUR, promotion: []}\n"
        "  c: {currency: USD}\n"
    )
    with pytest.raises(CatalogError) as info:
        load_merchants(path)
    assert [e.split(":")[0] for e in info.value.errors] == [
        "merchants.a.currency",
        "merchants.a.shipping_cost",
        "merchants.b.promotion",
    ]


def test_unknown_top_level_key_of_the_merchants_file(tmp_path):
    path = tmp_path / "merchants.yaml"
    path.write_text("merchants: {a: {currency: GBP}}\nmerchant: {}\n")
    with pytest.raises(CatalogError, match="merchant: unknown field"):
        load_merchants(path)


# --- values: currency, numbers, dates, enums ------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("currency", "gbp", "merchants.shop.currency: expected a 3-letter currency code"),
        ("currency", "GBPX", "merchants.shop.currency: expected a 3-letter currency code"),
        ("currency", "G1P", "merchants.shop.currency: expected a 3-letter currency code"),
        ("shipping_cost", -1, "merchants.shop.shipping_cost: expected a number >= 0, got -1"),
        ("shipping_cost", "4.5", "merchants.shop.shipping_cost: expected a number, got '4.5'"),
        ("shipping_cost", float("nan"), "merchants.shop.shipping_cost: expected a finite"),
        ("nudge_max_gap", True, "merchants.shop.nudge_max_gap: expected a number, got True"),
        ("margin_rate", 1.2, "merchants.shop.margin_rate: expected a number <= 1, got 1.2"),
        ("offer_ttl_hours", 0, "merchants.shop.offer_ttl_hours: expected a number > 0, got 0"),
        ("frequency_cap.max_messages", 2.5, "frequency_cap.max_messages: expected an integer"),
        ("frequency_cap.max_messages", 21, "frequency_cap.max_messages: at most 20"),
        ("channel_order.1", "fax", "merchants.shop.channel_order[1]: must be one of"),
        ("promotions.0.type", "bogo", "merchants.shop.promotions[0].type: must be one of"),
        ("promotions.0.percent", 0, "promotions[0].percent: must be between 0 and 100 for"),
        ("promotions.0.percent", 101, "promotions[0].percent: expected a number <= 100"),
        ("promotions.0.valid_from", "soon", "promotions[0].valid_from: not an ISO 8601 time"),
        ("promotions.0.valid_from", 1320105600, "promotions[0].valid_from: not an ISO 8601"),
        ("promotions.0.valid_to", "2011-12-25T00:00:00", "promotions[0].valid_to: needs a UTC"),
        ("promotions.0.max_per_customer", 0, "promotions[0].max_per_customer: expected a"),
        ("delivery.quiet_hours.start", "25:00", "delivery.quiet_hours.start: expected a local"),
        ("delivery.time_zones", [], "merchants.shop.delivery.time_zones: expected at least 1"),
        ("delivery.time_zones.0", "Mars/Base", "delivery.time_zones[0]: unknown time zone"),
        ("journeys.replenishment.min_orders", 2, "replenishment.min_orders: expected a number"),
        ("journeys.follow_up.trigger", "birthday", "journeys.follow_up.trigger: must be one of"),
        ("training.format", "parquet", "merchants.shop.training.format: must be one of"),
        ("product_pattern", "(", "merchants.shop.product_pattern: '(' is not a valid regular"),
    ],
)
def test_bad_values_name_the_field(path, value, message):
    errors = errors_of(changed(path, value))
    assert any(message in e for e in errors), errors


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("currency", "gbp"),
        ("shipping_cost", -1),
        ("shipping_cost", "4.5"),
        ("nudge_max_gap", True),
        ("margin_rate", 1.2),
        ("frequency_cap.max_messages", 21),
        ("channel_order.1", "fax"),
        ("promotions.0.type", "bogo"),
        ("promotions.0.percent", 101),
        ("promotions.0.max_per_customer", 0),
        ("delivery.time_zones", []),
        ("journeys.replenishment.min_orders", 2),
        ("training.format", "parquet"),
        ("promotions", {"id": "x"}),
    ],
)
def test_the_json_schema_rejects_what_the_model_rejects(path, value):
    config = changed(path, value)
    errors_of(config)
    assert not schema_accepts(config)


def test_the_lowercase_currency_is_no_longer_upper_cased_silently():
    assert parse_merchant("m", {"currency": "GBP"}).currency == "GBP"
    with pytest.raises(CatalogError, match=r"merchants\.m\.currency: .*got 'gbp'"):
        parse_merchant("m", {"currency": "gbp"})


# --- the shipped files and the JSON Schema --------------------------------------------------


@pytest.mark.parametrize("path", [DEFAULT_MERCHANTS, DEPLOY_MERCHANTS])
def test_the_shipped_merchants_files_validate_and_their_records_fit_the_schema(path):
    merchants = read_catalog(path)
    assert "uci-gift-shop" in merchants and set(load_merchants(path)) == set(merchants)
    raw = yaml.safe_load(path.read_text())["merchants"]
    for merchant_id, record in catalog_records(merchants).items():
        value = orjson.loads(record)
        assert schema_accepts(value)
        # the published record means the same as the file's entry
        assert parse_merchant(merchant_id, value) == parse_merchant(merchant_id, raw[merchant_id])


@pytest.mark.parametrize(
    "config",
    [
        FULL,
        {"currency": "GBP"},
        {"currency": "USD", "journeys": {"abandoned_cart": None}, "product_pattern": None},
        changed("delivery.quiet_hours.start", 1260),
    ],
)
def test_the_json_schema_accepts_every_valid_record(config):
    parse_merchant("shop", config)
    assert schema_accepts(config)
    (record,) = catalog_records({"shop": MerchantConfig.model_validate(config)}).values()
    assert schema_accepts(orjson.loads(record))


def test_the_committed_catalog_schema_is_current_and_valid():
    """Drift test: run ``nextbest schemas`` after changing the merchant models."""
    assert stale_catalog_schema() == []
    assert CATALOG_SCHEMA.read_text() == render(catalog_record_schema())
    Draft202012Validator.check_schema(catalog_record_schema())


# --- nextbest catalog validate ---------------------------------------------------------------


def test_catalog_validate_a_merchants_file(capsys):
    assert main(["catalog", "validate", str(DEFAULT_MERCHANTS)]) == 0
    assert "OK" in capsys.readouterr().out


def test_catalog_validate_reports_every_error_and_exits_1(tmp_path, capsys):
    path = tmp_path / "merchants.yaml"
    path.write_text(
        "merchants:\n  shop:\n    currency: gbp\n    promotions:\n"
        "      - {id: fs, type: free_shipping, min_spnd: 60}\n"
    )
    assert main(["catalog", "validate", str(path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2
    assert err[0].startswith(f"{path}: merchants.shop.currency: expected a 3-letter")
    assert err[1].startswith(f"{path}: merchants.shop.promotions[0].min_spnd: unknown field")


def test_catalog_validate_a_single_record(tmp_path, capsys):
    record = tmp_path / "my-shop.json"
    record.write_text(json.dumps(FULL))
    assert main(["catalog", "validate", str(record)]) == 0
    assert "my-shop" in capsys.readouterr().out
    record.write_text(json.dumps(changed("promotions.1.min_spnd", 60)))
    assert main(["catalog", "validate", str(record), "--merchant", "other"]) == 1
    assert "merchants.other.promotions[1].min_spnd: unknown field" in capsys.readouterr().err
    record.write_text("{not json")
    assert main(["catalog", "validate", str(record)]) == 1


def test_catalog_push_publishes_nothing_when_invalid(tmp_path, capsys):
    record = tmp_path / "shop.json"
    record.write_text(json.dumps({"currency": "eur"}))
    assert main(["catalog", "push", str(record)]) == 1  # no broker needed: nothing produced
    assert "currency" in capsys.readouterr().err
    assert main(["catalog", "push"]) == 2


# --- the catalog watcher on the embedded broker ----------------------------------------------


@pytest.mark.integration
def test_a_bad_catalog_update_is_dead_lettered_and_the_good_one_stays(tmp_path, monkeypatch):
    from agents.catalog_updates import CatalogWatcher
    from agents.runtime.settings import Settings
    from agents.runtime.topics import ensure_topics
    from agents.tools.broker import EmbeddedBroker
    from streams.merchants.catalog import MerchantRegistry

    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        settings = replace(
            Settings.from_env({}), broker_url=broker.url, embedded_broker=True, partitions=2
        )
        ensure_topics(settings)
        for name, value in settings.to_env().items():
            monkeypatch.setenv(name, value)
        good = tmp_path / "new-shop.json"
        good.write_text(json.dumps(FULL))
        assert main(["catalog", "push", str(good)]) == 0

        registry = MerchantRegistry(load_merchants(DEFAULT_MERCHANTS))
        watcher = CatalogWatcher(settings, registry)
        watcher.start()
        try:
            wait_for(lambda: "new-shop" in registry)
            good_promotions = registry.get("new-shop").promotions
            assert [p.id for p in good_promotions] == ["p10", "fs"]

            # a bad record reaches the topic (pushed by another tool: push itself refuses it)
            bad = orjson.dumps(changed("promotions.0.min_spnd", 0))
            send_raw(settings, b"new-shop", bad)
            [letter] = read_dead_letters(settings, 1)
            assert letter["reason"] == "invalid_catalog"
            assert "merchants.new-shop.promotions[0].min_spnd: unknown field" in letter["error"]
            assert (letter["source_topic"], letter["partition"], letter["offset"]) == (
                settings.topics.catalog,
                0,
                1,
            )
            assert letter["key"] == "new-shop" and orjson.loads(letter["payload"]) == orjson.loads(
                bad
            )
            assert registry.get("new-shop").promotions == good_promotions

            assert main(["catalog", "push", "--delete", "new-shop"]) == 0
            wait_for(lambda: "new-shop" not in registry)
        finally:
            watcher.stop()
            watcher.join(10)

        # a restarted watcher rereads the topic: the bad record is not dead-lettered twice
        send_raw(settings, b"last-shop", orjson.dumps({"currency": "GBP"}))
        reread = MerchantRegistry({})
        again = CatalogWatcher(settings, reread)
        again.start()
        try:
            wait_for(lambda: "last-shop" in reread)  # read past the bad record
            assert "new-shop" not in reread
        finally:
            again.stop()
            again.join(10)
        assert len(read_dead_letters(settings, 1)) == 1


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def send_raw(settings, key: bytes, value: bytes) -> None:
    from confluent_kafka import Producer

    from agents.tools.replay import producer_config

    producer = Producer(producer_config(settings))
    producer.produce(settings.topics.catalog, key=key, value=value)
    assert producer.flush(10) == 0


def read_dead_letters(settings, count: int, timeout: float = 20.0) -> list[dict]:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    topic = settings.topics.dead_letters
    consumer = Consumer({**settings.kafka_client_config(), "group.id": "test-dead-letters"})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    letters: list[dict] = []
    deadline = time.monotonic() + timeout
    quiet = 0
    while time.monotonic() < deadline and (len(letters) < count or quiet < 5):
        batch = [m for m in consumer.consume(100, 0.3) if not m.error()]
        letters.extend(orjson.loads(m.value()) for m in batch)
        quiet = 0 if batch else quiet + 1
    consumer.close()
    return letters
