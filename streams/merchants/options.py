r"""Optional per-merchant parts of the catalog: ``delivery``, ``journeys``, ``training`` and
``product_pattern``.

Every section and field is optional; a merchant without them gets the defaults below (quiet
hours 21:00-08:00 on push/SMS/email, unknown time zones treated as UTC, no journeys)::

    delivery:
      quiet_hours: {start: "21:00", end: "08:00", channels: [push, sms, email]}
      time_zones: [Europe/London]      # where a customer with no (or a bad) time zone may live
    journeys:
      abandoned_cart: {after_minutes: 60}
      replenishment: {min_orders: 3, lead_days: 2, min_interval_days: 7}
      follow_up: {trigger: first_order, first: email, if_opened: push, if_not_opened: sms,
                  wait_days: 3}
      retention: {threshold: 0.6, overdue_intervals: 2, window_days: 30, holdout: 0.1}
    training:
      data: ../shared/data/online_retail.csv.gz   # relative to the merchants file
      format: online_retail               # or interactions (an Amazon Personalize CSV)
    product_pattern: '^SKU-\d+'        # what counts as a product (default: UCI stock codes)

``product_pattern`` decides which order lines are products in the customer's state (the order
history the next-purchase model reads) and in training for that merchant: a regular
expression matched at the start of the stripped, upper-cased id, ignoring case
(`streams.state.products.product_rule`). Without it, the UCI Online Retail stock-code rule.

The pydantic models below validate these sections (unknown keys are errors) and build the
frozen dataclasses the domain reads; `streams.merchants.catalog.parse_merchant` raises a
`CatalogError` naming the field, so a bad section rejects the whole merchant and changes nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from streams.merchants.strict import Channel, ConfigModel, Positive
from streams.state.products import product_rule

MINUTE = 60.0
DAY = 86400.0


@dataclass(frozen=True)
class QuietHours:
    """Local times (minutes after midnight) between which interruptive channels stay silent.

    ``start > end`` wraps midnight (21:00-08:00); ``start == end`` means no quiet hours.
    """

    start: int = 21 * 60
    end: int = 8 * 60
    channels: tuple[str, ...] = ("push", "sms", "email")


@dataclass(frozen=True)
class DeliveryOptions:
    """Quiet hours and the time zones a customer of unknown zone may live in."""

    quiet_hours: QuietHours = field(default_factory=QuietHours)
    time_zones: tuple[str, ...] = ("UTC",)


@dataclass(frozen=True)
class AbandonedCart:
    after_s: float = 60 * MINUTE
    message: str = "You left {items} in your cart."


@dataclass(frozen=True)
class Replenishment:
    min_orders: int = 3
    lead_s: float = 2 * DAY
    min_interval_s: float = 7 * DAY
    message: str = "Time to stock up again?"


@dataclass(frozen=True)
class FollowUp:
    """E-mail; if it is opened, a push at once; if not opened within ``wait_s``, an SMS."""

    trigger: str = "first_order"
    first: str = "email"
    if_opened: str = "push"
    if_not_opened: str = "sms"
    wait_s: float = 3 * DAY
    first_message: str = "Thank you for your order! Here is what others bought next."
    opened_message: str = "Glad you liked it - your picks are waiting in the app."
    not_opened_message: str = "Thanks for your order! Reply STOP to opt out."


@dataclass(frozen=True)
class Retention:
    """A step when a customer's churn risk reaches ``threshold`` or they have gone
    ``overdue_intervals`` of their expected intervals without an order (None: the risk only):
    the policy's offer, else the customer's most bought products, else the message alone;
    ``holdout`` of the customers (by a stable hash, experiment ``experiment``) get nothing; at
    most once per ``window_s``."""

    threshold: float = 0.6
    overdue_intervals: float | None = 2.0
    window_s: float = 30 * DAY
    max_steps: int = 2
    holdout: float = 0.1
    experiment: str = "retention-1"
    offer: bool = True
    recommend: bool = True
    message: str = "We miss you! Here is what is new since your last visit."


@dataclass(frozen=True)
class Journeys:
    abandoned_cart: AbandonedCart | None = None
    replenishment: Replenishment | None = None
    follow_up: FollowUp | None = None
    retention: Retention | None = None


@dataclass(frozen=True)
class Training:
    data: str = ""  # the training file for `POST /predictors`; "" = not configured
    format: str = "online_retail"  # or "interactions": an Amazon Personalize interactions CSV


@dataclass(frozen=True)
class MerchantOptions:
    delivery: DeliveryOptions = field(default_factory=DeliveryOptions)
    journeys: Journeys = field(default_factory=Journeys)
    training: Training = field(default_factory=Training)
    product_pattern: str | None = None  # None: the UCI stock-code rule
    products: re.Pattern[str] = field(default_factory=product_rule)  # the compiled rule


def time_zone(name: object) -> ZoneInfo | None:
    """The IANA zone called ``name``, or None when it is missing or unknown."""
    if not isinstance(name, str) or not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def _local_time(value: object) -> object:
    """``"21:00"`` to minutes after midnight (YAML reads an unquoted 21:00 as 1260: accepted)."""
    if isinstance(value, str):
        hours, _, minutes = value.partition(":")
        if hours.isdigit() and minutes.isdigit() and int(hours) < 24 and int(minutes) < 60:
            return int(hours) * 60 + int(minutes)
    elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 24 * 60:
        return value
    raise ValueError(f'expected a local time such as "21:00", got {value!r}')


LocalTime = Annotated[
    int,
    BeforeValidator(_local_time),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": "^([01]?[0-9]|2[0-3]):[0-5][0-9]$"},
                {"type": "integer", "minimum": 0, "maximum": 24 * 60 - 1},
            ],
            "description": 'a local time, "HH:MM" (or minutes after midnight)',
        }
    ),
]


def _known_zone(name: str) -> str:
    if time_zone(name) is None:
        raise ValueError(f"unknown time zone {name!r}")
    return name


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("expected a non-empty string")
    return text


TimeZoneName = Annotated[str, AfterValidator(_known_zone)]
Text = Annotated[str, Field(min_length=1), AfterValidator(_not_blank)]


class QuietHoursConfig(ConfigModel):
    """Local times between which the listed channels stay silent (start after end wraps
    midnight; start equal to end: no quiet hours)."""

    start: LocalTime = QuietHours.start
    end: LocalTime = QuietHours.end
    channels: list[Channel] = list(QuietHours.channels)

    def build(self) -> QuietHours:
        return QuietHours(start=self.start, end=self.end, channels=tuple(self.channels))


class DeliveryConfig(ConfigModel):
    """Delivery rules for every message of the merchant (see streams/outreach/delivery.py)."""

    quiet_hours: QuietHoursConfig = QuietHoursConfig()
    time_zones: Annotated[list[TimeZoneName], Field(min_length=1)] = list(
        DeliveryOptions.time_zones
    )
    """IANA zones a customer without a (valid) time zone may live in."""

    def build(self) -> DeliveryOptions:
        return DeliveryOptions(
            quiet_hours=self.quiet_hours.build(), time_zones=tuple(self.time_zones)
        )


class AbandonedCartConfig(ConfigModel):
    """One reminder for a cart left this long without checkout."""

    after_minutes: Positive = AbandonedCart.after_s / MINUTE
    message: Text = AbandonedCart.message
    """The reminder's text; ``{items}`` is the only placeholder."""

    @field_validator("message")
    @classmethod
    def _placeholders(cls, message: str) -> str:
        try:
            message.format(items="2 items")
        except (KeyError, IndexError, ValueError):
            raise ValueError(f"the only placeholder is {{items}}, got {message!r}") from None
        return message

    def build(self) -> AbandonedCart:
        return AbandonedCart(after_s=self.after_minutes * MINUTE, message=self.message)


