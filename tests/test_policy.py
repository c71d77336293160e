"""Threshold-rules policy: best tier reached, nudges, validity windows, batches."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from streams.decisions import (
    DecisionContext,
    Offer,
    ThresholdRulesPolicy,
    customer_value,
    describe,
    money,
    threshold_offer,
)
from streams.merchants.catalog import DEFAULT_MERCHANTS, Merchant, Promotion, load_merchants
from streams.state.customer_state import new_state


def ts(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


JUNE = ts(2011, 6, 1)  # outside the holiday promotion
DECEMBER = ts(2011, 12, 1)  # inside it
HOLIDAY_FROM, HOLIDAY_TO = ts(2011, 11, 1), ts(2011, 12, 25)


@pytest.fixture(scope="module")
def shop() -> Merchant:
    return load_merchants(DEFAULT_MERCHANTS)["uci-gift-shop"]


def test_no_offer_for_empty_cart_or_other_currency(shop):
    assert threshold_offer(shop, 0.0, "GBP", JUNE) is None
    assert threshold_offer(shop, -5.0, "GBP", JUNE) is None
    assert threshold_offer(shop, 700.0, "EUR", JUNE) is None


def test_no_offer_far_below_the_first_tier(shop):
    assert threshold_offer(shop, 10.0, "GBP", JUNE) is None
    assert threshold_offer(shop, 60.0 - shop.nudge_max_gap - 0.01, "GBP", JUNE) is None


@pytest.mark.parametrize(
    ("cart_value", "when", "offer_type", "promotion_id", "percent"),
    [
        (60.0, JUNE, "free_shipping", "free-shipping-60", None),  # min_spend is inclusive
        (100.0, JUNE, "free_shipping", "free-shipping-60", None),
        (200.0, JUNE, "percent_off", "five-off-150", 5.0),
        (450.0, JUNE, "percent_off", "ten-off-300", 10.0),
        (1000.0, JUNE, "percent_off", "fifteen-off-600", 15.0),  # holiday tier not active
        (5000.0, JUNE, "percent_off", "fifteen-off-600", 15.0),
        (1000.0, DECEMBER, "percent_off", "holiday-twenty-off-1000", 20.0),
        (1000.0, HOLIDAY_FROM, "percent_off", "holiday-twenty-off-1000", 20.0),  # from: inclusive
        (1000.0, HOLIDAY_TO, "percent_off", "fifteen-off-600", 15.0),  # to: exclusive
    ],
)
def test_best_reached_tier(shop, cart_value, when, offer_type, promotion_id, percent):
    offer = threshold_offer(shop, cart_value, "GBP", when)
    assert offer is not None
    assert (offer.offer_type, offer.promotion_id, offer.percent_off) == (
        offer_type,
        promotion_id,
        percent,
    )
    assert offer.amount_to_next_tier is None
    assert offer.message.startswith("You've unlocked ")
    assert promotion_id in offer.reason


def test_unlocked_messages(shop):
    free = threshold_offer(shop, 100.0, "GBP", JUNE)
    assert free.message == "You've unlocked free shipping"
    assert free.reason == "cart £100.00 reached the £60.00 minimum spend of free-shipping-60"
    assert threshold_offer(shop, 200.0, "GBP", JUNE).message == "You've unlocked 5% off"


@pytest.mark.parametrize(
    ("cart_value", "when", "promotion_id", "gap", "pct"),
    [
        (40.0, JUNE, "free-shipping-60", 20.0, None),
        (35.0, JUNE, "free-shipping-60", 25.0, None),  # gap == nudge_max_gap: still a nudge
        (59.99, JUNE, "free-shipping-60", 0.01, None),
        (130.0, JUNE, "five-off-150", 20.0, 5.0),  # 5% of 150 (7.50) beats shipping (6.95)
        (280.0, JUNE, "ten-off-300", 20.0, 10.0),
        (980.0, DECEMBER, "holiday-twenty-off-1000", 20.0, 20.0),
    ],
)
def test_nudge_towards_a_better_tier_within_reach(shop, cart_value, when, promotion_id, gap, pct):
    offer = threshold_offer(shop, cart_value, "GBP", when)
    assert offer is not None
    assert offer.offer_type == "threshold_nudge"
    assert offer.promotion_id == promotion_id
    assert offer.amount_to_next_tier == gap
    assert offer.percent_off == pct
    assert offer.message.startswith(f"Add £{gap:,.2f} more for ")


def test_nudge_message_and_reason(shop):
    offer = threshold_offer(shop, 40.0, "GBP", JUNE)
    assert offer.message == "Add £20.00 more for free shipping"
    assert offer.reason == ("cart £40.00 is £20.00 below the £60.00 threshold of free-shipping-60")


def test_inactive_holiday_tier_is_never_a_nudge_target(shop):
    offer = threshold_offer(shop, 980.0, "GBP", JUNE)
    assert (offer.offer_type, offer.promotion_id) == ("percent_off", "fifteen-off-600")


def test_nudge_only_when_the_better_tier_is_worth_more():
    merchant = Merchant(
        id="m",
        currency="GBP",
        shipping_cost=50.0,
        nudge_max_gap=30.0,
        promotions=(
            Promotion("ship", "free_shipping", min_spend=100.0),
            Promotion("five", "percent_off", min_spend=120.0, percent=5.0),
        ),
    )
    offer = threshold_offer(merchant, 110.0, "GBP", JUNE)
    assert (offer.offer_type, offer.promotion_id) == ("free_shipping", "ship")


def test_nearest_tier_wins_when_several_are_within_reach(shop):
    generous = dataclasses.replace(shop, nudge_max_gap=500.0)
    offer = threshold_offer(generous, 140.0, "GBP", JUNE)
    assert (offer.promotion_id, offer.amount_to_next_tier) == ("five-off-150", 10.0)


def test_no_nudges_when_the_gap_is_zero(shop):
    strict = dataclasses.replace(shop, nudge_max_gap=0.0)
    assert threshold_offer(strict, 59.0, "GBP", JUNE) is None
    assert threshold_offer(strict, 149.0, "GBP", JUNE).promotion_id == "free-shipping-60"


def test_merchant_without_promotions_makes_no_offer(shop):
    assert threshold_offer(dataclasses.replace(shop, promotions=()), 500.0, "GBP", JUNE) is None


def test_customer_value_describe_and_money(shop):
    free, five = shop.promotions[0], shop.promotions[1]
    assert customer_value(free, 1000.0, shop) == shop.shipping_cost
    assert customer_value(five, 200.0, shop) == 10.0
    assert describe(free) == "free shipping"  # title lower-cased inside a sentence
    assert describe(Promotion("p", "percent_off", 0.0, percent=12.5)) == "12.5% off"
    assert describe(Promotion("f", "free_shipping", 0.0)) == "free shipping"
    assert money(1234.5, "GBP") == "£1,234.50"
    assert money(3, "EUR") == "€3.00"
    assert money(0.1, "USD") == "$0.10"
    assert money(1234.5, "CHF") == "1,234.50 CHF"


def context(merchant: Merchant, cart_value: float, currency: str = "GBP", **kw) -> DecisionContext:
    return DecisionContext(
        merchant=merchant,
        customer_key=kw.get("customer_key", "uci-gift-shop:c:17850"),
        state=new_state(),
        cart_value=cart_value,
        currency=currency,
        ts=kw.get("ts", JUNE),
        cart_event_id=kw.get("cart_event_id", "e1"),
    )


def test_decide_batch_returns_one_result_per_context_in_order(shop):
    policy = ThresholdRulesPolicy()
    contexts = [
        context(shop, 0.0),
        context(shop, 40.0),
        context(shop, 200.0),
        context(shop, 200.0, "USD"),
        context(shop, 1000.0, ts=DECEMBER),
        context(shop, 1000.0),
    ]
    results = policy.decide_batch(contexts)
    assert len(results) == len(contexts)
    assert [r and r.promotion_id for r in results] == [
        None,
        "free-shipping-60",
        "five-off-150",
        None,
        "holiday-twenty-off-1000",
        "fifteen-off-600",
    ]
    for ctx, result in zip(contexts, results, strict=True):
        assert result == threshold_offer(ctx.merchant, ctx.cart_value, ctx.currency, ctx.ts)
    assert policy.decide_batch([]) == []
    assert policy.name == "threshold-rules/1"


def test_offer_key():
    offer = Offer("threshold_nudge", "five-off-150", "m", "r", percent_off=5.0)
    assert offer.key == "threshold_nudge:five-off-150"
    assert Offer("percent_off", "five-off-150", "x", "y").key == "percent_off:five-off-150"
    assert offer.recommendations == ()
