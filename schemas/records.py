"""The output records more than one producer writes, as the dicts that go on the topics
(plain Python, no Faust; their contracts are the Records in ``schemas.events``).

Each builder writes its fields in one fixed order, so a record is the same bytes whoever
builds it; times are epoch seconds, written with `schemas.keys.iso`.
"""

from __future__ import annotations

import base64
import hashlib

import orjson

from schemas.keys import iso

SCHEMA_VERSION = 1
#: How much of a payload (and of its key and error) a dead letter too large to send keeps
EXCERPT_BYTES = 4096


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
    recommendation_sources: list[str] | None = None,
) -> dict:
    """A ``PromotionEvent`` (topic ``promotions``), deduplicated on its offer id;
    ``max_discount``, ``coupon_product_id`` and ``recommendation_sources`` are written only
    when set."""
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
    if recommendation_sources:
        record["recommendation_sources"] = recommendation_sources
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
    max_bytes: int | None = None,
) -> dict:
    """A ``DeadLetter`` (topic ``dead-letters``): the input kept whole, as UTF-8 text when it
    is, else base64, with its length and SHA-256. A letter whose JSON would be over
    ``max_bytes`` keeps the first `EXCERPT_BYTES` of the payload (and of the key and error)
    instead, with ``payload_truncated``."""
    raw = payload or b""
    text, encoding = _payload_text(raw)
    letter = {
        "reason": reason,
        "error": error,
        "source_topic": source_topic,
        "partition": partition,
        "offset": offset,
        "key": key.decode("utf-8", "replace") if key else None,
        "received_at": iso(received_at),
        "payload": text,
        "payload_encoding": encoding,
        "payload_bytes": len(raw),
        "payload_sha256": hashlib.sha256(raw).hexdigest(),
        "payload_truncated": False,
    }
    if max_bytes is not None and len(orjson.dumps(letter)) > max_bytes:
        letter.update(
            error=error[:EXCERPT_BYTES],
            key=key[:EXCERPT_BYTES].decode("utf-8", "replace") if key else None,
            payload=_payload_text(raw, EXCERPT_BYTES)[0],
            payload_truncated=True,
        )
    return letter


def _payload_text(raw: bytes, limit: int | None = None) -> tuple[str, str]:
    """(text, encoding) of the payload's first ``limit`` bytes (all: None): UTF-8 when the
    whole payload is (an excerpt that ends inside a character leaves it out), else base64."""
    kept = raw if limit is None else raw[:limit]
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(kept).decode(), "base64"
    return kept.decode("utf-8", "ignore"), "utf-8"