class ReplenishmentConfig(ConfigModel):
    """A reminder shortly before a regular customer's typical interval between orders is up."""

    min_orders: Annotated[int, Field(ge=3)] = Replenishment.min_orders
    lead_days: Positive = Replenishment.lead_s / DAY
    min_interval_days: Positive = Replenishment.min_interval_s / DAY
    message: Text = Replenishment.message

    def build(self) -> Replenishment:
        return Replenishment(
            min_orders=self.min_orders,
            lead_s=self.lead_days * DAY,
            min_interval_s=self.min_interval_days * DAY,
            message=self.message,
        )


class FollowUpConfig(ConfigModel):
    """A first message; if opened, a second at once; if not opened within ``wait_days``, a
    third."""

    trigger: Literal["first_order", "order"] = "first_order"
    first: Channel = "email"
    if_opened: Channel = "push"
    if_not_opened: Channel = "sms"
    wait_days: Positive = FollowUp.wait_s / DAY
    first_message: Text = FollowUp.first_message
    opened_message: Text = FollowUp.opened_message
    not_opened_message: Text = FollowUp.not_opened_message

    def build(self) -> FollowUp:
        return FollowUp(
            trigger=self.trigger,
            first=self.first,
            if_opened=self.if_opened,
            if_not_opened=self.if_not_opened,
            wait_s=self.wait_days * DAY,
            first_message=self.first_message,
            opened_message=self.opened_message,
            not_opened_message=self.not_opened_message,
        )


