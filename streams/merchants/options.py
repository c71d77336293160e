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
    training:
      data: ../shared/data/online_retail.csv.gz   # relative to the merchants file
      format: online_retail               # or interactions (an Amazon Personalize CSV)
    product_pattern: '^SKU-\d+'        # what counts as a product (default: UCI stock codes)

``product_pattern`` decides which order lines are products in the customer's state (the order
history the next-purchase model reads) and in training for that merchant: a regular
expression matched at the start of the stripped, upper-cased id, ignoring case
(`streams.state.products.product_rule`). Without it, the UCI Online Retail stock-code rule.

Parsing raises `MerchantConfigError` naming the field; `streams.merchants.catalog` turns it into a
`CatalogError`, so a bad section rejects the whole merchant update and changes nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from streams.state.customer_state import MAX_SENT
from streams.state.products import product_rule

CHANNELS = ("push", "email", "sms", "in_app")
FOLLOW_UP_TRIGGERS = ("first_order", "order")
MINUTE = 60.0
DAY = 86400.0


class MerchantConfigError(ValueError):
    """A delivery, journeys or training section that cannot be used."""


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
class Journeys:
    abandoned_cart: AbandonedCart | None = None
    replenishment: Replenishment | None = None
    follow_up: FollowUp | None = None


TRAINING_FORMATS = ("online_retail", "interactions")


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


def parse_product_pattern(value: object, where: str) -> str | None:
    """A merchant's ``product_pattern`` (None when absent); a bad regex is a config error."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise MerchantConfigError(f"{where}: expected a regular expression (a string)")
    try:
        product_rule(value)
    except ValueError as exc:
        raise MerchantConfigError(f"{where}: {exc}") from None
    return value


def _section(config: dict, key: str, where: str) -> dict | None:
    value = config.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise MerchantConfigError(f"{where}.{key}: expected a mapping")
    return value


def _positive(config: dict, key: str, where: str, default: float) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise MerchantConfigError(f"{where}.{key}: expected a number > 0, got {value!r}")
    return float(value)


def _text(config: dict, key: str, where: str, default: str) -> str:
    value = config.get(key, default)
    if not isinstance(value, str) or not value.strip():
        raise MerchantConfigError(f"{where}.{key}: expected a non-empty string")
    return value


def _channel(config: dict, key: str, where: str, default: str) -> str:
    value = config.get(key, default)
    if value not in CHANNELS:
        raise MerchantConfigError(f"{where}.{key}: must be one of {CHANNELS}, got {value!r}")
    return value


def _local_time(value: object, where: str) -> int:
    """``"21:00"`` to minutes after midnight (YAML reads an unquoted 21:00 as 1260: accepted)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 24 * 60:
        return value
    if isinstance(value, str):
        hours, _, minutes = value.partition(":")
        if hours.isdigit() and minutes.isdigit() and int(hours) < 24 and int(minutes) < 60:
            return int(hours) * 60 + int(minutes)
    raise MerchantConfigError(f'{where}: expected a local time such as "21:00", got {value!r}')


def time_zone(name: object) -> ZoneInfo | None:
    """The IANA zone called ``name``, or None when it is missing or unknown."""
    if not isinstance(name, str) or not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def parse_delivery(config: dict | None, where: str) -> DeliveryOptions:
    if config is None:
        return DeliveryOptions()
    quiet = _section(config, "quiet_hours", where)
    quiet_hours = QuietHours()
    if quiet is not None:
        channels = quiet.get("channels", list(QuietHours.channels))
        if not isinstance(channels, list | tuple) or set(channels) - set(CHANNELS):
            raise MerchantConfigError(
                f"{where}.quiet_hours.channels: expected a list of {CHANNELS}"
            )
        quiet_hours = QuietHours(
            start=_local_time(quiet.get("start", "21:00"), f"{where}.quiet_hours.start"),
            end=_local_time(quiet.get("end", "08:00"), f"{where}.quiet_hours.end"),
            channels=tuple(channels),
        )
    zones = config.get("time_zones", list(DeliveryOptions.time_zones))
    if not isinstance(zones, list | tuple) or not zones:
        raise MerchantConfigError(f"{where}.time_zones: expected a non-empty list of IANA zones")
    for zone in zones:
        if time_zone(zone) is None:
            raise MerchantConfigError(f"{where}.time_zones: unknown time zone {zone!r}")
    return DeliveryOptions(quiet_hours=quiet_hours, time_zones=tuple(zones))


