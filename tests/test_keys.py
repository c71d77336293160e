"""Keys, ids and the time format of output records (`schemas.keys`)."""

from __future__ import annotations

import pytest

from schemas.keys import (
    decision_id_for,
    id_digest,
    is_customer_key,
    iso,
    offer_id_for,
    parse_state_key,
    state_key,
)
from streams.decisions import Offer
from streams.outreach.delivery import dedupe_key
from streams.outreach.journeys import step_key


def test_state_key_names_the_customer_else_the_session():
    assert state_key("shop", "c1", "s1") == "shop:c:c1"
    assert state_key("shop", None, "s1") == "shop:s:s1"


@pytest.mark.parametrize(
    ("customer", "session"),
    [("c1", None), (None, "s1"), (None, "guest:c:17850"), ("17850:s:x", None), (None, "a:b:c")],
)
def test_parse_state_key_is_the_inverse_of_state_key(customer, session):
    key = state_key("shop", customer, session)
    assert parse_state_key(key) == ("shop", customer, session)
    assert is_customer_key(key) is (customer is not None)


def test_a_session_id_holding_c_is_a_session():
    assert not is_customer_key("shop:s:guest:c:17850")
    assert parse_state_key("shop:s:guest:c:17850") == ("shop", None, "guest:c:17850")


@pytest.mark.parametrize("key", ["shop", "shop:x:1", "shop:c:", ":c:1", "shop:c"])
def test_parse_state_key_refuses_other_keys(key):
    with pytest.raises(ValueError, match="not a customer or session key"):
        parse_state_key(key)


def test_offer_and_decision_ids_are_the_ones_written_before_they_were_shared():
    # values of the three former copies (agents.pipeline, agents.outreach.offer_id,
    # streams.promotion.policy.offer_identity / decision_identity) for the same inputs
    assert offer_id_for("uci-gift-shop:c:c1", "e1", "percent_off:p10") == (
        "01407123bafee53db6a39fa8"
    )
    assert offer_id_for("shop:s:web-1", "cart-7", "free_shipping:fs") == (
        "00a2b5504c10b08ae1d129ac"
    )
    assert decision_id_for("uci-gift-shop:c:c1", "e1") == "176e6824fb301b334a75d3c9"
    assert offer_id_for("k", "e", "a") == offer_id_for("k", "e", "a") != offer_id_for("k", "e", "b")


def test_notification_dedupe_keys_are_unchanged():
    offer = Offer("percent_off", "p10", "10% off", "tier")
    assert dedupe_key("uci-gift-shop", "uci-gift-shop:c:c1", offer, "e1") == (
        "a5b82ee3fb8b8655336aa18a"
    )
    assert step_key(
        "uci-gift-shop", "uci-gift-shop:c:c1", "abandoned_cart", "cart-3", "remind"
    ) == ("f88975f4e8d59171d45f575a")
    assert len(id_digest("a", "b")) == 24 and id_digest("a", "b") != id_digest("b", "a")


def test_iso_is_utc_with_a_z():
    assert iso(1323435000.0) == "2011-12-09T12:50:00Z"
    assert iso(1323435000.25) == "2011-12-09T12:50:00.250000Z"
