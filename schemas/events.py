"""Event contracts, version 1: the Faust Records every producer and consumer agrees on.

These classes, with the bounds on their annotations and the per-event-type rules at the end, are
the single source of truth. ``schemas.contract`` reads them into plain specs, from which
``schemas.validation`` compiles a fast validator for the hot path and ``schemas.json_schema``
generates the JSON Schema files in ``schemas/json/`` for producers that are not written in
Python: both enforce the same rules.

Every input event carries ``merchant_id``, a ``customer_id`` and/or ``session_id`` (anonymous
visitor), an ``event_id`` (unique per merchant; reused on retries so replays deduplicate) and an
``event_time`` (ISO 8601 with a UTC offset, e.g. ``2011-12-09T12:50:00Z``).
"""

from __future__ import annotations

from typing import Annotated, Literal

import faust

from schemas.limits import (
    ADDRESS_MAX_LENGTH,
    EVENT_TIME_PATTERN,
    ID_MAX_LENGTH,
    MAX_AMOUNT,
    MAX_LINES,
    MAX_QUANTITY,
    NAME_MAX_LENGTH,
    PRODUCT_ID_MAX_LENGTH,
    TEXT_MAX_LENGTH,
    TIME_ZONE_MAX_LENGTH,
    URL_MAX_LENGTH,
)
from schemas.records import SCHEMA_VERSION
from schemas.spec import Bounds

# Bounded value types of the input contract (``schemas.limits`` has the limits).
Id = Annotated[str, Bounds(min_length=1, max_length=ID_MAX_LENGTH)]
ProductId = Annotated[str, Bounds(min_length=1, max_length=PRODUCT_ID_MAX_LENGTH)]
EventTime = Annotated[
    str,
    Bounds(
        pattern=EVENT_TIME_PATTERN,
        pattern_doc="an RFC 3339 date-time with an offset, years 2000..2099 "
        "(e.g. 2011-12-09T12:50:00Z or 2011-12-09T13:50:00+01:00)",
        format="date-time",
    ),
]
Text = Annotated[str, Bounds(max_length=TEXT_MAX_LENGTH)]
Url = Annotated[str, Bounds(max_length=URL_MAX_LENGTH)]
Name = Annotated[str, Bounds(max_length=NAME_MAX_LENGTH)]
Address = Annotated[str, Bounds(max_length=ADDRESS_MAX_LENGTH)]
TimeZone = Annotated[str, Bounds(max_length=TIME_ZONE_MAX_LENGTH)]
Currency = Annotated[
    str,
    Bounds(min_length=3, max_length=3, pattern="^[A-Za-z]{3}$", pattern_doc="3 letters (ISO 4217)"),
]
Version = Annotated[int, Bounds(minimum=SCHEMA_VERSION, maximum=SCHEMA_VERSION)]
Quantity = Annotated[int, Bounds(minimum=-MAX_QUANTITY, maximum=MAX_QUANTITY)]
Price = Annotated[float, Bounds(minimum=0, maximum=MAX_AMOUNT)]
Amount = Annotated[float, Bounds(minimum=-MAX_AMOUNT, maximum=MAX_AMOUNT)]
#: a probability a ranking had of serving what it served: in (0, 1]
Propensity = Annotated[float, Bounds(minimum=0, maximum=1, exclusive_minimum=True)]

ClickType = Literal["page_view", "product_view", "category_view", "search"]
CartType = Literal["cart_add", "cart_remove", "cart_quantity", "cart_clear", "checkout"]
OrderType = Literal["order", "order_cancel"]
ProfileType = Literal["profile"]
FeedbackType = Literal[
    "offer_delivered", "offer_opened", "offer_clicked", "offer_redeemed", "offer_dismissed"
]
Channel = Literal["push", "email", "sms", "in_app"]
#: a customer's interaction with an engagement action (``streams.merchants.engagement``)
ActionFeedbackType = Literal["action_shown", "action_taken", "action_dismissed"]
OfferType = Literal[
    "free_shipping", "percent_off", "threshold_nudge", "product_coupon", "engagement_action"
]
#: where an offer's add-on comes from (`streams.decisions.BOUGHT_TOGETHER`, `NEXT_PURCHASE`)
AddOnSource = Literal["bought_together", "next_purchase"]
ActionKind = Literal["none", "free_shipping", "percent_off", "threshold_nudge", "product_coupon"]


class Line(faust.Record, serializer="json"):
    """One product line of a cart or an order."""

    product_id: ProductId
    quantity: Quantity
    unit_price: Price
    description: Text | None = None


Lines = Annotated[list[Line], Bounds(max_items=MAX_LINES)]


