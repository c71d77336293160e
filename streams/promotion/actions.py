"""The promotion policy's actions for one cart, and what each would cost the shop.

For a cart the merchant's catalog (``streams.merchants.catalog``) allows these actions:

* ``none`` -- no offer;
* ``free_shipping:<promotion>`` / ``percent_off:<promotion>`` -- every active tier whose
  minimum spend the cart reaches;
* ``threshold_nudge:<promotion>`` -- "add £X for <tier>": the nearest better tier at most
  ``merchant.nudge_max_gap`` above the cart (the rules policy's nudge);
* ``product_coupon:<promotion>`` -- ``percent`` off the product the next-purchase model
  predicts the customer picks next (only when a candidate product is known).

Cost model. Money is in the merchant's currency; baskets are valued at list price. When the
customer buys with the offer redeemed the basket is ``basket`` (a nudge: the tier's minimum
spend; a product coupon: the cart plus the product) and the shop pays ``discount``: the
shipping it covers, ``percent`` of the basket, or ``percent`` of the product's price, capped by
the promotion's ``max_discount``. The shop keeps ``margin_rate * basket - discount``; with no
offer it keeps ``margin_rate * cart value``. ``discount`` is also the most the offer may cost:
the amount reserved from the promotion's budget and the cap stated on the offer.
"""

from __future__ import annotations

from dataclasses import dataclass

from streams.decisions import Offer, customer_value, describe, money
from streams.merchants.catalog import Merchant, Promotion

NONE = "none"
#: Discounts are rounded to the cent, so 15% of £123.43 is £18.51, 0.14996 of it: a depth
#: test allows that half cent (`reaches_depth`).
HALF_CENT = 0.005
KINDS = (NONE, "free_shipping", "percent_off", "threshold_nudge", "product_coupon")


@dataclass(frozen=True)
class CouponCandidate:
    """The next-purchase model's product for a coupon: id, P(next pick) and list price."""

    product_id: str
    probability: float
    price: float | None = None


def reaches_depth(discount, basket, depth: float):  # floats or numpy arrays alike
    """Whether a discount rounded to the cent is at least ``depth`` of its basket (no
    discount never is)."""
    return (discount > 0) & (discount + HALF_CENT >= depth * basket)


@dataclass(frozen=True)
class Action:
    """One thing the policy may do for a cart, with its economics (see the module doc)."""

    id: str  # "none" or "<kind>:<promotion id>": also the bandit's arm for this action
    kind: str
    cart_value: float
    basket: float
    discount: float = 0.0
    promotion: Promotion | None = None
    product_id: str | None = None
    probability: float | None = None  # product coupon: P(the product is the next pick)
    gap: float | None = None  # threshold nudge: amount to add to reach the tier

    @property
    def depth(self) -> float:
        """Discount as a share of the basket (0 for no offer)."""
        return self.discount / self.basket if self.basket > 0 else 0.0

    def is_deep(self, depth: float) -> bool:
        """Whether the discount is at least ``depth`` of the basket (`reaches_depth`)."""
        return bool(reaches_depth(self.discount, self.basket, depth))

    def margin(self, margin_rate: float) -> float:
        """What the shop keeps if the customer buys with this offer redeemed."""
        return margin_rate * self.basket - self.discount


def no_offer(cart_value: float) -> Action:
    return Action(id=NONE, kind=NONE, cart_value=cart_value, basket=cart_value)


def _capped(amount: float, promotion: Promotion) -> float:
    if promotion.max_discount is not None:
        amount = min(amount, promotion.max_discount)
    return round(amount, 2)


def tier_discount(promotion: Promotion, basket: float, merchant: Merchant) -> float:
    """What a free-shipping or %-off tier costs the shop on a basket of ``basket``."""
    return _capped(customer_value(promotion, basket, merchant), promotion)


def _tier_action(promotion: Promotion, cart_value: float, merchant: Merchant) -> Action:
    return Action(
        id=f"{promotion.type}:{promotion.id}",
        kind=promotion.type,
        cart_value=cart_value,
        basket=cart_value,
        discount=tier_discount(promotion, cart_value, merchant),
        promotion=promotion,
    )


