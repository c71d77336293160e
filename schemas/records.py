"""The output records more than one producer writes, as the dicts that go on the topics
(plain Python, no Faust; their contracts are the Records in ``schemas.events``).

Each builder writes its fields in one fixed order, so a record is the same bytes whoever
builds it; times are epoch seconds, written with `schemas.keys.iso`.
"""

from __future__ import annotations

import base64

from schemas.keys import iso

SCHEMA_VERSION = 1


def promotion_record(
    *,
    offer_id: str,
    merchant_id: str,
    customer_id: str | None,
    session_id: str | None,
    cart_event_id: str,
    event_time: float,
    decided_at: float,
    offer_type: str,
    promotion_id: str,
    message: str,
    cart_value: float,
    currency: str,
    policy: str,
    reason: str,
    percent_off: float | None,
    amount_to_next_tier: float | None,
    recommendations: list[str],
    max_discount: float | None = None,
    coupon_product_id: str | None = None,
) -> dict:
    """A ``PromotionEvent`` (topic ``promotions``), deduplicated on its offer id;
    ``max_discount`` and ``coupon_product_id`` are written only when set."""
    record = {
        "schema_version": SCHEMA_VERSION,
        "offer_id": offer_id,
        "dedupe_key": offer_id,
        "merchant_id": merchant_id,
        "customer_id": customer_id,
        "session_id": session_id,
        "cart_event_id": cart_event_id,
        "event_time": iso(event_time),
        "decided_at": iso(decided_at),
        "offer_type": offer_type,
        "promotion_id": promotion_id,
        "message": message,
        "cart_value": cart_value,
        "currency": currency,
        "policy": policy,
        "reason": reason,
        "percent_off": percent_off,
        "amount_to_next_tier": amount_to_next_tier,
        "recommendations": recommendations,
    }
    if max_discount is not None:
        record["max_discount"] = max_discount
    if coupon_product_id is not None:
        record["coupon_product_id"] = coupon_product_id
    return record


def notification_record(
    *,
    dedupe_key: str,
    merchant_id: str,
    customer_id: str,
    channel: str,
    address: str,
    title: str,
    body: str,
    offer_id: str,
    promotion_id: str | None,
    created_at: float,
    source: str | None = None,
    journey_step: str | None = None,
    products: list[str] | None = None,
) -> dict:
    """A ``NotificationEvent`` (topic ``notifications``); its id is its dedupe key. A journey's
    message names its ``source`` (the journey), ``journey_step`` and ``products``; a cart
    offer's leaves all three out (the schema's defaults: source ``offer``)."""
    record = {
        "schema_version": SCHEMA_VERSION,
        "notification_id": dedupe_key,
        "dedupe_key": dedupe_key,
        "merchant_id": merchant_id,
        "customer_id": customer_id,
        "channel": channel,
        "address": address,
        "title": title,
        "body": body,
        "offer_id": offer_id,
        "promotion_id": promotion_id,
        "created_at": iso(created_at),
    }
    if source is not None:
        record.update(source=source, journey_step=journey_step, products=products)
    return record


def dead_letter_record(
    *,
    reason: str,
    error: str,
    source_topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    received_at: float,
    payload: bytes | None,
) -> dict:
    """A ``DeadLetter`` (topic ``dead-letters``): the input kept whole, as UTF-8 text when it
    is, else base64."""
    raw = payload or b""
    try:
        text, encoding = raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(raw).decode(), "base64"
    return {
        "reason": reason,
        "error": error,
        "source_topic": source_topic,
        "partition": partition,
        "offset": offset,
        "key": key.decode("utf-8", "replace") if key else None,
        "received_at": iso(received_at),
        "payload": text,
        "payload_encoding": encoding,
    }