class Event(faust.Record, abstract=True, serializer="json"):
    """Fields shared by every input event."""

    schema_version: Version
    event_id: Id
    merchant_id: Id
    event_time: EventTime
    customer_id: Id | None = None
    session_id: Id | None = None


class ClickEvent(Event, serializer="json"):
    """A page, product, category or search view (topic ``clickstream``)."""

    event_type: ClickType
    page: Url | None = None
    product_id: ProductId | None = None
    category: Name | None = None
    query: Text | None = None


class CartEvent(Event, serializer="json"):
    """A cart change (topic ``cart``).

    ``lines`` holds the lines the change touched: the added line (cart_add), the quantity
    removed (cart_remove), the line's new quantity (cart_quantity, 0 removes it); checkout may
    list the whole cart and cart_clear none. ``cart_value`` is the cart's total *after* it.
    """

    event_type: CartType
    lines: Lines
    cart_value: Price
    currency: Currency


class OrderEvent(Event, serializer="json"):
    """A placed order, or a cancellation of (part of) one (topic ``orders``)."""

    event_type: OrderType
    order_id: Id
    lines: Lines
    total: Amount
    currency: Currency


class ChannelConsent(faust.Record, serializer="json"):
    """Addresses the customer consented to be messaged on; absent means no consent."""

    email: Address | None = None
    sms: Address | None = None
    push: Address | None = None
    in_app: bool = False


class ProfileEvent(Event, serializer="json"):
    """Customer profile and consent (topic ``profiles``). ``opted_out`` stops all messages."""

    event_type: ProfileType
    channels: ChannelConsent
    preferred_channel: Channel | None = None
    time_zone: TimeZone | None = None
    opted_out: bool = False
    #: Where the customer lives (a country name or ISO code, as the shop writes it): the
    #: decision records carry it, for ``nextbest report``'s results by country.
    country: Name | None = None


class FeedbackEvent(Event, serializer="json"):
    """What happened to an offer we sent (topic ``offer-feedback``)."""

    event_type: FeedbackType
    offer_id: Id
    notification_id: Id | None = None


class ActionFeedbackEvent(Event, serializer="json"):
    """What a customer did with an engagement action (topic ``action-feedback``): shown to
    them, taken (joined the loyalty programme, installed the app...) or dismissed.
    ``action_id`` is the merchant catalog's engagement action id; ``channel`` where it happened
    (absent: in session). An ``action_shown`` of the first action of a ranking that
    ``GET /next-best-actions`` served carries that answer's ``ranking_id`` and ``propensity``:
    its take window is then the ranking's, with the probability the ranking had of putting
    the action first, for learning and off-policy evaluation (both ignored on other types)."""

    event_type: ActionFeedbackType
    action_id: Id
    channel: Channel | None = None
    ranking_id: Id | None = None
    propensity: Propensity | None = None


class RankedAction(faust.Record, serializer="json"):
    """One engagement action as ranked for a customer: ``p_take`` the posterior-mean
    P(take | customer state), ``expected_value`` = ``p_take`` x ``value``."""

    action_id: str
    kind: str
    title: str
    value: float
    p_take: float
    expected_value: float


class ValueContestRecord(faust.Record, serializer="json"):
    """``engagement.combine: best_value``: which of the cart's first-ranked engagement action
    and the promotion policy's offer went out (``winner``: action or offer), the action's
    expected value (P(take) x value) and the offer's expected incremental value to the shop
    over no offer (null: the policy's variant does not score offers; the offer went out)."""

    winner: Literal["action", "offer"]
    action_value: float
    offer_value: float | None = None


class PromotionEvent(faust.Record, serializer="json"):
    """Output (topic ``promotions``): the offer chosen for a cart change."""

    schema_version: int
    offer_id: str
    dedupe_key: str
    merchant_id: Id
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
    customer_id: Id | None = None
    session_id: Id | None = None
    percent_off: float | None = None
    amount_to_next_tier: float | None = None
    recommendations: list[str] | None = None
    #: Where each of ``recommendations`` comes from, in the same order: ``bought_together``
    #: (bought with the cart's products by other customers) or ``next_purchase`` (the
    #: customer's predicted next purchase). Absent when the worker runs rules only.
    recommendation_sources: list[AddOnSource] | None = None
    #: Next-purchase model outputs (absent when the worker runs rules only): the top predicted
    #: product not in the cart as a product-coupon candidate with its probability, the
    #: probability that the customer's next pick is one of ``recommendations``, and the model.
    coupon_product_id: str | None = None
    coupon_probability: float | None = None
    purchase_propensity: float | None = None
    model_version: str | None = None
    #: Promotion policy: the most this offer's discount may be (what its budget reserved).
    max_discount: float | None = None
    #: Engagement actions ranked for the customer (best first), when the merchant ranks them
    #: on cart decisions; on ``offer_type: engagement_action`` the first is the decision.
    #: ``engagement_propensity``: the probability the first had of being ranked first.
    engagement_actions: list[RankedAction] | None = None
    engagement_ranking: str | None = None  # expected_value | propensity
    engagement_propensity: float | None = None
    #: Under ``engagement.combine: best_value``, when the action and an offer competed.
    value_contest: ValueContestRecord | None = None


