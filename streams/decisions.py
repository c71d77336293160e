"""Cart decisions: which offer, if any, to make for a cart change.

Agents only see the ``Policy`` protocol: a batch of ``DecisionContext`` in, one ``Offer`` or
``None`` per context out. The threshold-rules policy here is the first implementation; the
next-purchase and promotion models plug in as other policies (or wrap this one) without any
change to the agents. Batches let model-backed policies run inference once per micro-batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from streams.merchants.catalog import Merchant, Promotion


@dataclass
class ValueContest:
    """An engagement action competing with the policy's offer for one cart (the merchant's
    ``engagement.combine: best_value``): the caller sets ``action_value`` (the first-ranked
    action's P(take) x value); a policy that makes an offer fills in ``offer_value`` and the
    ``winner`` (`decide`). ``winner`` None: no offer competed (none chosen, the holdout, a
    repeat), so the action goes out as on any cart without an offer."""

    action_value: float
    offer_value: float | None = None
    winner: str | None = None  # "action" | "offer"

    def decide(self, offer_value: float | None) -> bool:
        """Whether the offer goes out: its expected incremental value to the shop is at least
        the action's (None: the policy did not score it, and the offer goes out)."""
        self.offer_value = offer_value
        offer_wins = offer_value is None or offer_value >= self.action_value
        self.winner = "offer" if offer_wins else "action"
        return offer_wins


@dataclass(frozen=True)
class DecisionContext:
    merchant: Merchant
    customer_key: str
    state: dict
    cart_value: float
    currency: str
    ts: float
    cart_event_id: str
    # The cart generation the cart event left, when the caller emits the offer only if this cart
    # did not get the same offer before (``customer_state.record_offer``); None: no such rule.
    generation: int | None = None
    # The parts of the customer's state a decision reads, as the cart event left them
    # (``customer_state.decision_view``: a later event of the same micro-batch, an order, may
    # change the state before the policy decides); None: read them from ``state``.
    as_of: dict | None = None
    # An engagement action competing with the offer (``combine: best_value``); None: none.
    contest: ValueContest | None = None

    @property
    def view(self) -> dict:
        """What the decision's inputs are read from: ``as_of``, else the state. The state
        itself is what a policy writes to (its ``"promo"`` part)."""
        return self.as_of if self.as_of is not None else self.state

    @classmethod
    def of_stored_cart(
        cls, merchant: Merchant, customer_key: str, state: dict, ts: float, cart_event_id: str
    ) -> DecisionContext:
        """The decision for the cart kept in ``state`` (an abandoned-cart reminder, the API's
        ``/best-promotion``), as of ``ts``; no repeated-offer rule."""
        cart = state["cart"]
        return cls(
            merchant=merchant,
            customer_key=customer_key,
            state=state,
            cart_value=cart["value"],
            currency=cart["currency"] or merchant.currency,
            ts=ts,
            cart_event_id=cart_event_id,
        )


#: An offer's add-on sources: bought with the cart's products by other customers
#: (`models.next_purchase.similar_items`), or the customer's predicted next purchase.
BOUGHT_TOGETHER = "bought_together"
NEXT_PURCHASE = "next_purchase"


@dataclass(frozen=True)
class Offer:
    offer_type: str  # "free_shipping" | "percent_off" | "threshold_nudge" | "product_coupon"
    promotion_id: str
    message: str
    reason: str
    percent_off: float | None = None
    amount_to_next_tier: float | None = None
    recommendations: tuple[str, ...] = field(default_factory=tuple)
    max_discount: float | None = None  # the most the discount may be (promotion policy)
    product_id: str | None = None  # a product coupon's product (promotion policy)
    #: where each of ``recommendations`` comes from (`BOUGHT_TOGETHER`, `NEXT_PURCHASE`);
    #: empty when the offer does not say
    recommendation_sources: tuple[str, ...] = field(default_factory=tuple)

    @property
    def key(self) -> str:
        """Identity of the offer for one cart: the same key is never emitted twice per cart."""
        return f"{self.offer_type}:{self.promotion_id}"

    def event_fields(self) -> dict:
        """Fields this offer adds to its promotion event beyond the common ones (a subclass's
        extra signals, e.g. the next-purchase model's): none."""
        return {}


def with_add_ons(offer: Offer, add_ons: Sequence[str], sources: Sequence[str]) -> Offer:
    """``offer`` carrying the cart's ``add_ons`` (with their ``sources``) after its own
    products (a product coupon's, the next-purchase model's pick), as many in all as the longer
    of the two. What the shop shows with the offer; nothing an offer is decided or deduplicated
    on (its `key`, type, promotion, discount) changes."""
    if not add_ons:
        return offer
    own = offer.recommendations
    own_sources = offer.recommendation_sources or (NEXT_PURCHASE,) * len(own)
    picks = [(p, s) for p, s in zip(add_ons, sources, strict=True) if p not in own]
    merged = [*zip(own, own_sources, strict=True), *picks][: max(len(own), len(add_ons))]
    return replace(
        offer,
        recommendations=tuple(p for p, _ in merged),
        recommendation_sources=tuple(s for _, s in merged),
    )


class Policy(Protocol):
    name: str

    def decide_batch(self, contexts: Sequence[DecisionContext]) -> list[Offer | None]: ...


def customer_value(promotion: Promotion, cart_value: float, merchant: Merchant) -> float:
    """What the promotion is worth to the customer on a cart of ``cart_value``."""
    if promotion.type == "free_shipping":
        return merchant.shipping_cost
    return cart_value * promotion.percent / 100.0


def describe(promotion: Promotion) -> str:
    if promotion.title:
        return promotion.title.lower() if promotion.type == "free_shipping" else promotion.title
    if promotion.type == "free_shipping":
        return "free shipping"
    return f"{promotion.percent:g}% off"


def money(amount: float, currency: str) -> str:
    symbol = {"GBP": "£", "EUR": "€", "USD": "$"}.get(currency)
    return f"{symbol}{amount:,.2f}" if symbol else f"{amount:,.2f} {currency}"


def threshold_offer(
    merchant: Merchant, cart_value: float, currency: str, ts: float
) -> Offer | None:
    """The best tier the cart has reached, or a nudge towards a better one within reach.

    A nudge wins when a better tier is at most ``merchant.nudge_max_gap`` away: it lifts the
    basket, and the shop pays only if the customer actually adds the amount.
    """
    if cart_value <= 0 or currency != merchant.currency:
        return None
    active = [p for p in merchant.promotions if p.active(ts)]
    reached = [p for p in active if p.min_spend <= cart_value]
    best = max(reached, key=lambda p: customer_value(p, cart_value, merchant), default=None)
    best_value = customer_value(best, cart_value, merchant) if best else 0.0
    within_reach = [
        p
        for p in active
        if 0 < p.min_spend - cart_value <= merchant.nudge_max_gap
        and customer_value(p, p.min_spend, merchant) > best_value
    ]
    if within_reach:
        target = min(within_reach, key=lambda p: p.min_spend)
        gap = round(target.min_spend - cart_value, 2)
        return Offer(
            offer_type="threshold_nudge",
            promotion_id=target.id,
            message=f"Add {money(gap, currency)} more for {describe(target)}",
            reason=f"cart {money(cart_value, currency)} is {money(gap, currency)} below the "
            f"{money(target.min_spend, currency)} threshold of {target.id}",
            percent_off=target.percent or None,
            amount_to_next_tier=gap,
        )
    if best is None:
        return None
    return Offer(
        offer_type=best.type,
        promotion_id=best.id,
        message=f"You've unlocked {describe(best)}",
        reason=f"cart {money(cart_value, currency)} reached the "
        f"{money(best.min_spend, currency)} minimum spend of {best.id}",
        percent_off=best.percent or None,
    )


class ThresholdRulesPolicy:
    """The merchant's catalog rules: best tier reached, or a nudge to the next one."""

    name = "threshold-rules/1"

    def decide_batch(self, contexts: Sequence[DecisionContext]) -> list[Offer | None]:
        return [threshold_offer(c.merchant, c.cart_value, c.currency, c.ts) for c in contexts]
