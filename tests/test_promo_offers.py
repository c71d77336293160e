"""Promotion actions per cart and their cost model; the objective; the context features."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.promotion.simulator import sim_merchant
from streams.promotion.actions import (
    CouponCandidate,
    candidate_actions,
    no_offer,
    offer_for,
    reaches_depth,
)
from streams.promotion.features import FEATURE_NAMES, context_features
from streams.promotion.objective import (
    DeepDiscount,
    Economics,
    ObjectiveConfig,
    expected_profit,
    horizon_margin,
    incremental_profit,
    repurchase_probability,
)
from streams.state.customer_state import apply_event, new_state
from tests.promo_fixtures import T0, shop


def ids(actions) -> list[str]:
    return [a.id for a in actions]


def test_tiers_reached_and_nudge_within_reach():
    merchant = shop()
    actions = candidate_actions(merchant, 160.0, "GBP", T0)
    assert ids(actions) == ["none", "free_shipping:fs", "percent_off:p10", "threshold_nudge:p15"]
    none, fs, p10, nudge = actions
    assert (none.basket, none.discount, none.depth) == (160.0, 0.0, 0.0)
    assert (fs.basket, fs.discount) == (160.0, 5.0)
    assert (p10.basket, p10.discount) == (160.0, 16.0)
    assert (nudge.basket, nudge.discount, nudge.gap) == (200.0, 30.0, 40.0)
    assert nudge.depth == pytest.approx(0.15)
    assert p10.margin(0.4) == pytest.approx(0.4 * 160 - 16)


def test_no_nudge_beyond_the_gap_and_nothing_for_other_currency_or_empty_cart():
    merchant = shop()
    assert ids(candidate_actions(merchant, 100.0, "GBP", T0)) == [
        "none",
        "free_shipping:fs",
        "percent_off:p10",
    ]
    assert ids(candidate_actions(merchant, 100.0, "EUR", T0)) == ["none"]
    assert ids(candidate_actions(merchant, 0.0, "GBP", T0)) == ["none"]


def test_validity_windows_and_caps():
    merchant = shop(
        promotions=[
            {"id": "p10", "type": "percent_off", "percent": 10, "max_discount": 12},
            {
                "id": "late",
                "type": "percent_off",
                "percent": 20,
                "valid_from": "2030-01-01T00:00:00Z",
            },
        ]
    )
    (none, p10) = candidate_actions(merchant, 500.0, "GBP", T0)
    assert p10.discount == 12.0  # capped
    assert none.id == "none"


def test_product_coupon_needs_a_candidate_not_in_the_cart():
    merchant = shop()
    coupon = CouponCandidate("SKU9", 0.3, price=20.0)
    actions = candidate_actions(merchant, 100.0, "GBP", T0, coupon)
    action = actions[-1]
    assert action.id == "product_coupon:coupon"
    assert (action.basket, action.discount, action.product_id) == (120.0, 4.0, "SKU9")
    in_cart = candidate_actions(merchant, 100.0, "GBP", T0, coupon, frozenset({"SKU9"}))
    assert "product_coupon:coupon" not in ids(in_cart)
    unpriced = candidate_actions(merchant, 100.0, "GBP", T0, CouponCandidate("SKU9", 0.3))
    assert unpriced[-1].discount == 5.0 and unpriced[-1].basket == 125.0  # valued at its cap
    expensive = candidate_actions(merchant, 100.0, "GBP", T0, CouponCandidate("X", 0.3, 100.0))
    assert expensive[-1].discount == 5.0  # 20% of 100, capped at 5


def test_offers_for_actions():
    merchant = shop()
    none, fs, p10, nudge = candidate_actions(merchant, 160.0, "GBP", T0)
    assert offer_for(none, "GBP") is None
    assert offer_for(fs, "GBP").key == "free_shipping:fs"
    offer = offer_for(p10, "GBP")
    assert (offer.offer_type, offer.percent_off) == ("percent_off", 10.0)
    assert "up to £16.00" in offer.message
    offer = offer_for(nudge, "GBP")
    assert (offer.offer_type, offer.amount_to_next_tier) == ("threshold_nudge", 40.0)
    assert offer.message.startswith("Add £40.00 more for")
    coupon = candidate_actions(merchant, 100.0, "GBP", T0, CouponCandidate("SKU9", 0.3, 20.0))[-1]
    offer = offer_for(coupon, "GBP")
    assert (offer.offer_type, offer.recommendations) == ("product_coupon", ("SKU9",))


# --- objective -------------------------------------------------------------------------------


def test_incremental_profit_is_the_documented_formula():
    merchant = shop()
    actions = candidate_actions(merchant, 160.0, "GBP", T0)
    economics = Economics.of(actions)
    p = np.array([0.30, 0.32, 0.40, 0.35])
    rho = np.array([1.0, 1.0, 1.0, 0.5])
    config = ObjectiveConfig(dependency_cost=0.5)
    horizon = 100.0
    got = incremental_profit(p, rho, economics, 0.4, horizon, config)
    m, v = 0.4, 160.0
    profit_none = 0.30 * m * v
    expected = [
        0.0,
        0.32 * (m * v - 5) - profit_none - 0.5 * (5 / 160) * 0.32 * horizon,
        0.40 * (m * v - 16) - profit_none - 0.5 * 0.10 * 0.40 * horizon,
        0.35 * (0.5 * (m * 200 - 30) + 0.5 * m * v)
        - profit_none
        - 0.5 * 0.15 * 0.5 * 0.35 * horizon,
    ]
    assert got == pytest.approx(expected)
    # without the future term and with rho = 1: P(buy|offer)(margin - cost) - P(buy|none) margin
    plain = incremental_profit(
        p, np.ones(4), economics, 0.4, horizon, ObjectiveConfig(dependency_cost=0.0)
    )
    assert plain[2] == pytest.approx(0.40 * (m * v - 16) - 0.30 * m * v)
    draws = incremental_profit(np.tile(p, (5, 1)), rho, economics, 0.4, horizon, config)
    assert draws.shape == (5, 4) and np.allclose(draws, got)
    assert expected_profit(p, rho, economics, 0.4)[0] == pytest.approx(profit_none)


def test_deep_discount_premium_is_charged_only_on_deep_offers():
    """Actions at 160: none, 5 off (3%), 10% off, a nudge to 15% off at 200 (deep)."""
    merchant = shop()
    economics = Economics.of(candidate_actions(merchant, 160.0, "GBP", T0))
    assert economics.depth[-1] == pytest.approx(0.15)
    p, rho = np.array([0.30, 0.32, 0.40, 0.35]), np.ones(4)
    config = ObjectiveConfig(dependency_cost=0.0)
    free = incremental_profit(p, rho, economics, 0.4, 0.0, config)
    priced = incremental_profit(
        p, rho, economics, 0.4, 0.0, config, deep=DeepDiscount(depth=0.15, cost=0.02)
    )
    assert priced[:3] == pytest.approx(free[:3])
    assert priced[3] == pytest.approx(free[3] - 0.02 * 160.0)
    assert DeepDiscount(depth=0.1, cost=0.02).premium(economics) == pytest.approx(
        [0.0, 0.0, 3.2, 3.2]
    )


def test_a_15_percent_offer_is_deep_at_15_percent_whatever_the_cents():
    """Discounts are rounded to the cent (15% of 300.03 is 45.00, 0.149985 of it): every 15%
    and 20% offer counts as deep at 15%, every 10% offer does not, and the premium follows."""
    merchant = sim_merchant()
    deep = DeepDiscount(depth=0.15, cost=0.02)
    seen = set()
    for cents in range(30_000, 50_000, 7):
        actions = candidate_actions(merchant, cents / 100, "GBP", T0)
        premium = deep.premium(Economics.of(actions))
        for action, charged in zip(actions, premium, strict=True):
            tier = action.promotion.percent if action.kind == "percent_off" else None
            if tier is None:
                continue
            seen.add(tier)
            assert action.is_deep(0.15) == (tier >= 15), (cents, action.id, action.depth)
            assert (charged > 0) == (tier >= 15)
    assert seen == {5.0, 10.0, 15.0, 20.0}
    assert reaches_depth(0.0, 0.0, 0.15) == False  # noqa: E712 - no discount is never deep


def test_economics_need_no_offer_first():
    merchant = shop()
    actions = candidate_actions(merchant, 160.0, "GBP", T0)
    with pytest.raises(ValueError):
        Economics.of(actions[1:])


def test_horizon_margin_from_the_customers_history():
    config = ObjectiveConfig(horizon_weeks=10)
    state = new_state()
    assert horizon_margin(state, 50.0, T0, 0.4, config) == pytest.approx(0.08 * 10 * 50 * 0.4)
    week = 7 * 86400.0
    for k, total in enumerate([100.0, 300.0]):
        apply_event(
            state,
            "orders",
            {
                "event_id": f"o{k}",
                "event_type": "order",
                "order_id": f"o{k}",
                "lines": [{"product_id": "A", "quantity": 1, "unit_price": total}],
                "total": total,
                "currency": "GBP",
                "_ts": T0 - (20 - 10 * k) * week,
            },
        )
    # 2 orders over the 20 weeks since the first: 0.1/week, average order 200
    assert horizon_margin(state, 50.0, T0, 0.4, config) == pytest.approx(0.1 * 10 * 200 * 0.4)


def test_objective_config_is_checked():
    with pytest.raises(ValueError):
        ObjectiveConfig(horizon_weeks=0)
    with pytest.raises(ValueError):
        ObjectiveConfig(dependency_cost=-1)


# --- features --------------------------------------------------------------------------------


class Signals:
    purchase_propensity = 0.7
    coupon_probability = 0.25


def test_features_of_a_new_customer_and_with_signals():
    state = new_state()
    values = context_features(state, 80.0, T0)
    named = dict(zip(FEATURE_NAMES, values, strict=True))
    assert len(values) == len(FEATURE_NAMES)
    assert named["has_orders"] == 0.0 and named["recency"] == 1.0 and named["frequency"] == 0.0
    assert named["cart_value"] == pytest.approx(math.log1p(80) / 10)
    assert named["has_signals"] == 0.0 and named["propensity"] == 0.0
    named = dict(zip(FEATURE_NAMES, context_features(state, 80.0, T0, Signals()), strict=True))
    assert (named["has_signals"], named["propensity"], named["coupon_probability"]) == (
        1,
        0.7,
        0.25,
    )


def test_features_reflect_history_offers_and_session():
    state = new_state()
    apply_event(
        state,
        "orders",
        {
            "event_id": "o1",
            "event_type": "order",
            "order_id": "o1",
            "lines": [{"product_id": "A", "quantity": 1, "unit_price": 100.0}],
            "total": 100.0,
            "currency": "GBP",
            "_ts": T0 - 30 * 86400.0,
        },
    )
    state["offers"].update(received=4, delivered=4, redeemed=2, opened=3)
    state["offers"]["last"] = {"offer_id": "x", "key": "k", "ts": T0 - 86400.0}
    named = dict(zip(FEATURE_NAMES, context_features(state, 300.0, T0), strict=True))
    assert named["has_orders"] == 1.0
    assert named["recency"] == pytest.approx(math.log1p(30) / math.log1p(365))
    assert named["cart_vs_usual"] == pytest.approx(math.log(3.0) / 3.0)
    assert named["redeem_rate"] == pytest.approx(2.1 / 5)
    assert named["open_rate"] == pytest.approx(3.1 / 5)
    assert named["days_since_offer"] == pytest.approx(math.log1p(1) / math.log1p(365))
    assert all(math.isfinite(v) and -1.0 <= v <= 1.5 for v in named.values())


def test_no_offer_action():
    action = no_offer(42.0)
    assert (action.id, action.kind, action.basket, action.promotion) == ("none", "none", 42.0, None)


def test_coupon_cannibalisation_term():
    merchant = shop()
    coupon = CouponCandidate("SKU9", 0.3, price=20.0)
    actions = candidate_actions(merchant, 100.0, "GBP", T0, coupon)
    economics = Economics.of(actions)
    assert economics.item.tolist() == [0.0, 0.0, 0.0, 20.0]
    p = np.array([0.3, 0.3, 0.3, 0.3])
    rho = np.array([1.0, 1.0, 1.0, 0.5])
    config = ObjectiveConfig(dependency_cost=0.0, cannibalization=1.0)
    without = incremental_profit(p, rho, economics, 0.4, 0.0, config, repurchase=0.0)
    with_loss = incremental_profit(p, rho, economics, 0.4, 0.0, config, repurchase=0.6)
    # redeemed coupon: +20 of basket at 40% margin, -4 discount; lost later: 0.6 * 0.4 * 20
    assert without[3] == pytest.approx(0.3 * 0.5 * (0.4 * 20 - 4))
    assert with_loss[3] == pytest.approx(without[3] - 0.3 * 0.5 * 0.6 * 0.4 * 20)
    assert with_loss[:3] == pytest.approx(without[:3])


def test_repurchase_probability_from_the_order_rate():
    config = ObjectiveConfig(horizon_weeks=10, default_weekly_orders=0.08)
    assert repurchase_probability(new_state(), T0, config) == pytest.approx(1 - math.exp(-0.8))
