"""The promotion policy's objective: expected incremental profit of an offer over a horizon.

For a cart of value ``V`` and an action ``a`` (``streams.promotion.actions``: basket ``B_a``,
discount
``D_a``, depth ``g_a = D_a / B_a``), with the shop's margin rate ``m``::

    profit(a)      = P(buy | a) * [rho_a * (m * B_a - D_a) + (1 - rho_a) * m * V]
    incremental(a) = profit(a) - profit(none) - future(a) - deep(a)
    future(a)      = dependency_cost * g_a * rho_a * P(buy | a) * H
                   + cannibalization * R * m * I_a * rho_a * P(buy | a)

``rho_a`` is the share of purchases made with the offer actually redeemed (a nudged customer
may buy without topping up; 1 for no offer). With ``rho_a = 1`` this is the issue's
``P(buy | offer) * (margin - offer cost) - P(buy | no offer) * margin`` plus a future term.

The future term prices discount dependency: a redeemed discount of depth ``g`` teaches the
customer to wait for the next one, and costs ``dependency_cost * g`` of the margin ``H`` the
customer would bring over the horizon without offers (``horizon_margin``: their order rate
times their average order value times ``m`` over ``horizon_weeks``, 10 by default). A
``dependency_cost`` of 0.5 means that redeeming 20% off costs 10% of the customer's coming
ten weeks of margin. It is configured, not learned online: rewards arrive within an offer's
attribution window, and the long-run effect needs the holdout's ten-week comparison to
estimate (see ``nextbest simulate`` for what it changes when customers do habituate).

The second future term prices a product coupon's cannibalisation: the coupon is on the
product the next-purchase model expects the customer to pick next (list price ``I_a``; 0 for
other actions). Redeemed now, it is a sale the customer would otherwise have made at full
price on their next order, if that order comes within the horizon: probability ``R =
repurchase_probability`` (1 - exp(-order rate * horizon weeks), from the customer's history).
``cannibalization`` (default 1) is the share of those sales lost.

``deep(a)`` is the merchant's price of a deep discount (`DeepDiscount`, from the merchants
file): an offer worth at least ``deep_discount_depth`` of its basket (15% by default) must
earn ``deep_discount_cost`` x the cart's value (2% by default) more than the best other offer
to be chosen. It is charged when the offer is made, redeemed or not: what it prices is not one
customer's habituation (the dependency term does that) but a shop that hands out deep
discounts where a smaller incentive earns almost as much -- the product's "never 20% off
where 10% would convert". The simulator's benchmark shows what it costs (BENCHMARKS.md).

``P(buy | a)`` and ``rho_a`` come from the response model (``streams.promotion.bandit``); everything
here is plain arithmetic over arrays, so the same code scores one posterior draw or thousands.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from streams.promotion.actions import Action, reaches_depth

WEEK_S = 7 * 86400.0


@dataclass(frozen=True)
class ObjectiveConfig:
    horizon_weeks: float = 10.0
    dependency_cost: float = 0.5
    cannibalization: float = 1.0
    #: Orders per week assumed for a customer with no order history (UCI Online Retail's
    #: customers place 4.27 orders a year on average: 0.08 a week).
    default_weekly_orders: float = 0.08
    #: A history shorter than this many weeks is stretched to it when estimating the rate.
    min_history_weeks: float = 4.0

    def __post_init__(self) -> None:
        if self.horizon_weeks <= 0 or self.dependency_cost < 0 or self.default_weekly_orders < 0:
            raise ValueError("horizon_weeks must be > 0; dependency_cost, orders per week >= 0")


def order_rate(state: dict, ts: float, config: ObjectiveConfig) -> float:
    """The customer's orders per week from their history (a default without one)."""
    rfm = state.get("rfm") or {}
    frequency = rfm.get("frequency") or 0
    if frequency > 0 and rfm.get("first") is not None:
        return frequency / max((ts - rfm["first"]) / WEEK_S, config.min_history_weeks)
    return config.default_weekly_orders


def horizon_margin(
    state: dict, cart_value: float, ts: float, margin_rate: float, config: ObjectiveConfig
) -> float:
    """Margin the customer is expected to bring over the horizon without any offer."""
    rfm = state.get("rfm") or {}
    frequency = rfm.get("frequency") or 0
    order_value = max(rfm.get("monetary", 0.0), 0.0) / frequency if frequency else cart_value
    return order_rate(state, ts, config) * config.horizon_weeks * order_value * margin_rate


def repurchase_probability(state: dict, ts: float, config: ObjectiveConfig) -> float:
    """P(the customer orders again within the horizon), orders being a Poisson process."""
    return 1.0 - math.exp(-order_rate(state, ts, config) * config.horizon_weeks)


@dataclass(frozen=True)
class Economics:
    """Per-action arrays of one cart, in the order of its actions (``none`` first)."""

    basket: np.ndarray
    discount: np.ndarray
    depth: np.ndarray
    item: np.ndarray  # list price of a coupon's product (0 for other actions)
    cart_value: float

    @classmethod
    def of(cls, actions: Sequence[Action]) -> Economics:
        if not actions or actions[0].kind != "none":
            raise ValueError("the first action must be 'none'")
        return cls(
            basket=np.array([a.basket for a in actions], dtype=np.float64),
            discount=np.array([a.discount for a in actions], dtype=np.float64),
            depth=np.array([a.depth for a in actions], dtype=np.float64),
            item=np.array(
                [a.basket - a.cart_value if a.kind == "product_coupon" else 0.0 for a in actions]
            ),
            cart_value=actions[0].cart_value,
        )


@dataclass(frozen=True)
class DeepDiscount:
    """The merchant's price of a deep discount (``Merchant.deep_discount_*``)."""

    depth: float
    cost: float

    def premium(self, economics: Economics) -> np.ndarray:
        """Per action: ``cost`` x the cart's value for a deep discount, else 0."""
        return (
            self.cost
            * economics.cart_value
            * reaches_depth(economics.discount, economics.basket, self.depth)
        )


def expected_profit(
    p_buy: np.ndarray, redeem_share: np.ndarray, economics: Economics, margin_rate: float
) -> np.ndarray:
    """``profit(a)`` for every action (last axis), for any leading shape of ``p_buy``."""
    with_offer = margin_rate * economics.basket - economics.discount
    without = margin_rate * economics.cart_value
    return p_buy * (redeem_share * with_offer + (1.0 - redeem_share) * without)


def incremental_profit(
    p_buy: np.ndarray,
    redeem_share: np.ndarray,
    economics: Economics,
    margin_rate: float,
    horizon: float,
    config: ObjectiveConfig,
    repurchase: float = 0.0,
    deep: DeepDiscount | None = None,
) -> np.ndarray:
    """``incremental(a)`` for every action (last axis; column 0, no offer, is 0)."""
    profit = expected_profit(p_buy, redeem_share, economics, margin_rate)
    lost = (
        config.dependency_cost * economics.depth * horizon
        + config.cannibalization * repurchase * margin_rate * economics.item
    )
    premium = 0.0 if deep is None else deep.premium(economics)
    return profit - profit[..., :1] - lost * redeem_share * p_buy - premium
