"""Engagement actions of the merchant catalog: what a shop asks of a customer beyond buying
with a discount (join the loyalty programme, install the app, subscribe to the newsletter,
explore a category), ranked per customer by ``streams.engagement.ranking``.

"Engagement action" keeps them apart from the promotion policy's actions (an offer kind or no
offer, ``streams.promotion.actions``). In a merchant's config::

    engagement_actions:
      - id: join-loyalty
        kind: loyalty
        title: Join our loyalty club
        value: 12.0                 # what a take is worth to the shop (money or a proxy)
        prior_take_rate: 0.05       # P(take) before any feedback: ranks from the first event
        channels: [in_app, email]
        eligibility: {min_orders: 1}
      - id: explore-candles
        kind: category
        title: Discover our candles
        value: 3.0
        eligibility: {not_bought: "^CANDLE"}
    engagement:
      ranking: expected_value       # or propensity (Amazon Personalize's way)
      combine: offer_first          # or both, or best_value
      on_cart: true                 # rank on cart decisions (the API ranks either way)
      in_journeys: false            # journeys' messages carry the first action of their channel
      take_window_hours: 72         # a take within this long of a showing is its reward

The pydantic models validate (unknown keys, types and ranges are errors naming the field,
``streams.merchants.strict``) and build the frozen dataclasses the domain reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from streams.merchants.strict import Channel, ConfigModel, Positive

EngagementKind = Literal["loyalty", "app", "newsletter", "category", "custom"]
RankingMode = Literal["expected_value", "propensity"]
CombineRule = Literal["offer_first", "both", "best_value"]
#: kinds a customer takes once: a member, an app user, a subscriber stays one
TAKEN_ONCE_KINDS = ("loyalty", "app", "newsletter")


@dataclass(frozen=True)
class Eligibility:
    """Who may be shown an action: ``once`` (never again after a take: not already a member),
    an order count between ``min_orders`` and ``max_orders``, no product matching
    ``not_bought`` in the order history (a category not yet bought), not within
    ``dismissed_cooldown_s`` of a dismissal."""

    once: bool = True
    min_orders: int = 0
    max_orders: int | None = None
    not_bought: str | None = None
    dismissed_cooldown_s: float = 7 * 86400.0
    not_bought_rule: re.Pattern[str] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class EngagementAction:
    id: str
    kind: str
    title: str
    value: float  # to the shop, per take: money (the merchant's currency) or the configured proxy
    prior_take_rate: float = 0.05
    channels: tuple[str, ...] = ("in_app",)
    eligibility: Eligibility = field(default_factory=Eligibility)


@dataclass(frozen=True)
class EngagementOptions:
    """How a merchant's engagement actions are ranked and served (see the module doc)."""

    ranking: str = "expected_value"
    combine: str = "offer_first"
    on_cart: bool = False
    in_journeys: bool = False
    take_window_s: float = 72 * 3600.0
    attach: int = 3  # ranked actions written on a record


def _pattern(value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
    return value


Pattern = Annotated[str, Field(min_length=1), AfterValidator(_pattern)]


class EligibilityConfig(ConfigModel):
    """Who may be shown the action."""

    once: bool | None = None
    """Not shown again once taken (default: true for loyalty, app and newsletter)."""
    min_orders: Annotated[int, Field(ge=0)] = Eligibility.min_orders
    max_orders: Annotated[int, Field(ge=0)] | None = None
    not_bought: Pattern | None = None
    """A regular expression on product ids (matched at the start, ignoring case): eligible only
    while no order holds such a product (a category not yet bought)."""
    dismissed_cooldown_days: Annotated[float, Field(ge=0)] = (
        Eligibility.dismissed_cooldown_s / 86400.0
    )

    @model_validator(mode="after")
    def _order_range(self) -> EligibilityConfig:
        if self.max_orders is not None and self.max_orders < self.min_orders:
            raise ValueError(f"max_orders ({self.max_orders}) is below min_orders")
        return self

    def build(self, kind: str) -> Eligibility:
        once = self.once if self.once is not None else kind in TAKEN_ONCE_KINDS
        rule = re.compile(self.not_bought, re.IGNORECASE) if self.not_bought else None
        return Eligibility(
            once=once,
            min_orders=self.min_orders,
            max_orders=self.max_orders,
            not_bought=self.not_bought,
            dismissed_cooldown_s=self.dismissed_cooldown_days * 86400.0,
            not_bought_rule=rule,
        )


class EngagementActionConfig(ConfigModel):
    """A non-discount action the shop asks of a customer."""

    id: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^:\s]+$")]
    """Unique per merchant; no ':' or spaces."""
    kind: EngagementKind
    title: Annotated[str, Field(min_length=1)]
    """What the customer is shown."""
    value: Annotated[float, Field(gt=0)]
    """What one take is worth to the shop: money in the merchant's currency, or the proxy the
    merchant ranks by (the same unit for all its actions)."""
    prior_take_rate: Annotated[float, Field(gt=0, lt=1)] = EngagementAction.prior_take_rate
    """P(take) before any feedback was learned (the prior's mean)."""
    channels: Annotated[list[Channel], Field(min_length=1)] = list(EngagementAction.channels)
    """Where it may be shown: in_app (in session), and the message channels for journeys."""
    eligibility: Annotated[EligibilityConfig, Field(validate_default=True)] = EligibilityConfig()

    @field_validator("eligibility")
    @classmethod
    def _category(cls, eligibility: EligibilityConfig, info: ValidationInfo) -> EligibilityConfig:
        if info.data.get("kind") == "category" and eligibility.not_bought is None:
            raise ValueError("a category action needs not_bought (the category's products)")
        return eligibility

    def build(self) -> EngagementAction:
        return EngagementAction(
            id=self.id,
            kind=self.kind,
            title=self.title,
            value=self.value,
            prior_take_rate=self.prior_take_rate,
            channels=tuple(self.channels),
            eligibility=self.eligibility.build(self.kind),
        )


class EngagementConfig(ConfigModel):
    """How the merchant's engagement actions are ranked and served."""

    ranking: RankingMode = "expected_value"
    """``expected_value``: P(take) x value; ``propensity``: P(take) alone (Personalize's way)."""
    combine: CombineRule = "offer_first"
    """On a cart decision: ``offer_first`` (an offer goes alone; a cart without one gets the
    top action), ``both`` (an offer carries the ranked actions; without one, the top action)
    or ``best_value`` (the top action goes alone when its P(take) x value exceeds the offer's
    expected incremental value as the promotion policy scores it, else the offer alone; action
    values in money)."""
    on_cart: bool = False
    """Rank on cart decisions (``GET /next-best-actions`` ranks either way)."""
    in_journeys: bool = False
    """Journeys' messages carry the first-ranked action of those shown on their channel."""
    take_window_hours: Positive = 72.0
    """A take within this long of a showing is that showing's reward."""
    attach: Annotated[int, Field(ge=1, le=10)] = EngagementOptions.attach
    """Ranked actions written on a promotion record."""

    def build(self) -> EngagementOptions:
        return EngagementOptions(
            ranking=self.ranking,
            combine=self.combine,
            on_cart=self.on_cart,
            in_journeys=self.in_journeys,
            take_window_s=self.take_window_hours * 3600.0,
            attach=self.attach,
        )


def unique_action_ids(actions: list[EngagementActionConfig]) -> list[EngagementActionConfig]:
    """The validator of ``engagement_actions``: ids are unique."""
    ids = [a.id for a in actions]
    if twice := sorted({i for i in ids if ids.count(i) > 1}):
        raise ValueError(f"duplicate engagement action ids {twice}")
    return actions