def _nudge(merchant: Merchant, active: list[Promotion], cart_value: float) -> Action | None:
    reached = [p for p in active if p.min_spend <= cart_value]
    best = max((customer_value(p, cart_value, merchant) for p in reached), default=0.0)
    within_reach = [
        p
        for p in active
        if 0 < p.min_spend - cart_value <= merchant.nudge_max_gap
        and customer_value(p, p.min_spend, merchant) > best
    ]
    if not within_reach:
        return None
    target = min(within_reach, key=lambda p: p.min_spend)
    return Action(
        id=f"threshold_nudge:{target.id}",
        kind="threshold_nudge",
        cart_value=cart_value,
        basket=target.min_spend,
        discount=tier_discount(target, target.min_spend, merchant),
        promotion=target,
        gap=round(target.min_spend - cart_value, 2),
    )


def _coupon(promotion: Promotion, cart_value: float, candidate: CouponCandidate) -> Action | None:
    """Without a known price the coupon is valued at its cap (no cap and no price: skipped)."""
    if candidate.price is not None and candidate.price > 0:
        price = candidate.price
        discount = _capped(price * promotion.percent / 100.0, promotion)
    elif promotion.max_discount is not None:
        discount = promotion.max_discount
        price = discount * 100.0 / promotion.percent
    else:
        return None
    return Action(
        id=f"product_coupon:{promotion.id}",
        kind="product_coupon",
        cart_value=cart_value,
        basket=round(cart_value + price, 2),
        discount=discount,
        promotion=promotion,
        product_id=candidate.product_id,
        probability=candidate.probability,
    )


def candidate_actions(
    merchant: Merchant,
    cart_value: float,
    currency: str,
    ts: float,
    coupon: CouponCandidate | None = None,
    cart_products: frozenset[str] = frozenset(),
) -> list[Action]:
    """Every action the catalog allows for this cart; ``none`` always comes first."""
    actions = [no_offer(cart_value)]
    if cart_value <= 0 or currency != merchant.currency:
        return actions
    active = [p for p in merchant.promotions if p.active(ts)]
    actions += [_tier_action(p, cart_value, merchant) for p in active if p.min_spend <= cart_value]
    nudge = _nudge(merchant, active, cart_value)
    if nudge is not None:
        actions.append(nudge)
    if coupon is not None and coupon.product_id not in cart_products:
        for promotion in merchant.product_coupons:
            if promotion.active(ts) and promotion.min_spend <= cart_value:
                action = _coupon(promotion, cart_value, coupon)
                if action is not None:
                    actions.append(action)
    return actions


def offer_for(action: Action, currency: str) -> Offer | None:
    """The `Offer` the agent emits for an action (None for no offer)."""
    promotion = action.promotion
    if promotion is None:
        return None
    cap = f" (up to {money(action.discount, currency)})" if action.discount > 0 else ""
    if action.kind == "threshold_nudge":
        return Offer(
            offer_type="threshold_nudge",
            promotion_id=promotion.id,
            message=f"Add {money(action.gap or 0.0, currency)} more for {describe(promotion)}",
            reason=f"promotion policy: nudge to the {money(promotion.min_spend, currency)} tier "
            f"of {promotion.id}",
            percent_off=promotion.percent or None,
            amount_to_next_tier=action.gap,
            max_discount=action.discount,
        )
    if action.kind == "product_coupon":
        return Offer(
            offer_type="product_coupon",
            promotion_id=promotion.id,
            message=f"{promotion.percent:g}% off {action.product_id}{cap}",
            reason=f"promotion policy: coupon on the predicted next product {action.product_id}",
            percent_off=promotion.percent,
            recommendations=(action.product_id,) if action.product_id else (),
            max_discount=action.discount,
            product_id=action.product_id,
        )
    return Offer(
        offer_type=promotion.type,
        promotion_id=promotion.id,
        message=f"You've unlocked {describe(promotion)}"
        + (cap if promotion.type == "percent_off" else ""),
        reason=f"promotion policy: {promotion.id} on a {money(action.cart_value, currency)} cart",
        percent_off=promotion.percent or None,
        max_discount=action.discount,
    )