class RetentionConfig(ConfigModel):
    """A step when a customer's churn risk (docs/churn.md) reaches ``threshold`` or they are
    ``overdue_intervals`` of their intervals late, chosen by the promotion policy, against a
    holdout; at most once per ``window_days``."""

    threshold: Annotated[float, Field(gt=0, lt=1)] = Retention.threshold
    """The churn risk (0-1) at which the step fires."""
    overdue_intervals: Annotated[float, Field(ge=1, le=100)] | None = Retention.overdue_intervals
    """The step also fires when the customer has gone this many of their own expected
    intervals between orders without one (reaches loyal customers, whose risk rises slowly:
    docs/churn.md); null: the risk only."""
    window_days: Positive = Retention.window_s / DAY
    """At most one step per customer in this many days."""
    max_steps: Annotated[int, Field(ge=1, le=10)] = Retention.max_steps
    """Steps per lapse (one per window while the risk stays above the threshold); an order
    starts a new lapse."""
    holdout: Annotated[float, Field(ge=0, lt=1)] = Retention.holdout
    """Share of customers who get nothing (counted as ``arm="holdout"``)."""
    experiment: Annotated[str, Field(min_length=1, max_length=64)] = Retention.experiment
    """The holdout's experiment id (changing it reshuffles the holdout)."""
    offer: bool = Retention.offer
    """Ask the promotion policy for an offer (the cart: the customer's average order)."""
    recommend: bool = Retention.recommend
    """Name the customer's most bought products."""
    message: Text = Retention.message

    def build(self) -> Retention:
        return Retention(
            threshold=self.threshold,
            overdue_intervals=self.overdue_intervals,
            window_s=self.window_days * DAY,
            max_steps=self.max_steps,
            holdout=self.holdout,
            experiment=self.experiment,
            offer=self.offer,
            recommend=self.recommend,
            message=self.message,
        )


class JourneysConfig(ConfigModel):
    """The journeys the merchant runs (see docs/journeys.md); an absent one does not run."""

    abandoned_cart: AbandonedCartConfig | None = None
    replenishment: ReplenishmentConfig | None = None
    follow_up: FollowUpConfig | None = None
    retention: RetentionConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _known_journeys(cls, data: object) -> object:
        if isinstance(data, dict) and (unknown := sorted(set(data) - set(cls.model_fields))):
            raise ValueError(f"unknown journey(s) {unknown}, expected {list(cls.model_fields)}")
        return data

    def build(self) -> Journeys:
        return Journeys(
            abandoned_cart=self.abandoned_cart and self.abandoned_cart.build(),
            replenishment=self.replenishment and self.replenishment.build(),
            follow_up=self.follow_up and self.follow_up.build(),
            retention=self.retention and self.retention.build(),
        )


class TrainingConfig(ConfigModel):
    """Training data for ``POST /predictors``."""

    data: str = Training.data
    """The training file; relative to the merchants file's folder ("": none)."""
    format: Literal["online_retail", "interactions"] = "online_retail"
    """``online_retail`` (UCI Online Retail) or ``interactions`` (Amazon Personalize CSV)."""

    def build(self, base: Path | None) -> Training:
        data = self.data
        if data and base is not None and not Path(data).is_absolute():
            data = str((base / data).resolve())
        return Training(data=data, format=self.format)


def _product_pattern(value: object) -> object:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("expected a regular expression (a string)")
    product_rule(value)  # a ValueError that says what is wrong
    return value


class MerchantOptionsConfig(ConfigModel):
    """The optional sections of a merchant's config (`streams.merchants.catalog.MerchantConfig`
    adds the rest)."""

    delivery: DeliveryConfig = DeliveryConfig()
    journeys: JourneysConfig = JourneysConfig()
    training: TrainingConfig = TrainingConfig()
    product_pattern: Annotated[str | None, BeforeValidator(_product_pattern)] = None
    """What counts as a product: a regular expression matched at the start of the id, ignoring
    case (default: UCI Online Retail stock codes)."""

    def build_options(self, base: Path | None = None) -> MerchantOptions:
        """The domain's options; ``base`` (the merchants file's folder) resolves relative
        paths."""
        return MerchantOptions(
            delivery=self.delivery.build(),
            journeys=self.journeys.build(),
            training=self.training.build(base),
            product_pattern=self.product_pattern,
            products=product_rule(self.product_pattern),
        )
