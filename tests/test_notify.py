"""From an offer to a notification: consent, channel choice, frequency cap and dedupe."""

from __future__ import annotations

import dataclasses

import pytest

from streams.decisions import Offer
from streams.merchants.catalog import DEFAULT_MERCHANTS, FrequencyCap, Merchant, load_merchants
from streams.outreach.delivery import (
    Send,
    Suppressed,
    choose_channel,
    consented_channels,
    dedupe_key,
    plan_delivery,
)
from streams.state import customer_state

T0 = 1_322_734_800.0  # 2011-12-01 10:20 UTC
DAY = 24 * 3600.0
CUSTOMER = "uci-gift-shop:c:17850"
OFFER = Offer("free_shipping", "free-shipping-60", "You've unlocked free shipping", "reason")
ALL_CHANNELS = {"email": "a@example.com", "push": "tok-1", "sms": "+447700900123", "in_app": True}


@pytest.fixture(scope="module")
def shop() -> Merchant:
    return load_merchants(DEFAULT_MERCHANTS)["uci-gift-shop"]


def state_with(channels: dict | None = None, preferred=None, opted_out=False) -> dict:
    state = customer_state.new_state()
    if channels is not None:
        state["profile"] = {
            "channels": channels,
            "preferred": preferred,
            "time_zone": None,
            "opted_out": opted_out,
        }
    return state


def plan(state: dict, merchant: Merchant, cart_event_id="cart-1", ts=T0, offer=OFFER):
    return plan_delivery(state, merchant, CUSTOMER, offer, cart_event_id, ts)


def test_no_profile_means_no_consent(shop):
    assert plan(customer_state.new_state(), shop) == Suppressed("no_consent")


def test_opted_out_wins_over_consent(shop):
    assert plan(state_with(ALL_CHANNELS, "email", opted_out=True), shop) == Suppressed("opted_out")


@pytest.mark.parametrize(
    "channels",
    [{}, {"email": None, "push": "", "sms": None, "in_app": False}, None],
)
def test_profile_without_any_consented_channel(shop, channels):
    state = state_with({})
    state["profile"]["channels"] = channels
    assert plan(state, shop) == Suppressed("no_consent")


def test_consented_channels():
    assert consented_channels({"channels": ALL_CHANNELS}) == {
        "push": "tok-1",
        "email": "a@example.com",
        "sms": "+447700900123",
        "in_app": "in-app",
    }
    assert consented_channels({"channels": {"email": "", "in_app": False}}) == {}
    assert consented_channels({}) == {}


def test_preferred_channel_is_used_when_consented(shop):
    result = plan(state_with(ALL_CHANNELS, preferred="sms"), shop)
    assert isinstance(result, Send)
    assert (result.channel, result.address) == ("sms", "+447700900123")


@pytest.mark.parametrize(
    ("channels", "preferred", "expected"),
    [
        (ALL_CHANNELS, None, ("in_app", "in-app")),  # merchant order: in_app, push, email, sms
        ({"email": "a@example.com", "push": "tok-1"}, None, ("push", "tok-1")),
        ({"email": "a@example.com", "push": "tok-1"}, "sms", ("push", "tok-1")),  # no consent
        ({"email": "a@example.com", "sms": "+44"}, "push", ("email", "a@example.com")),
        ({"sms": "+44"}, None, ("sms", "+44")),
    ],
)
def test_merchant_channel_order_when_preference_unusable(shop, channels, preferred, expected):
    profile = state_with(channels, preferred)["profile"]
    assert choose_channel(profile, shop) == expected
    result = plan(state_with(channels, preferred), shop)
    assert (result.channel, result.address) == expected


def test_channel_outside_merchant_order_is_only_used_when_preferred(shop):
    email_only_shop = dataclasses.replace(shop, channel_order=("email",))
    assert choose_channel({"channels": {"push": "tok"}}, email_only_shop) is None
    assert plan(state_with({"push": "tok"}), email_only_shop) == Suppressed("no_consent")
    assert choose_channel({"channels": {"push": "tok"}, "preferred": "push"}, email_only_shop) == (
        "push",
        "tok",
    )