class NotificationEvent(faust.Record, serializer="json"):
    """Output (topic ``notifications``): a message to deliver. Deduplicate on ``dedupe_key``."""

    schema_version: int
    notification_id: str
    dedupe_key: str
    merchant_id: Id
    customer_id: Id
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
    #: A journey's message, where the merchant allows it (``engagement.in_journeys``): the
    #: engagement actions ranked among those shown on this channel, best first, and the
    #: probability the first had of being ranked first.
    engagement_actions: list[RankedAction] | None = None
    engagement_ranking: str | None = None
    engagement_propensity: float | None = None


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


class OrderProduct(faust.Record, serializer="json"):
    """One product of an attributed order: its line value at list price (quantity x unit
    price, the product's lines summed)."""

    product_id: str
    value: float


class DecisionRecord(faust.Record, serializer="json"):
    """Output (topic ``decisions``): one promotion-policy decision for a cart, holdout and
    no-offer decisions included. ``action`` was chosen with probability ``propensity`` by
    ``policy`` at ``model_version``; ``sent`` is false in the holdout (logged, nothing sent).
    ``features`` are the values of ``feature_set`` (``streams.promotion.features.FEATURE_NAMES``);
    ``options`` every allowed action. Every cart event gets one: a cart change that repeats its
    cart's decision has a record of its own with ``repeat_of`` that decision's id, its action
    and propensity, ``sent`` false and no options or features (not a decision to learn from or
    evaluate: it gets no reward); ``repeat_of`` is null otherwise. Key: the customer key;
    deduplicate on ``decision_id``."""

    schema_version: int
    decision_id: str
    merchant_id: Id
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
    repeat_of: str | None = None  # the decision id this record repeats (absent in older logs)
    #: The engagement actions the cart's promotion record carried (``PromotionEvent``'s fields
    #: of the same names), absent when it carried none.
    engagement_actions: list[RankedAction] | None = None
    engagement_ranking: str | None = None
    engagement_propensity: float | None = None
    value_contest: ValueContestRecord | None = None  # as on the promotion record
    #: The cart's product ids when decided and the customer's country (profile), for the
    #: report's results by product and country; null on repeats, absent in older logs.
    cart_products: list[str] | None = None
    country: str | None = None
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
    merchant_id: Id
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
    #: The attributed order's products (absent in older logs), for the report's products
    #: bought after an offer.
    order_products: list[OrderProduct] | None = None
    record: Literal["reward"] = "reward"


INPUT_EVENTS: dict[str, type[Event]] = {
    "clickstream": ClickEvent,
    "cart": CartEvent,
    "orders": OrderEvent,
    "profiles": ProfileEvent,
    "feedback": FeedbackEvent,
    "action_feedback": ActionFeedbackEvent,
}
OUTPUT_EVENTS: dict[str, type[faust.Record]] = {
    "promotions": PromotionEvent,
    "notifications": NotificationEvent,
    "dead_letters": DeadLetter,
    "decisions": DecisionRecord,
    "rewards": RewardRecord,
}

#: Fields a given event type needs beyond its record's required fields (present, not null, not
#: empty).
REQUIRED_BY_TYPE: dict[str, tuple[str, ...]] = {
    "product_view": ("product_id",),
    "category_view": ("category",),
    "search": ("query",),
}

#: Line quantities (lowest, highest) per event type: cart_quantity sets a line's new quantity
#: (0 removes it), order_cancel takes units back; every other change moves at least one unit.
LINE_QUANTITY_BY_TYPE: dict[str, tuple[int, int]] = {
    "cart_add": (1, MAX_QUANTITY),
    "cart_remove": (1, MAX_QUANTITY),
    "cart_quantity": (0, MAX_QUANTITY),
    "cart_clear": (1, MAX_QUANTITY),
    "checkout": (1, MAX_QUANTITY),
    "order": (1, MAX_QUANTITY),
    "order_cancel": (-MAX_QUANTITY, -1),
}
