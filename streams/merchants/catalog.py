"""Merchants and their promotion catalogs: parsed from a YAML/JSON file at start and updated at
run time from the compacted ``promotion-catalog`` topic (key: merchant id, value: one merchant's
config as JSON, or null to remove the merchant).

`MerchantConfig` (pydantic, strict, unknown keys rejected) validates one merchant's config and
builds the frozen `Merchant` the domain reads; its JSON Schema is ``schemas/json/catalog.v1.json``.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    AwareDatetime,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from streams.merchants.engagement import (
    EngagementAction,
    EngagementActionConfig,
    EngagementConfig,
    EngagementOptions,
    unique_action_ids,
)
from streams.merchants.options import MerchantOptions, MerchantOptionsConfig
from streams.merchants.strict import Channel, ConfigModel, Positive, config_errors
from streams.state.customer_state import MAX_SENT

DEFAULT_MERCHANTS = Path(__file__).with_name("merchants.yaml")


class CatalogError(ValueError):
    """A merchant config that cannot be used: ``errors`` has one ``<field path>: <why>`` line per
    problem."""

    def __init__(self, *errors: str) -> None:
        super().__init__(*errors)
        self.errors = errors

    def __str__(self) -> str:
        return "; ".join(self.errors)


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
    #: non-discount actions ranked per customer (`streams.merchants.engagement`)
    engagement_actions: tuple[EngagementAction, ...] = ()
    engagement: EngagementOptions = field(default_factory=EngagementOptions)


def _instant(value: object) -> object:
    """An ISO 8601 time (YAML may already have read it as a datetime); the offset is checked by
    ``AwareDatetime``."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass
    raise ValueError(f"not an ISO 8601 time: {value!r}")


Instant = Annotated[AwareDatetime, BeforeValidator(_instant)]
Money = Annotated[float, Field(ge=0)]
Rate = Annotated[float, Field(ge=0, le=1)]
CURRENCY_PATTERN = "^[A-Z]{3}$"


def _currency(value: object) -> object:
    if isinstance(value, str) and re.fullmatch(CURRENCY_PATTERN, value):
        return value
    raise ValueError(f"expected a 3-letter currency code (ISO 4217, upper case), got {value!r}")


Currency = Annotated[
    str,
    BeforeValidator(_currency),
    WithJsonSchema({"type": "string", "pattern": CURRENCY_PATTERN}),
]


class PromotionConfig(ConfigModel):
    """A promotion of the catalog (see `Promotion` for the policy's limits)."""

    id: Annotated[str, Field(min_length=1)]
    type: Literal["free_shipping", "percent_off", "product_coupon"]
    """``product_coupon``: ``percent`` off the customer's predicted next product."""
    min_spend: Money = 0.0
    """The cart value from which the promotion applies."""
    percent: Annotated[float, Field(ge=0, le=100, validate_default=True)] = 0.0
    """The discount of ``percent_off`` and ``product_coupon`` (above 0, below 100)."""
    valid_from: Instant | None = None
    """ISO 8601 with a UTC offset; absent: since ever."""
    valid_to: Instant | None = None
    """ISO 8601 with a UTC offset, excluded; absent: for ever."""
    title: str = ""
    budget: Money | None = None
    """Total discount money the promotion may ever cost (absent: no cap)."""
    max_discount: Positive | None = None
    """One offer's discount at most."""
    max_per_customer: Annotated[int, Field(ge=1)] | None = None
    """A customer's redemptions at most (in ``per_customer_days``; absent: for ever)."""
    per_customer_days: Positive | None = None
    exclusive: bool = False
    """Never offered beside another open offer of the customer."""
    group: str = ""
    """At most one open offer per non-empty group (e.g. all %-off tiers)."""

    @field_validator("percent")
    @classmethod
    def _discount(cls, percent: float, info: ValidationInfo) -> float:
        kind = info.data.get("type")
        if kind in ("percent_off", "product_coupon") and not 0 < percent < 100:
            raise ValueError(f"must be between 0 and 100 for {kind}, got {percent:g}")
        return percent

    @model_validator(mode="after")
    def _window(self) -> PromotionConfig:
        if None not in (self.valid_from, self.valid_to) and self.valid_to <= self.valid_from:
            raise ValueError("valid_to must be after valid_from")
        return self

    def build(self) -> Promotion:
        return Promotion(
            id=self.id,
            type=self.type,
            min_spend=self.min_spend,
            percent=self.percent,
            valid_from=self.valid_from.timestamp() if self.valid_from else float("-inf"),
            valid_to=self.valid_to.timestamp() if self.valid_to else float("inf"),
            title=self.title,
            budget=self.budget,
            max_discount=self.max_discount,
            max_per_customer=self.max_per_customer,
            per_customer_days=self.per_customer_days,
            exclusive=self.exclusive,
            group=self.group,
        )


