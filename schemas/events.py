"""Event contracts, version 1: the Faust Records every producer and consumer agrees on.

These classes are the single source of truth. ``schemas.validation`` compiles a fast
validator from them for the hot path and ``schemas.jsonschema`` generates the JSON Schema
files in ``schemas/json/`` for producers that are not written in Python.

Every input event carries ``merchant_id``, a ``customer_id`` and/or ``session_id`` (anonymous
visitor), an ``event_id`` (unique per merchant; reused on retries so replays deduplicate) and an
``event_time`` (ISO 8601 with a UTC offset, e.g. ``2011-12-09T12:50:00Z``).
"""

from __future__ import annotations

from typing import Literal

import faust

ClickType = Literal["page_view", "product_view", "category_view", "search"]
CartType = Literal["cart_add", "cart_remove", "cart_quantity", "cart_clear", "checkout"]
OrderType = Literal["order", "order_cancel"]
ProfileType = Literal["profile"]
FeedbackType = Literal[
    "offer_delivered", "offer_opened", "offer_clicked", "offer_redeemed", "offer_dismissed"
]
Channel = Literal["push", "email", "sms", "in_app"]
OfferType = Literal["free_shipping", "percent_off", "threshold_nudge", "product_coupon"]
ActionKind = Literal["none", "free_shipping", "percent_off", "threshold_nudge", "product_coupon"]


class Line(faust.Record, serializer="json"):
    """One product line of a cart or an order."""

    product_id: str
    quantity: int
    unit_price: float
    description: str | None = None


class Event(faust.Record, abstract=True, serializer="json"):
    """Fields shared by every input event."""

    schema_version: int
    event_id: str
    merchant_id: str
    event_time: str
    customer_id: str | None = None
    session_id: str | None = None


class ClickEvent(Event, serializer="json"):
    """A page, product, category or search view (topic ``clickstream``)."""

    event_type: ClickType
    page: str | None = None
    product_id: str | None = None
    category: str | None = None
    query: str | None = None


class CartEvent(Event, serializer="json"):
    """A cart change (topic ``cart``).

    ``lines`` holds the lines the change touched: the added line (cart_add), the quantity
    removed (cart_remove), the line's new quantity (cart_quantity, 0 removes it); checkout may
    list the whole cart and cart_clear none. ``cart_value`` is the cart's total *after* it.
    """

    event_type: CartType
    lines: list[Line]
    cart_value: float
    currency: str


class OrderEvent(Event, serializer="json"):
    """A placed order, or a cancellation of (part of) one (topic ``orders``)."""

    event_type: OrderType
    order_id: str
    lines: list[Line]
    total: float
    currency: str


class ChannelConsent(faust.Record, serializer="json"):
    """Addresses the customer consented to be messaged on; absent means no consent."""

    email: str | None = None
    sms: str | None = None
    push: str | None = None
    in_app: bool = False


class ProfileEvent(Event, serializer="json"):
    """Customer profile and consent (topic ``profiles``). ``opted_out`` stops all messages."""

    event_type: ProfileType
    channels: ChannelConsent
    preferred_channel: Channel | None = None
    time_zone: str | None = None
    opted_out: bool = False


class FeedbackEvent(Event, serializer="json"):
    """What happened to an offer we sent (topic ``offer-feedback``)."""

    event_type: FeedbackType
    offer_id: str
    notification_id: str | None = None


class PromotionEvent(faust.Record, serializer="json"):
    """Output (topic ``promotions``): the offer chosen for a cart change."""

    schema_version: int
    offer_id: str
    dedupe_key: str
    merchant_id: str
    cart_event_id: str
    event_time: str
    decided_at: str
    offer_type: OfferType
    promotion_id: str
    message: str
    cart_value: float
    currency: str
    policy: str
    reason: str
    customer_id: str | None = None
    session_id: str | None = None
    percent_off: float | None = None
    amount_to_next_tier: float | None = None
    recommendations: list[str] | None = None
    #: Next-purchase model outputs (absent when the worker runs rules only): the top predicted
    #: product not in the cart as a product-coupon candidate with its probability, the
    #: probability that the customer's next pick is one of ``recommendations``, and the model.
    coupon_product_id: str | None = None
    coupon_probability: float | None = None
    purchase_propensity: float | None = None
    model_version: str | None = None
    #: Promotion policy: the most this offer's discount may be (what its budget reserved).
    max_discount: float | None = None