def test_frequency_cap_within_the_period_and_not_after(shop):
    assert shop.frequency_cap == FrequencyCap(max_messages=2, period_s=DAY)
    state = state_with(ALL_CHANNELS)
    first = plan(state, shop, "cart-1", T0)
    customer_state.record_message(state, first.channel, first.dedupe_key, T0)
    second = plan(state, shop, "cart-2", T0 + 60)
    assert isinstance(second, Send)
    customer_state.record_message(state, second.channel, second.dedupe_key, T0 + 60)
    assert plan(state, shop, "cart-3", T0 + 120) == Suppressed("frequency_cap")
    assert plan(state, shop, "cart-3", T0 + DAY - 1) == Suppressed("frequency_cap")
    # Exactly one period after the first message it no longer counts: one slot is free.
    assert isinstance(plan(state, shop, "cart-3", T0 + DAY), Send)
    assert isinstance(plan(state, shop, "cart-3", T0 + DAY + 61), Send)


def test_frequency_cap_of_one_message_per_hour(shop):
    hourly = dataclasses.replace(shop, frequency_cap=FrequencyCap(max_messages=1, period_s=3600))
    state = state_with(ALL_CHANNELS)
    customer_state.record_message(state, "email", "k", T0)
    assert plan(state, hourly, ts=T0 + 3599) == Suppressed("frequency_cap")
    assert isinstance(plan(state, hourly, ts=T0 + 3600), Send)


def test_dedupe_key_is_stable_and_distinguishes_its_inputs():
    key = dedupe_key("uci-gift-shop", CUSTOMER, OFFER, "cart-1")
    assert key == dedupe_key("uci-gift-shop", CUSTOMER, OFFER, "cart-1")
    assert len(key) == 24 and int(key, 16) >= 0
    # The key depends on the offer's identity only, not on its wording.
    reworded = dataclasses.replace(OFFER, message="other words", reason="other reason")
    assert dedupe_key("uci-gift-shop", CUSTOMER, reworded, "cart-1") == key
    others = {
        dedupe_key("uci-gift-shop", CUSTOMER, OFFER, "cart-2"),
        dedupe_key("other-shop", CUSTOMER, OFFER, "cart-1"),
        dedupe_key("uci-gift-shop", "uci-gift-shop:c:12345", OFFER, "cart-1"),
        dedupe_key(
            "uci-gift-shop", CUSTOMER, dataclasses.replace(OFFER, promotion_id="x"), "cart-1"
        ),
        dedupe_key("uci-gift-shop", CUSTOMER, dataclasses.replace(OFFER, offer_type="x"), "cart-1"),
    }
    assert key not in others and len(others) == 5


def test_delivery_carries_the_dedupe_key(shop):
    result = plan(state_with(ALL_CHANNELS, "email"), shop)
    assert result == Send("email", "a@example.com", dedupe_key(shop.id, CUSTOMER, OFFER, "cart-1"))


def test_replayed_cart_event_is_a_duplicate(shop):
    state = state_with(ALL_CHANNELS, "email")
    first = plan(state, shop, "cart-1", T0)
    customer_state.record_message(state, first.channel, first.dedupe_key, T0)
    assert plan(state, shop, "cart-1", T0) == Suppressed("duplicate")
    # Duplicate detection does not expire with the frequency-cap period.
    assert plan(state, shop, "cart-1", T0 + 10 * DAY) == Suppressed("duplicate")
    # ... and comes before the cap: a replay is reported as a duplicate, not as capped.
    customer_state.record_message(state, "email", "other", T0 + 1)
    assert plan(state, shop, "cart-1", T0 + 2) == Suppressed("duplicate")
    assert plan(state, shop, "cart-9", T0 + 2) == Suppressed("frequency_cap")