class FrequencyCapConfig(ConfigModel):
    """At most ``max_messages`` messages to a customer in ``period_hours``."""

    max_messages: Annotated[int, Field(ge=0, json_schema_extra={"maximum": MAX_SENT})] = (
        FrequencyCap.max_messages
    )
    """At most 20: the cap counts the messages kept per customer."""
    period_hours: Money = FrequencyCap.period_s / 3600.0

    @field_validator("max_messages")
    @classmethod
    def _kept(cls, limit: int) -> int:
        if limit > MAX_SENT:
            raise ValueError(f"at most {MAX_SENT} (messages kept per customer), got {limit}")
        return limit

    def build(self) -> FrequencyCap:
        return FrequencyCap(max_messages=self.max_messages, period_s=self.period_hours * 3600.0)


class MerchantConfig(MerchantOptionsConfig):
    """One merchant's config: an entry of the merchants file, and the value of a record of the
    promotion-catalog topic (key: the merchant id; a null value removes the merchant). Money is
    in the merchant's currency."""

    model_config = ConfigDict(title="Merchant")

    currency: Currency
    """ISO 4217, upper case (GBP, EUR, USD...)."""
    name: str = ""
    """Shown as the title of notifications (default: the merchant id)."""
    shipping_cost: Money = 0.0
    """What the shop pays when it gives free shipping."""
    nudge_max_gap: Money = 0.0
    """Nudge ("add 10 more for ...") when a better tier is at most this far above the cart."""
    frequency_cap: FrequencyCapConfig = FrequencyCapConfig()
    channel_order: list[Channel] = list(Merchant.channel_order)
    margin_rate: Annotated[float, Field(gt=0, le=1)] = Merchant.margin_rate
    """The share of a basket's value the shop keeps as gross margin."""
    min_margin_rate: Rate = Merchant.min_margin_rate
    """No offer may leave less than this share of the basket as margin (at most margin_rate)."""
    offer_ttl_hours: Positive = Merchant.offer_ttl_hours
    deep_discount_depth: Annotated[float, Field(gt=0, le=1)] = Merchant.deep_discount_depth
    deep_discount_cost: Rate = Merchant.deep_discount_cost
    promotions: list[PromotionConfig] = []
    """Cart tiers (free_shipping, percent_off) and product coupons; ids unique."""
    engagement_actions: list[EngagementActionConfig] = []
    """Non-discount actions (loyalty, app, newsletter, category, custom); ids unique."""
    engagement: EngagementConfig = EngagementConfig()
    """How engagement actions are ranked and served."""

    @field_validator("min_margin_rate")
    @classmethod
    def _margin_left(cls, rate: float, info: ValidationInfo) -> float:
        margin = info.data.get("margin_rate")
        if margin is not None and rate > margin:
            raise ValueError(
                f"must be between 0 and {margin:g}, got {rate:g} (at most margin_rate)"
            )
        return rate

    @field_validator("promotions")
    @classmethod
    def _unique_ids(cls, promotions: list[PromotionConfig]) -> list[PromotionConfig]:
        ids = [p.id for p in promotions]
        if twice := sorted({i for i in ids if ids.count(i) > 1}):
            raise ValueError(f"duplicate promotion ids {twice}")
        return promotions

    @field_validator("engagement_actions")
    @classmethod
    def _unique_action_ids(
        cls, actions: list[EngagementActionConfig]
    ) -> list[EngagementActionConfig]:
        return unique_action_ids(actions)

    def build(self, merchant_id: str, base: Path | None = None) -> Merchant:
        promotions = [p.build() for p in self.promotions]
        return Merchant(
            id=merchant_id,
            name=self.name or merchant_id,
            currency=self.currency,
            shipping_cost=self.shipping_cost,
            promotions=tuple(p for p in promotions if p.type != "product_coupon"),
            product_coupons=tuple(p for p in promotions if p.type == "product_coupon"),
            nudge_max_gap=self.nudge_max_gap,
            frequency_cap=self.frequency_cap.build(),
            channel_order=tuple(self.channel_order),
            margin_rate=self.margin_rate,
            min_margin_rate=self.min_margin_rate,
            offer_ttl_hours=self.offer_ttl_hours,
            deep_discount_depth=self.deep_discount_depth,
            deep_discount_cost=self.deep_discount_cost,
            options=self.build_options(base),
            engagement_actions=tuple(a.build() for a in self.engagement_actions),
            engagement=self.engagement.build(),
        )


