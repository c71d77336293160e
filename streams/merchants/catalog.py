"""Merchants and their promotion catalogs: parsed from a YAML/JSON file at start and updated at
run time from the compacted ``promotion-catalog`` topic (key: merchant id, value: one merchant's
config as JSON, or null to remove the merchant)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml

from streams.merchants.options import MerchantConfigError, MerchantOptions, parse_options

DEFAULT_MERCHANTS = Path(__file__).with_name("merchants.yaml")
PROMOTION_TYPES = ("free_shipping", "percent_off", "product_coupon")
CHANNELS = ("push", "email", "sms", "in_app")


class CatalogError(ValueError):
    """A merchant config that cannot be used; the message says which field and why."""


@dataclass(frozen=True)
class Promotion:
    """A promotion of the catalog. The fields after ``title`` are the promotion policy's limits
    (all optional): ``budget`` caps the total discount money the promotion may ever cost (None:
    no cap), ``max_discount`` caps one offer's discount, ``max_per_customer`` caps a customer's
    redemptions (in a rolling ``per_customer_days`` window; None: for ever), an ``exclusive``
    offer never coexists with another open offer of the customer, and at most one open offer
    per non-empty ``group`` (e.g. all %-off tiers) is allowed."""

    id: str
    type: str
    min_spend: float
    percent: float = 0.0
    valid_from: float = float("-inf")
    valid_to: float = float("inf")
    title: str = ""
    budget: float | None = None
    max_discount: float | None = None
    max_per_customer: int | None = None
    per_customer_days: float | None = None
    exclusive: bool = False
    group: str = ""

    def active(self, ts: float) -> bool:
        return self.valid_from <= ts < self.valid_to


@dataclass(frozen=True)
class FrequencyCap:
    max_messages: int = 2
    period_s: float = 24 * 3600.0


@dataclass(frozen=True)
class Merchant:
    """A merchant. ``promotions`` are the cart tiers (free shipping, %-off) the rules policy
    reads; ``product_coupons`` (type ``product_coupon`` in the file: ``percent`` off the
    customer's predicted next product) only the promotion policy offers. Cost model: the shop
    keeps ``margin_rate`` of a basket's value as gross margin and pays ``shipping_cost`` when it
    gives free shipping; no offer may leave less than ``min_margin_rate`` of the basket as margin.
    An offer is valid for ``offer_ttl_hours`` (budget reservations expire then). An offer worth
    ``deep_discount_depth`` of its basket or more is a deep discount: the promotion policy makes
    one only where it earns ``deep_discount_cost`` x the cart's value more than any other offer
    (``streams.promotion.objective.DeepDiscount``)."""

    id: str
    currency: str
    shipping_cost: float
    promotions: tuple[Promotion, ...]
    nudge_max_gap: float = 0.0
    frequency_cap: FrequencyCap = field(default_factory=FrequencyCap)
    channel_order: tuple[str, ...] = ("in_app", "push", "email", "sms")
    name: str = ""
    margin_rate: float = 0.3
    min_margin_rate: float = 0.0
    offer_ttl_hours: float = 48.0
    deep_discount_depth: float = 0.15
    deep_discount_cost: float = 0.02
    product_coupons: tuple[Promotion, ...] = ()
    options: MerchantOptions = field(default_factory=MerchantOptions)  # delivery, journeys


def _time(value: object, where: str) -> float:
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(str(value))
        except ValueError:
            raise CatalogError(f"{where}: not an ISO 8601 time: {value!r}") from None
    if moment.tzinfo is None:
        raise CatalogError(f"{where}: needs a UTC offset, e.g. 2011-01-01T00:00:00Z")
    return moment.timestamp()


def _number(config: dict, key: str, where: str, default: float | None = None) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise CatalogError(f"{where}.{key}: expected a number >= 0, got {value!r}")
    return float(value)


def parse_promotion(config: dict, where: str) -> Promotion:
    if not isinstance(config, dict):
        raise CatalogError(f"{where}: expected a mapping")
    promo_id = config.get("id")
    if not isinstance(promo_id, str) or not promo_id:
        raise CatalogError(f"{where}.id: required string")
    promo_type = config.get("type")
    if promo_type not in PROMOTION_TYPES:
        raise CatalogError(f"{where}.type: must be one of {PROMOTION_TYPES}, got {promo_type!r}")
    percent = _number(config, "percent", where, 0.0)
    if promo_type in ("percent_off", "product_coupon") and not 0 < percent < 100:
        raise CatalogError(f"{where}.percent: must be between 0 and 100 for {promo_type}")
    valid_from = (
        _time(config["valid_from"], f"{where}.valid_from")
        if "valid_from" in config
        else float("-inf")
    )
    valid_to = (
        _time(config["valid_to"], f"{where}.valid_to") if "valid_to" in config else float("inf")
    )
    if valid_to <= valid_from:
        raise CatalogError(f"{where}: valid_to must be after valid_from")
    return Promotion(
        id=promo_id,
        type=promo_type,
        min_spend=_number(config, "min_spend", where, 0.0),
        percent=percent,
        valid_from=valid_from,
        valid_to=valid_to,
        title=str(config.get("title", "")),
        **_promotion_limits(config, where),
    )


def _optional_number(config: dict, key: str, where: str, positive: bool = False) -> float | None:
    if config.get(key) is None:
        return None
    value = _number(config, key, where)
    if positive and value <= 0:
        raise CatalogError(f"{where}.{key}: expected a number > 0, got {config[key]!r}")
    return value


def _promotion_limits(config: dict, where: str) -> dict:
    """The promotion policy's optional limits of one promotion (see `Promotion`)."""
    per_customer = config.get("max_per_customer")
    if per_customer is not None and (
        isinstance(per_customer, bool) or not isinstance(per_customer, int) or per_customer < 1
    ):
        raise CatalogError(
            f"{where}.max_per_customer: expected an integer >= 1, got {per_customer!r}"
        )
    exclusive = config.get("exclusive", False)
    if not isinstance(exclusive, bool):
        raise CatalogError(f"{where}.exclusive: expected true or false, got {exclusive!r}")
    group = config.get("group", "")
    if not isinstance(group, str):
        raise CatalogError(f"{where}.group: expected a string, got {group!r}")
    return {
        "budget": _optional_number(config, "budget", where),
        "max_discount": _optional_number(config, "max_discount", where, positive=True),
        "max_per_customer": per_customer,
        "per_customer_days": _optional_number(config, "per_customer_days", where, positive=True),
        "exclusive": exclusive,
        "group": group,
    }


def _rate(config: dict, key: str, where: str, default: float, low: float, high: float) -> float:
    value = _number(config, key, where, default)
    if not low <= value <= high:
        raise CatalogError(f"{where}.{key}: must be between {low:g} and {high:g}, got {value:g}")
    return value


def parse_merchant(merchant_id: str, config: dict, base: Path | None = None) -> Merchant:
    """One merchant's config; ``base`` (the merchants file's folder) resolves relative paths."""
    where = f"merchants.{merchant_id}"
    if not merchant_id or ":" in merchant_id:
        raise CatalogError(f"{where}: a merchant id is not empty and holds no ':' (record keys)")
    if not isinstance(config, dict):
        raise CatalogError(f"{where}: expected a mapping")
    currency = config.get("currency")
    if not isinstance(currency, str) or len(currency) != 3:
        raise CatalogError(f"{where}.currency: expected a 3-letter currency code")
    promotions = config.get("promotions", [])
    if not isinstance(promotions, list):
        raise CatalogError(f"{where}.promotions: expected a list")
    parsed = tuple(parse_promotion(p, f"{where}.promotions[{i}]") for i, p in enumerate(promotions))
    ids = [p.id for p in parsed]
    if len(set(ids)) != len(ids):
        raise CatalogError(f"{where}.promotions: duplicate promotion ids")
    margin_rate = _rate(config, "margin_rate", where, Merchant.margin_rate, 0.0, 1.0)
    if margin_rate == 0:
        raise CatalogError(f"{where}.margin_rate: must be between 0 and 1, got 0")
    min_margin_rate = _rate(config, "min_margin_rate", where, 0.0, 0.0, margin_rate)
    offer_ttl_hours = _number(config, "offer_ttl_hours", where, Merchant.offer_ttl_hours)
    deep_discount_depth = _rate(
        config, "deep_discount_depth", where, Merchant.deep_discount_depth, 0.0, 1.0
    )
    if deep_discount_depth == 0:
        raise CatalogError(f"{where}.deep_discount_depth: must be > 0")
    if offer_ttl_hours <= 0:
        raise CatalogError(f"{where}.offer_ttl_hours: expected a number > 0")
    cap = config.get("frequency_cap", {})
    if not isinstance(cap, dict):
        raise CatalogError(f"{where}.frequency_cap: expected a mapping")
    channel_order = config.get("channel_order", Merchant.channel_order)
    if not isinstance(channel_order, list | tuple):
        raise CatalogError(f"{where}.channel_order: expected a list of channels")
    channel_order = tuple(channel_order)
    unknown = set(channel_order) - set(CHANNELS)
    if unknown:
        raise CatalogError(f"{where}.channel_order: unknown channel(s) {sorted(unknown)}")
    try:
        options = parse_options(config, where, base)
    except MerchantConfigError as exc:
        raise CatalogError(str(exc)) from None
    return Merchant(
        id=merchant_id,
        name=str(config.get("name", merchant_id)),
        currency=currency.upper(),
        shipping_cost=_number(config, "shipping_cost", where, 0.0),
        promotions=tuple(p for p in parsed if p.type != "product_coupon"),
        product_coupons=tuple(p for p in parsed if p.type == "product_coupon"),
        margin_rate=margin_rate,
        min_margin_rate=min_margin_rate,
        offer_ttl_hours=offer_ttl_hours,
        deep_discount_depth=deep_discount_depth,
        deep_discount_cost=_rate(
            config, "deep_discount_cost", where, Merchant.deep_discount_cost, 0.0, 1.0
        ),
        nudge_max_gap=_number(config, "nudge_max_gap", where, 0.0),
        frequency_cap=FrequencyCap(
            max_messages=int(_number(cap, "max_messages", f"{where}.frequency_cap", 2)),
            period_s=_number(cap, "period_hours", f"{where}.frequency_cap", 24) * 3600.0,
        ),
        channel_order=channel_order,
        options=options,
    )


def load_merchants(path: Path) -> dict[str, Merchant]:
    """Read a merchants file (YAML or JSON: ``{merchants: {<id>: <config>}}``)."""
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise CatalogError(f"cannot read merchants file {path}: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("merchants"), dict):
        raise CatalogError(f"{path}: expected a top-level 'merchants' mapping")
    merchants = document["merchants"].items()
    return {str(mid): parse_merchant(str(mid), cfg, path.parent) for mid, cfg in merchants}


class MerchantRegistry:
    """The merchants this worker knows. Reads are lock-free; updates swap the whole dict."""

    def __init__(self, merchants: dict[str, Merchant]) -> None:
        self._merchants = dict(merchants)
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: Path) -> MerchantRegistry:
        return cls(load_merchants(path))

    def get(self, merchant_id: str) -> Merchant | None:
        return self._merchants.get(merchant_id)

    def __contains__(self, merchant_id: str) -> bool:
        return merchant_id in self._merchants

    def ids(self) -> list[str]:
        return sorted(self._merchants)

    def apply_update(self, merchant_id: str, config: dict | None) -> None:
        """Apply one catalog-topic record; raises CatalogError and changes nothing if invalid."""
        merchant = None if config is None else parse_merchant(merchant_id, config)
        with self._lock:
            merchants = dict(self._merchants)
            if merchant is None:
                merchants.pop(merchant_id, None)
            else:
                merchants[merchant_id] = merchant
            self._merchants = merchants