def parse_journeys(config: dict | None, where: str) -> Journeys:
    if config is None:
        return Journeys()
    known = {"abandoned_cart", "replenishment", "follow_up"}
    unknown = set(config) - known
    if unknown:
        raise MerchantConfigError(f"{where}: unknown journey(s) {sorted(unknown)}")
    cart = _section(config, "abandoned_cart", where)
    refill = _section(config, "replenishment", where)
    follow = _section(config, "follow_up", where)
    abandoned = replenishment = follow_up = None
    if cart is not None:
        w = f"{where}.abandoned_cart"
        message = _text(cart, "message", w, AbandonedCart.message)
        try:
            message.format(items="2 items")
        except (KeyError, IndexError, ValueError):
            raise MerchantConfigError(
                f"{w}.message: the only placeholder is {{items}}, got {message!r}"
            ) from None
        abandoned = AbandonedCart(
            after_s=_positive(cart, "after_minutes", w, 60) * MINUTE, message=message
        )
    if refill is not None:
        w = f"{where}.replenishment"
        min_orders = _positive(refill, "min_orders", w, 3)
        if min_orders < 3 or min_orders != int(min_orders):
            raise MerchantConfigError(f"{w}.min_orders: expected a whole number >= 3")
        replenishment = Replenishment(
            min_orders=int(min_orders),
            lead_s=_positive(refill, "lead_days", w, 2) * DAY,
            min_interval_s=_positive(refill, "min_interval_days", w, 7) * DAY,
            message=_text(refill, "message", w, Replenishment.message),
        )
    if follow is not None:
        w = f"{where}.follow_up"
        trigger = follow.get("trigger", FollowUp.trigger)
        if trigger not in FOLLOW_UP_TRIGGERS:
            raise MerchantConfigError(f"{w}.trigger: must be one of {FOLLOW_UP_TRIGGERS}")
        follow_up = FollowUp(
            trigger=trigger,
            first=_channel(follow, "first", w, FollowUp.first),
            if_opened=_channel(follow, "if_opened", w, FollowUp.if_opened),
            if_not_opened=_channel(follow, "if_not_opened", w, FollowUp.if_not_opened),
            wait_s=_positive(follow, "wait_days", w, 3) * DAY,
            first_message=_text(follow, "first_message", w, FollowUp.first_message),
            opened_message=_text(follow, "opened_message", w, FollowUp.opened_message),
            not_opened_message=_text(follow, "not_opened_message", w, FollowUp.not_opened_message),
        )
    return Journeys(abandoned_cart=abandoned, replenishment=replenishment, follow_up=follow_up)


def parse_training(config: dict | None, where: str, base: Path | None) -> Training:
    if config is None:
        return Training()
    data = config.get("data", "")
    if not isinstance(data, str):
        raise MerchantConfigError(f"{where}.data: expected a file path")
    if data and base is not None and not Path(data).is_absolute():
        data = str((base / data).resolve())
    data_format = config.get("format", Training.format)
    if data_format not in TRAINING_FORMATS:
        raise MerchantConfigError(
            f"{where}.format: must be one of {TRAINING_FORMATS}, got {data_format!r}"
        )
    return Training(data=data, format=data_format)


def parse_options(config: dict, where: str, base: Path | None = None) -> MerchantOptions:
    """The optional sections of one merchant's config; ``base`` resolves relative paths."""
    cap = config.get("frequency_cap")
    limit = cap.get("max_messages") if isinstance(cap, dict) else None
    if isinstance(limit, int | float) and limit > MAX_SENT:  # the cap counts the kept messages
        raise MerchantConfigError(
            f"{where}.frequency_cap.max_messages: at most {MAX_SENT} (messages kept per customer)"
        )
    pattern = parse_product_pattern(config.get("product_pattern"), f"{where}.product_pattern")
    return MerchantOptions(
        delivery=parse_delivery(_section(config, "delivery", where), f"{where}.delivery"),
        journeys=parse_journeys(_section(config, "journeys", where), f"{where}.journeys"),
        training=parse_training(_section(config, "training", where), f"{where}.training", base),
        product_pattern=pattern,
        products=product_rule(pattern),
    )