def validate_merchant(merchant_id: str, config: object) -> MerchantConfig:
    """The validated config of one merchant; raises CatalogError naming every bad field."""
    if not merchant_id or ":" in merchant_id:
        raise CatalogError(
            f"merchants.{merchant_id}: a merchant id is not empty and holds no ':' (record keys)"
        )
    try:
        return MerchantConfig.model_validate(config)
    except ValidationError as exc:
        raise CatalogError(
            *config_errors(exc, MerchantConfig, f"merchants.{merchant_id}")
        ) from None


def parse_merchant(merchant_id: str, config: object, base: Path | None = None) -> Merchant:
    """One merchant's config; ``base`` (the merchants file's folder) resolves relative paths."""
    return validate_merchant(merchant_id, config).build(merchant_id, base)


def read_document(path: Path) -> object:
    """A YAML or JSON file's content."""
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise CatalogError(f"cannot read merchants file {path}: {exc}") from exc


def merchant_configs(document: object, source: Path) -> dict[str, object]:
    """The ``merchants`` mapping of a merchants file's ``document`` (``{merchants: {<id>:
    <config>}}``), ids as strings, configs not validated yet."""
    if not isinstance(document, dict) or not isinstance(document.get("merchants"), dict):
        raise CatalogError(f"{source}: expected a top-level 'merchants' mapping")
    if unknown := sorted(str(key) for key in document if key != "merchants"):
        raise CatalogError(
            *(f"{key}: unknown field (the only key is 'merchants')" for key in unknown)
        )
    return {str(mid): config for mid, config in document["merchants"].items()}


def validate_merchants(configs: dict[str, object]) -> dict[str, MerchantConfig]:
    """Every merchant's validated config; one CatalogError names every bad field of all."""
    valid, errors = {}, []
    for merchant_id, config in configs.items():
        try:
            valid[merchant_id] = validate_merchant(merchant_id, config)
        except CatalogError as exc:
            errors.extend(exc.errors)
    if errors:
        raise CatalogError(*errors)
    return valid


def load_merchants(path: Path) -> dict[str, Merchant]:
    """Read a merchants file (YAML or JSON); relative paths in it are relative to its folder."""
    configs = merchant_configs(read_document(path), path)
    return {mid: m.build(mid, path.parent) for mid, m in validate_merchants(configs).items()}


def catalog_record_schema() -> dict:
    """The JSON Schema (draft 2020-12) of a promotion-catalog record: one merchant's config."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://nextbest.dev/schemas/catalog.v1.json",
        **MerchantConfig.model_json_schema(),
    }


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