class NotificationEvent(faust.Record, serializer="json"):
    """Output (topic ``notifications``): a message to deliver. Deduplicate on ``dedupe_key``."""

    schema_version: int
    notification_id: str
    dedupe_key: str
    merchant_id: str
    customer_id: str
    channel: Channel
    address: str
    title: str
    body: str
    offer_id: str  # the offer carried; for a journey message without one, the notification id
    created_at: str
    promotion_id: str | None = None  # None: a journey message that carries no offer
    #: What sent it: "offer" (a cart offer) or a journey ("abandoned_cart", "replenishment",
    #: "follow_up") with its step ("remind", "first", "opened", "not_opened").
    source: str = "offer"
    journey_step: str | None = None
    products: list[str] | None = None  # products the message is about (replenishment)


class DeadLetter(faust.Record, serializer="json"):
    """Output (topic ``dead-letters``): an input we could not use, kept whole with its origin,
    its length in bytes and SHA-256 (hex). One too large for the broker keeps the first 4 KiB
    of the payload, key and error instead, with ``payload_truncated``."""

    reason: str
    error: str
    source_topic: str
    partition: int
    offset: int
    received_at: str
    payload: str
    payload_encoding: Literal["utf-8", "base64"]
    key: str | None = None
    payload_bytes: int | None = None
    payload_sha256: str | None = None
    payload_truncated: bool = False


class ActionOption(faust.Record, serializer="json"):
    """One action the policy could take for a cart, with the probability it had of being chosen
    and its economics (basket value if bought with it, discount the shop pays)."""

    action: str
    action_kind: ActionKind
    probability: float
    basket: float
    discount: float


class DecisionRecord(faust.Record, serializer="json"):
    """Output (topic ``decisions``): one promotion-policy decision for a cart, holdout and
    no-offer decisions included. ``action`` was chosen with probability ``propensity`` by
    ``policy`` at ``model_version``; ``sent`` is false in the holdout (logged, nothing sent).
    ``features`` are the values of ``feature_set`` (``streams.promotion.features.FEATURE_NAMES``);
    ``options`` every allowed action. Key: the customer key; deduplicate on ``decision_id``."""

    schema_version: int
    decision_id: str
    merchant_id: str
    customer_key: str
    cart_event_id: str
    cart_generation: int
    event_time: str
    cart_value: float
    currency: str
    experiment: str
    arm: str
    policy: str
    model_version: str
    action: str
    action_kind: ActionKind
    propensity: float
    sent: bool
    margin_rate: float
    horizon_margin: float
    repurchase_probability: float
    options: list[ActionOption]
    feature_set: str
    features: list[float]
    promotion_id: str | None = None
    product_id: str | None = None
    offer_id: str | None = None
    max_discount: float | None = None
    guard: str | None = None
    deep_discount_depth: float | None = None  # the merchant's deep-discount premium, as used
    deep_discount_cost: float | None = None  # (None in logs written before it existed)
    record: Literal["decision"] = "decision"


class RewardRecord(faust.Record, serializer="json"):
    """Output (topic ``rewards``): what a decision earned within its attribution window
    (``streams.promotion.rewards``): feedback flags, the attributed order, the discount it cost and
    the
    profit. Repeats the decision's fields the learner needs. ``reason``: ``window_closed``,
    ``superseded`` (a newer decision for the cart; not learned from) or ``evicted``. One per
    ``decision_id``."""

    schema_version: int
    decision_id: str
    merchant_id: str
    customer_key: str
    experiment: str
    arm: str
    policy: str
    model_version: str
    action: str
    action_kind: ActionKind
    propensity: float
    sent: bool
    feature_set: str
    features: list[float]
    event_time: str
    closed_at: str
    reason: Literal["window_closed", "superseded", "evicted"]
    delivered: bool
    opened: bool
    clicked: bool
    redeemed: bool
    dismissed: bool
    purchased: bool
    revenue: float
    gross: float
    discount_cost: float
    profit: float
    promotion_id: str | None = None
    product_id: str | None = None
    offer_id: str | None = None
    max_discount: float | None = None
    order_id: str | None = None
    record: Literal["reward"] = "reward"


INPUT_EVENTS: dict[str, type[Event]] = {
    "clickstream": ClickEvent,
    "cart": CartEvent,
    "orders": OrderEvent,
    "profiles": ProfileEvent,
    "feedback": FeedbackEvent,
}
OUTPUT_EVENTS: dict[str, type[faust.Record]] = {
    "promotions": PromotionEvent,
    "notifications": NotificationEvent,
    "dead_letters": DeadLetter,
    "decisions": DecisionRecord,
    "rewards": RewardRecord,
}

#: Fields a given event type needs beyond its record's required fields.
REQUIRED_BY_TYPE: dict[str, tuple[str, ...]] = {
    "product_view": ("product_id",),
    "category_view": ("category",),
    "search": ("query",),
}
