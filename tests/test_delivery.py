"""Delivery rules shared by every message source: quiet hours across zones, global cap, opt-out."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from streams.decisions import Offer
from streams.merchants.catalog import (
    DEFAULT_MERCHANTS,
    CatalogError,
    Merchant,
    load_merchants,
    parse_merchant,
)
from streams.merchants.options import QuietHours
from streams.outreach.delivery import (
    Held,
    Message,
    Send,
    Suppressed,
    decide,
    plan_delivery,
    safe_time,
)
from streams.state import customer_state

CHANNELS = {"email": "a@example.com", "push": "tok-1", "sms": "+447700900123", "in_app": True}
OFFER = Offer("free_shipping", "free-shipping-60", "You've unlocked free shipping", "reason")


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.fixture(scope="module")
def shop() -> Merchant:
    return load_merchants(DEFAULT_MERCHANTS)["uci-gift-shop"]


def customer(time_zone: str | None, preferred: str | None = "push", **overrides) -> dict:
    state = customer_state.new_state()
    state["profile"] = {
        "channels": {**CHANNELS, **overrides},
        "preferred": preferred,
        "time_zone": time_zone,
        "opted_out": False,
    }
    return state


def with_zones(merchant: Merchant, *zones: str) -> Merchant:
    delivery = dataclasses.replace(merchant.options.delivery, time_zones=zones)
    return dataclasses.replace(
        merchant, options=dataclasses.replace(merchant.options, delivery=delivery)
    )


def push(key: str = "k1", channel: str | None = None, source: str = "abandoned_cart") -> Message:
    return Message(source, key, channel)


@pytest.mark.parametrize(
    ("zone", "now", "expected_until"),
    [
        # London, winter (GMT): 07:30 local is quiet until 08:00 local = 08:00 UTC.
        ("Europe/London", "2011-03-26T07:30:00", "2011-03-26T08:00:00"),
        # Same UTC time the day after the spring-forward: 08:30 BST, not quiet.
        ("Europe/London", "2011-03-27T07:30:00", None),
        # Summer: 07:30 UTC is 08:30 BST; 06:30 UTC is 07:30 BST, quiet until 07:00 UTC.
        ("Europe/London", "2011-07-01T06:30:00", "2011-07-01T07:00:00"),
        # New York, 10:00 UTC is 05:00 EST: quiet until 08:00 EST = 13:00 UTC.
        ("America/New_York", "2011-11-14T10:00:00", "2011-11-14T13:00:00"),
        # ... and after the autumn change of 2011-11-06 the offset moved by an hour.
        ("America/New_York", "2011-11-05T10:00:00", "2011-11-05T12:00:00"),
        # Sydney (AEDT, +11): 10:00 UTC is 21:00 local, quiet until 08:00 local = 21:00 UTC.
        ("Australia/Sydney", "2011-11-14T10:00:00", "2011-11-14T21:00:00"),
        ("Australia/Sydney", "2011-11-14T22:00:00", None),
    ],
)
def test_quiet_hours_in_the_customers_time_zone(shop, zone, now, expected_until):
    result = decide(customer(zone), shop, push(), utc(now))
    if expected_until is None:
        assert result == Send("push", "tok-1", "k1")
    else:
        assert result == Held(utc(expected_until))


def test_quiet_hours_apply_to_email_and_sms_but_never_to_in_app(shop):
    night = utc("2011-11-14T02:00:00")  # 02:00 in London
    for channel in ("email", "sms", "push"):
        assert isinstance(decide(customer("Europe/London", channel), shop, push(), night), Held)
    in_app = decide(customer("Europe/London", "in_app"), shop, push(), night)
    assert in_app == Send("in_app", "in-app", "k1")


def test_unknown_or_invalid_zone_waits_for_a_window_safe_in_every_merchant_zone(shop):
    transatlantic = with_zones(shop, "Europe/London", "America/New_York")
    for zone in (None, "", "Mars/Olympus_Mons", "../../etc/passwd"):
        state = customer(zone)
        # 10:00 UTC: fine in London, 05:00 in New York -> wait for 08:00 EST = 13:00 UTC.
        assert decide(state, transatlantic, push(), utc("2011-11-14T10:00:00")) == Held(
            utc("2011-11-14T13:00:00")
        )
        # 20:30 UTC: 20:30 in London and 15:30 in New York, safe in both.
        assert isinstance(decide(state, transatlantic, push(), utc("2011-11-14T20:30:00")), Send)
        # 21:30 UTC: quiet in London until 08:00 UTC, then still 03:00 in New York.
        assert decide(state, transatlantic, push(), utc("2011-11-14T21:30:00")) == Held(
            utc("2011-11-15T13:00:00")
        )
    # The demo merchant lists its customers' zone: unknown zone means London time.
    assert decide(customer(None), shop, push(), utc("2011-07-01T06:30:00")) == Held(
        utc("2011-07-01T07:00:00")
    )


def test_no_common_safe_window_suppresses_instead_of_messaging_at_night(shop):
    one_hour_a_day = QuietHours(start=9 * 60, end=8 * 60)  # only 08:00-09:00 local is allowed
    delivery = dataclasses.replace(
        shop.options.delivery, quiet_hours=one_hour_a_day, time_zones=("UTC", "Asia/Tokyo")
    )
    narrow = dataclasses.replace(shop, options=dataclasses.replace(shop.options, delivery=delivery))
    assert decide(customer(None), narrow, push(), utc("2011-11-14T12:00:00")) == Suppressed(
        "no_safe_window"
    )
    # A known zone has its window: 08:00 Tokyo = 23:00 UTC.
    assert decide(customer("Asia/Tokyo"), narrow, push(), utc("2011-11-14T12:00:00")) == Held(
        utc("2011-11-14T23:00:00")
    )


def test_quiet_hours_inside_one_day_and_disabled():
    utc_zone = (ZoneInfo("UTC"),)
    siesta = QuietHours(start=13 * 60, end=15 * 60)
    before = utc("2011-11-14T12:59:00")
    assert safe_time(before, utc_zone, siesta) == before
    assert safe_time(utc("2011-11-14T13:00:00"), utc_zone, siesta) == utc("2011-11-14T15:00:00")
    never_quiet = QuietHours(start=8 * 60, end=8 * 60)
    night = utc("2011-11-14T03:00:00")
    assert safe_time(night, utc_zone, never_quiet) == night


def test_one_frequency_cap_across_all_sources(shop):
    state = customer("Europe/London")
    noon = utc("2011-11-14T12:00:00")
    offer = plan_delivery(state, shop, "uci-gift-shop:c:1", OFFER, "cart-1", noon)
    assert isinstance(offer, Send)
    customer_state.record_message(state, offer.channel, offer.dedupe_key, noon)
    reminder = decide(state, shop, push("cart-reminder", source="abandoned_cart"), noon + 60)
    assert isinstance(reminder, Send)
    customer_state.record_message(state, reminder.channel, reminder.dedupe_key, noon + 60)
    # The merchant allows two messages a day, whatever sent them.
    assert decide(state, shop, push("refill", source="replenishment"), noon + 120) == Suppressed(
        "frequency_cap"
    )
    assert decide(state, shop, push("step", "email", "follow_up"), noon + 180) == Suppressed(
        "frequency_cap"
    )
    assert plan_delivery(state, shop, "uci-gift-shop:c:1", OFFER, "cart-2", noon + 240) == (
        Suppressed("frequency_cap")
    )
    later = decide(state, shop, push("refill", source="replenishment"), noon + 86400)
    assert isinstance(later, Send)


def test_the_cap_counts_a_message_recorded_at_a_later_event_time(shop):
    # a push at 13:00 and an e-mail at 13:13 (a journey step, recorded on its partition's
    # clock) are in the sent list before a cart offer of 13:01 is processed
    state = customer("Europe/London")
    one_pm = utc("2011-11-14T13:00:00")
    customer_state.record_message(state, "push", "offer-1", one_pm)
    customer_state.record_message(state, "email", "step-1", one_pm + 13 * 60)
    assert plan_delivery(state, shop, "uci-gift-shop:c:1", OFFER, "cart-2", one_pm + 60) == (
        Suppressed("frequency_cap")
    )
    # a day after the first, one of the two is out of the window
    later = plan_delivery(state, shop, "uci-gift-shop:c:1", OFFER, "cart-3", one_pm + 86400)
    assert isinstance(later, Send)


def test_opt_out_and_consent_are_hard_for_every_source(shop):
    state = customer("Europe/London")
    state["profile"]["opted_out"] = True
    noon = utc("2011-11-14T12:00:00")
    for source in ("offer", "abandoned_cart", "replenishment", "follow_up"):
        assert decide(state, shop, Message(source, "k"), noon) == Suppressed("opted_out")
    no_sms = customer("Europe/London", "email", sms=None)
    # A journey step that names its channel needs consent for that channel...
    assert decide(no_sms, shop, push("k", "sms"), noon) == Suppressed("no_consent")
    # ... and gets it even when the customer prefers another channel.
    assert decide(no_sms, shop, push("k", "push"), noon) == Send("push", "tok-1", "k")
    assert decide(customer_state.new_state(), shop, push(), noon) == Suppressed("no_consent")


def test_dedupe_key_on_every_source(shop):
    state = customer("Europe/London")
    noon = utc("2011-11-14T12:00:00")
    first = decide(state, shop, push("journey-step-1"), noon)
    customer_state.record_message(state, first.channel, first.dedupe_key, noon)
    assert decide(state, shop, push("journey-step-1"), noon + 5) == Suppressed("duplicate")


def test_cart_offer_in_quiet_hours_is_dropped_not_held(shop):
    state = customer("Europe/London", "email")
    night = utc("2011-11-14T23:00:00")
    assert plan_delivery(state, shop, "uci-gift-shop:c:1", OFFER, "cart-1", night) == Suppressed(
        "quiet_hours"
    )
    in_app = customer("Europe/London", "in_app")
    assert isinstance(plan_delivery(in_app, shop, "uci-gift-shop:c:1", OFFER, "c", night), Send)


@pytest.mark.parametrize(
    ("delivery", "message"),
    [
        ({"quiet_hours": {"start": "25:00"}}, "quiet_hours.start"),
        ({"quiet_hours": {"channels": ["fax"]}}, "quiet_hours.channels"),
        ({"time_zones": ["Europe/Atlantis"]}, "unknown time zone"),
        ({"time_zones": []}, "time_zones"),
        ("nope", "delivery: expected a mapping"),
    ],
)
def test_bad_delivery_config_is_rejected(delivery, message):
    with pytest.raises(CatalogError, match=message):
        parse_merchant("m", {"currency": "GBP", "delivery": delivery})


def test_delivery_config_parsed_and_yaml_sexagesimal_times_accepted():
    merchant = parse_merchant(
        "m",
        {
            "currency": "GBP",
            "delivery": {
                "quiet_hours": {"start": 1320, "end": "07:30", "channels": ["sms"]},
                "time_zones": ["Europe/Paris"],
            },
        },
    )
    assert merchant.options.delivery.quiet_hours == QuietHours(22 * 60, 7 * 60 + 30, ("sms",))
    assert merchant.options.delivery.time_zones == ("Europe/Paris",)
    with pytest.raises(CatalogError, match="at most 20"):
        parse_merchant("m", {"currency": "GBP", "frequency_cap": {"max_messages": 50}})
