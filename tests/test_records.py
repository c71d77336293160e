"""Output records built by more than one producer (`schemas.records`): fixed field order, so the
same bytes whoever builds them, and valid against the published JSON Schemas."""

from __future__ import annotations

import json

import orjson
import pytest
from jsonschema import Draft202012Validator

from schemas.json_schema import JSON_DIR
from schemas.records import (
    SCHEMA_VERSION,
    dead_letter_record,
    notification_record,
    promotion_record,
)

T0 = 1321264800.0  # 2011-11-14T10:00:00Z


def valid(kind: str, record: dict) -> bool:
    schema = json.loads((JSON_DIR / f"{kind}.v{SCHEMA_VERSION}.json").read_text())
    return Draft202012Validator(schema).is_valid(record)


def test_a_cart_offers_notification_leaves_the_journey_fields_out():
    record = notification_record(
        dedupe_key="k1",
        merchant_id="shop",
        customer_id="c1",
        channel="push",
        address="tok-1",
        title="Shop",
        body="10% off",
        offer_id="o1",
        promotion_id="p10",
        created_at=T0,
    )
    assert orjson.dumps(record) == (
        b'{"schema_version":1,"notification_id":"k1","dedupe_key":"k1","merchant_id":"shop",'
        b'"customer_id":"c1","channel":"push","address":"tok-1","title":"Shop","body":"10% off",'
        b'"offer_id":"o1","promotion_id":"p10","created_at":"2011-11-14T10:00:00Z"}'
    )
    assert valid("notifications", record)


def test_a_journey_notification_names_its_journey_step_and_products():
    journey = {
        "dedupe_key": "k2",
        "merchant_id": "shop",
        "customer_id": "c1",
        "channel": "email",
        "address": "a@b.c",
        "title": "Shop",
        "body": "Thank you for your order!",
        "offer_id": "k2",
        "promotion_id": None,
        "created_at": T0,
        "source": "follow_up",
        "journey_step": "first",
    }
    record = notification_record(**journey)
    assert list(record)[-4:] == ["created_at", "source", "journey_step", "products"]
    assert record["products"] is None and valid("notifications", record)
    refill = notification_record(**journey, products=["85123A"])
    assert refill["products"] == ["85123A"] and valid("notifications", refill)


@pytest.mark.parametrize(
    ("extra", "tail"),
    [
        ({}, "recommendations"),
        ({"max_discount": 5.0, "coupon_product_id": "85123A"}, "coupon_product_id"),
        ({"recommendation_sources": []}, "recommendations"),
        (
            {
                "recommendations": ["22697", "85123A"],
                "recommendation_sources": ["bought_together", "next_purchase"],
            },
            "recommendation_sources",
        ),
    ],
)
def test_a_promotion_record_writes_the_optional_fields_only_when_set(extra, tail):
    record = promotion_record(
        offer_id="o1",
        merchant_id="shop",
        customer_id=None,
        session_id="s1",
        cart_event_id="e1",
        event_time=T0,
        decided_at=T0 + 0.5,
        offer_type="percent_off",
        promotion_id="p10",
        message="10% off",
        cart_value=70,
        currency="GBP",
        policy="rules",
        reason="tier",
        percent_off=10.0,
        amount_to_next_tier=None,
        **{"recommendations": [], **extra},
    )
    assert record["dedupe_key"] == record["offer_id"] == "o1"
    assert record["decided_at"] == "2011-11-14T10:00:00.500000Z"
    assert list(record)[-1] == tail and record["cart_value"] == 70
    assert valid("promotions", record)


def test_a_dead_letter_keeps_the_payload_as_text_or_base64():
    text = dead_letter_record(
        reason="invalid_json",
        error="bad",
        source_topic="cart",
        partition=2,
        offset=7,
        key=b"shop:c:1",
        received_at=T0,
        payload=b"{not json",
    )
    assert (text["payload"], text["payload_encoding"], text["key"]) == (
        "{not json",
        "utf-8",
        "shop:c:1",
    )
    binary = dead_letter_record(
        reason="invalid_json",
        error="bad",
        source_topic="cart",
        partition=2,
        offset=8,
        key=None,
        received_at=T0,
        payload=b"\xff\x00",
    )
    assert (binary["payload"], binary["payload_encoding"], binary["key"]) == (
        "/wA=",
        "base64",
        None,
    )
    empty = dead_letter_record(
        reason="empty",
        error="",
        source_topic="cart",
        partition=0,
        offset=0,
        key=b"",
        received_at=T0,
        payload=None,
    )
    assert (empty["payload"], empty["key"]) == ("", None)
    assert all(valid("dead-letters", r) for r in (text, binary, empty))
