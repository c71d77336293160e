"""Per-customer rolling state: pure update functions, bounds, sessions, carts, RFM, merges."""

from __future__ import annotations

import copy
import itertools
import uuid

import orjson
import pytest

from schemas.limits import (
    ADDRESS_MAX_LENGTH,
    ID_MAX_LENGTH,
    MAX_AMOUNT,
    MAX_QUANTITY,
    PRODUCT_ID_MAX_LENGTH,
    TIME_ZONE_MAX_LENGTH,
)
from streams.state import customer_state as cs
from streams.state.products import MAX_HISTORY_PRODUCTS, MAX_ORDER_PRODUCTS, orders_to_keep

RECORD_BOUND = 24 * 1024  # documented in docs/architecture.md (State size): realistic ids
WORST_RECORD_BOUND = 160 * 1024  # the same, every value at the bound the door sets

T0 = 1_291_193_160.0  # 2010-12-01 08:46:00 UTC
_ids = itertools.count()


def event(event_type: str, ts: float = T0, event_id: str | None = None, **fields) -> dict:
    """A validated input event as parse_event returns it (with ``_ts``)."""
    return {
        "schema_version": 1,
        "event_id": event_id or f"e{next(_ids)}",
        "event_type": event_type,
        "merchant_id": "uci-gift-shop",
        "event_time": "ignored-by-state",
        "customer_id": "17850",
        "session_id": "web-1",
        "_ts": ts,
        **fields,
    }


def line(product_id: str, quantity: int = 1, unit_price: float = 2.5) -> dict:
    return {"product_id": product_id, "quantity": quantity, "unit_price": unit_price}


def cart(event_type: str, lines: list[dict], value: float, ts: float = T0, **kw) -> dict:
    return event(event_type, ts, lines=lines, cart_value=value, currency="GBP", **kw)


def order(
    order_id: str,
    total: float,
    products=("85123A",),
    ts: float = T0,
    event_type: str = "order",
    **kw,
) -> dict:
    qty = -1 if event_type == "order_cancel" else 1
    lines = [line(p, qty) for p in products]
    return event(event_type, ts, order_id=order_id, lines=lines, total=total, currency="GBP", **kw)


def apply(state: dict, topic: str, ev: dict) -> bool:
    return cs.apply_event(state, topic, ev)


# --- apply_event per type -------------------------------------------------------------------


def test_new_state_is_empty_and_fresh_each_time():
    a, b = cs.new_state(), cs.new_state()
    assert a == b and a is not b and a["cart"] is not b["cart"]
    assert a["cart"] == {"lines": [], "value": 0.0, "currency": None, "ts": None, "generation": 0}
    assert a["profile"] is None and a["session"] is None and a["sessions"] == 0
    assert set(a["offers"]) == {"received", *cs.FEEDBACK_COUNTERS.values(), "last"}


def test_product_view_is_recorded_other_clicks_only_touch_the_session():
    state = cs.new_state()
    assert apply(state, "clickstream", event("product_view", T0, product_id="85123A"))
    assert apply(state, "clickstream", event("page_view", T0 + 1, page="/"))
    assert apply(state, "clickstream", event("search", T0 + 2, query="lamp"))
    assert apply(state, "clickstream", event("category_view", T0 + 3, category="x"))
    assert state["views"] == [["85123A", T0]]
    assert state["session"] == {"id": "web-1", "start": T0, "last": T0 + 3, "events": 4}
    assert state["sessions"] == 1


def test_profile_event_sets_profile_without_touching_the_session():
    state = cs.new_state()
    channels = {"email": "a@example.com", "push": None, "sms": None, "in_app": True}
    apply(
        state,
        "profiles",
        event("profile", channels=channels, preferred_channel="email", country="France"),
    )
    assert state["profile"] == {
        "channels": channels,
        "preferred": "email",
        "time_zone": None,
        "opted_out": False,
        "country": "France",
    }
    assert state["session"] is None and state["sessions"] == 0
    apply(state, "profiles", event("profile", channels={}, opted_out=True, time_zone="UTC"))
    assert state["profile"]["opted_out"] is True
    assert state["profile"]["preferred"] is None
    assert state["profile"]["time_zone"] == "UTC"


@pytest.mark.parametrize(("event_type", "counter"), sorted(cs.FEEDBACK_COUNTERS.items()))
def test_feedback_counts(event_type, counter):
    state = cs.new_state()
    apply(state, "feedback", event(event_type, offer_id="o1"))
    apply(state, "feedback", event(event_type, offer_id="o2"))
    assert state["offers"][counter] == 2
    others = {k: v for k, v in state["offers"].items() if k not in (counter, "last")}
    assert set(others.values()) == {0}


# --- idempotence ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "ev"),
    [
        ("clickstream", event("product_view", product_id="P", event_id="dup")),
        ("cart", cart("cart_add", [line("P", 2)], 5.0, event_id="dup")),
        ("cart", cart("checkout", [], 5.0, event_id="dup")),
        ("orders", order("536365", 10.0, event_id="dup")),
        ("orders", order("C1", -2.0, event_type="order_cancel", event_id="dup")),
        ("profiles", event("profile", channels={"email": "a@x"}, event_id="dup")),
        ("feedback", event("offer_opened", offer_id="o", event_id="dup")),
    ],
)
def test_duplicate_event_id_is_skipped_and_changes_nothing(topic, ev):
    state = cs.new_state()
    apply(state, "cart", cart("cart_add", [line("Q", 1)], 2.5, ts=T0 - 10))
    assert apply(state, topic, copy.deepcopy(ev)) is True
    snapshot = copy.deepcopy(state)
    later = copy.deepcopy(ev)
    later["_ts"] += 100  # a redelivery is skipped whatever it carries
    assert apply(state, topic, later) is False
    assert state == snapshot


def test_seen_ids_are_bounded_and_forget_the_oldest():
    state = cs.new_state()
    for i in range(cs.SEEN_IDS + 10):
        apply(state, "feedback", event("offer_opened", T0 + i, event_id=f"id{i}", offer_id="o"))
    assert len(state["seen"]) == cs.SEEN_IDS
    assert state["seen"][0] == "id10" and state["seen"][-1] == f"id{cs.SEEN_IDS + 9}"
    assert cs.mark_seen(state, f"id{cs.SEEN_IDS + 9}") is False
    assert cs.mark_seen(state, "id0") is True  # forgotten: would be applied again


# --- bounds ---------------------------------------------------------------------------------


def test_lists_stay_bounded_under_many_events():
    state = cs.new_state()
    for i in range(1000):
        ts = T0 + i
        apply(state, "clickstream", event("product_view", ts, product_id=f"P{i}"))
        apply(state, "cart", cart("cart_add", [line(f"P{i}")], 2.5 * (i + 1), ts))
        if i % 10 == 0:
            apply(state, "orders", order(f"O{i}", 9.0, ts=ts))
        cs.record_message(state, "email", f"k{i}", ts)
        cs.claim_session(state, f"s{i}")
    assert len(state["seen"]) == cs.SEEN_IDS
    assert len(state["views"]) == cs.MAX_VIEWS
    assert state["views"][-1] == ["P999", T0 + 999]
    assert len(state["orders"]) == cs.MAX_ORDERS
    assert state["orders"][-1][1] == "O990"
    assert state["rfm"]["frequency"] == 100
    assert len(state["cart"]["lines"]) <= cs.MAX_CART_LINES
    assert len(state["sent"]) == cs.MAX_SENT
    assert state["sent"][-1] == [T0 + 999, "email", "k999"]
    assert len(state["claimed"]) == cs.MAX_CLAIMED


def test_cart_lines_are_bounded_keeping_the_most_recent():
    state = cs.new_state()
    n = cs.MAX_CART_LINES + 50
    for i in range(n):
        apply(state, "cart", cart("cart_add", [line(f"P{i}")], float(i + 1), T0 + i))
    lines = state["cart"]["lines"]
    assert len(lines) == cs.MAX_CART_LINES
    assert lines[0][0] == "P50" and lines[-1][0] == f"P{n - 1}"
    # Touching an old line moves it to the most recent end.
    apply(state, "cart", cart("cart_add", [line("P60", 2)], 1.0, T0 + n))
    assert state["cart"]["lines"][-1] == ["P60", 3, 2.5]
    assert len(state["cart"]["lines"]) == cs.MAX_CART_LINES


def full_state() -> dict:
    """A customer with every bounded list full, with realistic id sizes (UUID event ids, UCI
    stock codes and invoice numbers, orders up to the product-id limit, a full 200-line cart)."""
    state = cs.new_state()
    n = itertools.count()

    def ev(event_type: str, ts: float, **fields) -> dict:
        return event(event_type, ts, event_id=str(uuid.UUID(int=next(n))), **fields)

    channels = {
        "email": "customer-17850@example.com",
        "push": "push-token-17850",
        "sms": "+44 7700 900123",
        "in_app": True,
    }
    apply(state, "profiles", ev("profile", T0, channels=channels, preferred_channel="email"))
    ts = T0
    per_order = MAX_HISTORY_PRODUCTS // cs.MAX_ORDERS
    for o in range(cs.MAX_ORDERS + 5):
        ts += 100
        products = [f"{85123 + o * per_order + k}A" for k in range(per_order)]
        placed = order(f"{536365 + o}", 1234.56, products, ts=ts)
        placed["event_id"] = str(uuid.UUID(int=next(n)))
        apply(state, "orders", placed)
    for k in range(cs.MAX_CART_LINES):
        ts += 1
        lines = [line(f"85123A{k:03d}", 12, 12.75)]
        apply(state, "cart", ev("cart_add", ts, lines=lines, cart_value=12345.67, currency="GBP"))
    for k in range(cs.MAX_VIEWS):
        ts += 1
        apply(state, "clickstream", ev("product_view", ts, product_id=f"85123A{k:03d}"))
    for k in range(cs.MAX_SENT):
        cs.record_message(state, ("email", "push", "sms", "in_app")[k % 4], f"{k:024x}", ts + k)
    cs.record_offer(state, 3, "threshold_nudge:holiday-twenty-off-1000", "f" * 32, ts)
    for k in range(cs.MAX_CLAIMED):
        cs.claim_session(state, f"web-{536365 + k}")
        cs.mark_absorbed(state, f"uci-gift-shop:s:web-{536365 + k}")
    for topic in ("clickstream", "cart", "orders", "profiles", "feedback", "session-merges"):
        cs.mark_offset(state, f"nextbest.{topic}", 11, 9_876_543_210)
    return state


def test_bytes_per_customer_with_full_bounded_lists():
    state = full_state()
    assert len(state["seen"]) == cs.SEEN_IDS
    assert len(state["views"]) == cs.MAX_VIEWS
    assert len(state["orders"]) == cs.MAX_ORDERS
    assert sum(len(o[3]) for o in state["orders"]) == MAX_HISTORY_PRODUCTS
    assert len(state["cart"]["lines"]) == cs.MAX_CART_LINES
    assert len(state["sent"]) == cs.MAX_SENT
    assert len(state["claimed"]) == len(state["absorbed"]) == cs.MAX_CLAIMED
    size = len(orjson.dumps(state))
    print(f"bytes per customer (all bounded lists full): {size}")
    assert size < RECORD_BOUND
    assert orjson.loads(orjson.dumps(state)) == state  # JSON round trip is lossless


def test_record_stays_small_whatever_the_order_size():
    state = cs.new_state()
    products = [f"{20000 + k}" for k in range(3000)]  # one wholesale invoice
    apply(state, "orders", order("581483", 99999.0, products))
    assert state["orders"][0][3] == products[:MAX_ORDER_PRODUCTS]
    for k in range(cs.MAX_ORDERS):  # and many big ones: the product-id budget holds
        apply(state, "orders", order(f"58{k:04d}", 999.0, products, ts=T0 + 1 + k))
    assert sum(len(o[3]) for o in state["orders"]) <= MAX_HISTORY_PRODUCTS
    assert state["orders"][-1][1] == f"58{cs.MAX_ORDERS - 1:04d}"  # the newest are kept
    assert len(orjson.dumps(state)) < RECORD_BOUND


def test_orders_to_keep_is_the_same_incrementally_and_at_once():
    """The worker bounds the history after each order; training bounds a file's history once."""
    sizes = [1, 64, 3, 40, 64, 64, 2, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 5] * 4
    kept: list[int] = []
    for size in sizes:
        kept.append(size)
        del kept[: len(kept) - orders_to_keep(kept)]
    assert kept == sizes[len(sizes) - orders_to_keep(sizes) :]
    assert sum(kept) <= MAX_HISTORY_PRODUCTS and len(kept) <= cs.MAX_ORDERS
    assert orders_to_keep([MAX_HISTORY_PRODUCTS + 1]) == 1  # the newest order always stays


# --- sessions -------------------------------------------------------------------------------


def test_session_splits_after_30_minutes_of_inactivity_in_event_time():
    state = cs.new_state()
    apply(state, "clickstream", event("page_view", T0))
    apply(state, "clickstream", event("page_view", T0 + cs.SESSION_GAP_S))  # exactly 30 min
    assert state["sessions"] == 1 and state["session"]["events"] == 2
    last = T0 + cs.SESSION_GAP_S
    apply(state, "clickstream", event("page_view", last + cs.SESSION_GAP_S + 1))
    assert state["sessions"] == 2
    assert state["session"] == {
        "id": "web-1",
        "start": last + cs.SESSION_GAP_S + 1,
        "last": last + cs.SESSION_GAP_S + 1,
        "events": 1,
    }


def test_late_event_does_not_move_session_back_or_split_it():
    state = cs.new_state()
    apply(state, "clickstream", event("page_view", T0 + 600))
    apply(state, "clickstream", event("page_view", T0))  # out of order, 10 min late
    assert state["sessions"] == 1
    assert state["session"]["last"] == T0 + 600 and state["session"]["events"] == 2


def test_new_session_id_starts_a_new_session_and_missing_id_continues():
    state = cs.new_state()
    apply(state, "clickstream", event("page_view", T0, session_id=None))
    assert state["session"]["id"] is None
    apply(state, "clickstream", event("page_view", T0 + 1, session_id="web-1"))
    assert state["sessions"] == 1 and state["session"]["id"] == "web-1"  # adopted
    apply(state, "orders", order("1", 1.0, ts=T0 + 2, session_id=None))
    assert state["sessions"] == 1 and state["session"]["events"] == 3
    apply(state, "clickstream", event("page_view", T0 + 3, session_id="web-2"))
    assert state["sessions"] == 2 and state["session"]["id"] == "web-2"


# --- carts ----------------------------------------------------------------------------------


def test_cart_add_remove_quantity_semantics():
    state = cs.new_state()
    apply(state, "cart", cart("cart_add", [line("A", 2, 1.5)], 3.0, T0))
    apply(state, "cart", cart("cart_add", [line("B", 1, 4.0), line("A", 1, 1.5)], 8.5, T0 + 1))
    c = state["cart"]
    assert c["lines"] == [["B", 1, 4.0], ["A", 3, 1.5]]
    assert (c["value"], c["currency"], c["ts"], c["generation"]) == (8.5, "GBP", T0 + 1, 0)
    apply(state, "cart", cart("cart_remove", [line("A", 1)], 7.0, T0 + 2))
    assert state["cart"]["lines"] == [["B", 1, 4.0], ["A", 2, 2.5]]
    apply(state, "cart", cart("cart_remove", [line("A", 5)], 4.0, T0 + 3))  # more than held
    assert state["cart"]["lines"] == [["B", 1, 4.0]]
    apply(state, "cart", cart("cart_remove", [line("Z", 1)], 4.0, T0 + 4))  # not in cart
    assert state["cart"]["lines"] == [["B", 1, 4.0]]
    apply(state, "cart", cart("cart_quantity", [line("B", 7, 4.0)], 28.0, T0 + 5))
    assert state["cart"]["lines"] == [["B", 7, 4.0]]
    apply(state, "cart", cart("cart_quantity", [line("C", 2, 1.0)], 30.0, T0 + 6))
    apply(state, "cart", cart("cart_quantity", [line("B", 0, 4.0)], 2.0, T0 + 7))
    assert state["cart"]["lines"] == [["C", 2, 1.0]]
    assert state["cart"]["value"] == 2.0 and isinstance(state["cart"]["value"], float)
    assert state["cart"]["generation"] == 0


@pytest.mark.parametrize("event_type", ["cart_clear", "checkout"])
def test_clear_and_checkout_empty_the_cart_and_advance_the_generation(event_type):
    state = cs.new_state()
    apply(state, "cart", cart("cart_add", [line("A", 2)], 5.0, T0))
    apply(state, "cart", cart(event_type, [line("A", 2)], 5.0, T0 + 5))
    c = state["cart"]
    assert (c["lines"], c["value"], c["ts"], c["generation"]) == ([], 0.0, T0 + 5, 1)
    apply(state, "cart", cart("cart_add", [line("B")], 2.5, T0 + 6))
    assert state["cart"]["lines"] == [["B", 1, 2.5]] and state["cart"]["generation"] == 1


def test_order_empties_the_cart_and_updates_rfm():
    state = cs.new_state()
    apply(state, "cart", cart("cart_add", [line("A", 2)], 5.0, T0))
    apply(state, "orders", order("536365", 5.0, ["85123a", "POST", "85123A "], ts=T0 + 60))
    # Only cart-topic events (checkout, clear) move the generation on: an order just empties
    # the lines, so decisions do not depend on how the cart and orders topics interleave.
    assert state["cart"]["lines"] == [] and state["cart"]["generation"] == 0
    assert state["cart"]["value"] == 0.0 and state["cart"]["ts"] == T0 + 60
    # products only (no postage), normalised, distinct
    assert state["orders"] == [[T0 + 60, "536365", 5.0, ["85123A"]]]
    assert state["rfm"] == {
        "first": T0 + 60,
        "last": T0 + 60,
        "frequency": 1,
        "monetary": 5.0,
        "cancellations": 0,
    }
    # The checkout moved the generation on; the order after it does not.
    apply(state, "cart", cart("cart_add", [line("B")], 2.5, T0 + 100))
    apply(state, "cart", cart("checkout", [], 2.5, T0 + 120))
    apply(state, "orders", order("536366", 0.1, ["22423"], ts=T0 + 140))
    assert state["cart"]["generation"] == 1 and state["cart"]["lines"] == []
    assert state["rfm"]["frequency"] == 2 and state["rfm"]["monetary"] == 5.1  # rounded
    # A late order moves "first" back and the list stays in time order.
    apply(state, "orders", order("536000", 1.0, ["21232"], ts=T0 - 1000))
    assert state["rfm"]["first"] == T0 - 1000 and state["rfm"]["last"] == T0 + 140
    assert [o[1] for o in state["orders"]] == ["536000", "536365", "536366"]


def test_order_cancel_counts_and_reduces_monetary_without_touching_orders_or_cart():
    state = cs.new_state()
    apply(state, "orders", order("536365", 20.0, ts=T0))
    apply(state, "cart", cart("cart_add", [line("A")], 2.5, T0 + 10))
    apply(state, "orders", order("C536379", -7.5, event_type="order_cancel", ts=T0 + 20))
    assert state["rfm"]["cancellations"] == 1
    assert state["rfm"]["monetary"] == 12.5
    assert state["rfm"]["frequency"] == 1 and len(state["orders"]) == 1
    assert state["cart"]["lines"] == [["A", 1, 2.5]]


# --- offers and messages --------------------------------------------------------------------


def test_record_offer_once_per_cart_generation_and_key():
    state = cs.new_state()
    assert cs.record_offer(state, 0, "free_shipping:fs", "o1", T0) is True
    assert cs.record_offer(state, 0, "free_shipping:fs", "o2", T0 + 1) is False
    assert state["offers"]["received"] == 1
    assert state["offers"]["last"] == {"offer_id": "o1", "key": "free_shipping:fs", "ts": T0}
    assert cs.record_offer(state, 0, "percent_off:p5", "o3", T0 + 2) is True  # better offer
    assert cs.record_offer(state, 1, "percent_off:p5", "o4", T0 + 3) is True  # next cart
    assert state["last_offer"] == [1, "percent_off:p5"]
    assert state["offers"]["received"] == 3
    assert state["offers"]["last"]["offer_id"] == "o4"


def test_record_message_and_claim_session():
    state = cs.new_state()
    cs.record_message(state, "email", "k1", T0)
    cs.record_message(state, "push", "k2", T0 + 1)
    cs.record_message(state, "email", "k3", T0 + 2)
    assert state["sent"] == [[T0, "email", "k1"], [T0 + 1, "push", "k2"], [T0 + 2, "email", "k3"]]
    assert state["last_message"] == {"email": T0 + 2, "push": T0 + 1}
    assert cs.claim_session(state, "web-1") is True
    assert cs.claim_session(state, "web-1") is False
    assert state["claimed"] == ["web-1"]


# --- anonymous merge ------------------------------------------------------------------------


def test_merge_anonymous_into_customer():
    customer, anonymous = cs.new_state(), cs.new_state()
    apply(customer, "clickstream", event("product_view", T0 + 10, "c1", product_id="C"))
    cs.record_offer(customer, 0, "k", "o", T0)
    apply(anonymous, "clickstream", event("product_view", T0, "a1", product_id="A"))
    apply(anonymous, "clickstream", event("product_view", T0 + 20, "a2", product_id="B"))
    apply(anonymous, "cart", cart("cart_add", [line("A", 2)], 5.0, T0 + 30, event_id="a3"))
    apply(anonymous, "feedback", event("offer_opened", T0 + 40, "a4", offer_id="x"))
    anonymous["offers"]["received"] = 2
    customer["cart"]["generation"] = 4
    cs.merge_anonymous(customer, anonymous)
    assert customer["seen"] == ["c1", "a1", "a2", "a3", "a4"]
    assert customer["views"] == [["A", T0], ["C", T0 + 10], ["B", T0 + 20]]
    assert customer["cart"]["lines"] == [["A", 2, 2.5]]
    assert customer["cart"]["value"] == 5.0 and customer["cart"]["generation"] == 4
    assert customer["sessions"] == 2
    assert customer["offers"]["received"] == 3 and customer["offers"]["opened"] == 1
    assert customer["offers"]["last"]["offer_id"] == "o"  # the customer's own
    # The anonymous events are now known to the customer: a redelivery is skipped.
    assert apply(customer, "clickstream", event("product_view", T0, "a1", product_id="A")) is False


def test_merge_keeps_the_customers_cart_and_bounds_views_and_seen():
    customer, anonymous = cs.new_state(), cs.new_state()
    apply(customer, "cart", cart("cart_add", [line("MINE")], 2.5, T0, event_id="shared"))
    apply(anonymous, "cart", cart("cart_add", [line("THEIRS")], 2.5, T0, event_id="shared"))
    for i in range(cs.SEEN_IDS):
        ev = event("product_view", T0 + 1 + i, f"a{i}", product_id=f"P{i}")
        apply(anonymous, "clickstream", ev)
    cs.merge_anonymous(customer, anonymous)
    assert customer["cart"]["lines"] == [["MINE", 1, 2.5]]
    assert len(customer["views"]) == cs.MAX_VIEWS
    assert customer["views"][-1] == [f"P{cs.SEEN_IDS - 1}", T0 + cs.SEEN_IDS]
    assert len(customer["seen"]) == cs.SEEN_IDS
    assert customer["seen"].count("shared") <= 1
    assert customer["seen"][-1] == f"a{cs.SEEN_IDS - 1}"


def widest_state() -> dict:
    """Every bounded list full and every value the door lets in at its widest: ids of
    ID_MAX_LENGTH, product ids of PRODUCT_ID_MAX_LENGTH, the longest addresses and time zone,
    the longest float reprs, the largest quantities (schemas/limits.py)."""
    state = cs.new_state()
    n = itertools.count()
    price = -5.0000000000000004e-300  # a 23-character float repr (the door bounds the value)

    def wide(prefix: str, size: int = ID_MAX_LENGTH) -> str:
        return f"{prefix}{next(n)}".ljust(size, "x")

    def ev(event_type: str, ts: float, **fields) -> dict:
        return event(event_type, ts, event_id=wide("e"), session_id=wide("s"), **fields)

    channels = {name: "a" * ADDRESS_MAX_LENGTH for name in ("email", "sms", "push")}
    apply(
        state,
        "profiles",
        ev(
            "profile",
            T0,
            channels={**channels, "in_app": True},
            preferred_channel="email",
            time_zone="z" * TIME_ZONE_MAX_LENGTH,
        ),
    )
    ts = T0 + 0.123456
    per_order = MAX_HISTORY_PRODUCTS // cs.MAX_ORDERS
    for _ in range(cs.MAX_ORDERS):
        ts += 100
        products = [
            f"{85123 + next(n)}".ljust(PRODUCT_ID_MAX_LENGTH, "A") for _ in range(per_order)
        ]
        placed = order(wide("o"), -MAX_AMOUNT + 0.01, products, ts=ts)
        placed.update(event_id=wide("e"), session_id=wide("s"))
        apply(state, "orders", placed)
    for _ in range(cs.MAX_CART_LINES):
        ts += 1
        lines = [line(wide("9", PRODUCT_ID_MAX_LENGTH), MAX_QUANTITY, price)]
        apply(state, "cart", ev("cart_add", ts, lines=lines, cart_value=price, currency="GBP"))
    for _ in range(cs.MAX_VIEWS):
        ts += 1
        apply(
            state,
            "clickstream",
            ev("product_view", ts, product_id=wide("9", PRODUCT_ID_MAX_LENGTH)),
        )
    for k in range(cs.MAX_SENT):
        cs.record_message(state, "in_app", f"{k:024x}", ts + k)
    cs.record_offer(state, 2**62, "threshold_nudge:" + "p" * ID_MAX_LENGTH, "f" * 24, ts)
    for _ in range(cs.MAX_CLAIMED):
        cs.claim_session(state, wide("s"))
        cs.mark_absorbed(state, f"{'m' * ID_MAX_LENGTH}:s:{wide('s')}")
    for topic in ("nextbest.clickstream", "nextbest.cart", "nextbest.orders", "nextbest.profiles"):
        cs.mark_offset(state, topic, 2**31 - 1, 2**63 - 1)
    for topic in ("nextbest.offer-feedback", "nextbest.session-merges"):
        cs.mark_offset(state, topic, 2**31 - 1, 2**63 - 1)
    return state


def test_worst_case_bytes_per_customer_with_everything_at_its_bound():
    state = widest_state()
    assert len(state["seen"]) == cs.SEEN_IDS and len(state["cart"]["lines"]) == cs.MAX_CART_LINES
    assert sum(len(o[3]) for o in state["orders"]) == MAX_HISTORY_PRODUCTS
    size = len(orjson.dumps(state))
    print(f"bytes per customer, worst case: {size}")
    assert size < WORST_RECORD_BOUND


def test_a_cart_line_quantity_is_capped_like_one_line_of_an_event():
    """cart_add sums quantities: the sum stays within the door's bound, whatever the count."""
    state = cs.new_state()
    for k in range(3):
        apply(state, "cart", cart("cart_add", [line("85123A", MAX_QUANTITY)], 1.0, T0 + k))
    assert state["cart"]["lines"] == [["85123A", MAX_QUANTITY, 2.5]]


def test_a_profile_keeps_only_the_contract_channel_fields():
    """Unknown fields inside ``channels`` pass the door (tolerated) but are not stored."""
    state = cs.new_state()
    channels = {"email": "a@example.com", "in_app": True, "fax": "f" * 60_000}
    apply(state, "profiles", event("profile", channels=channels))
    assert state["profile"]["channels"] == {"email": "a@example.com", "in_app": True}


# --- redelivery by offset -------------------------------------------------------------------


def test_a_redelivery_longer_than_the_event_id_window_is_skipped_by_offset():
    """A crash re-reads from the last committed offset: more than SEEN_IDS events of one
    customer may come again; none of them is applied twice."""
    state = cs.new_state()
    orders = [order(f"o{i}", 10.0, ts=T0 + 60 * i) for i in range(cs.SEEN_IDS + 16)]
    for offset, ev in enumerate(orders):
        assert cs.mark_offset(state, "orders", 3, 100 + offset)
        assert apply(state, "orders", ev)
    before = copy.deepcopy(state)
    for offset, ev in enumerate(orders):  # the whole run again, at the same offsets
        if cs.mark_offset(state, "orders", 3, 100 + offset):  # as the pipeline does
            apply(state, "orders", ev)
    assert state == before
    assert state["rfm"]["frequency"] == len(orders)
    assert state["offsets"] == {"orders": [3, 100 + len(orders) - 1]}
    # the first of those events at its offset: beyond the window, only the offset knew it
    assert orders[0]["event_id"] not in state["seen"]


def test_offsets_are_kept_per_topic_and_another_partition_is_no_evidence():
    state = cs.new_state()
    assert cs.mark_offset(state, "cart", 0, 50) and cs.mark_offset(state, "orders", 0, 7)
    assert cs.mark_offset(state, "cart", 0, 51) and not cs.mark_offset(state, "cart", 0, 51)
    assert cs.mark_offset(state, "orders", 0, 8)  # each topic has its own offsets
    # the topic's partition count changed and the key moved: no dedupe by offset (ids only)
    assert cs.mark_offset(state, "cart", 5, 3)
    assert state["offsets"] == {"cart": [5, 3], "orders": [0, 8]}


def test_a_record_written_before_offsets_existed_gets_them():
    state = cs.new_state()
    del state["offsets"], state["absorbed"]
    assert cs.mark_offset(state, "cart", 1, 9) and not cs.mark_offset(state, "cart", 1, 9)
    assert cs.mark_absorbed(state, "shop:s:web-1")


def test_an_absorbed_session_is_merged_once_and_its_offsets_stay_its_own():
    customer, anonymous = cs.new_state(), cs.new_state()
    cs.mark_offset(customer, "clickstream", 2, 40)
    cs.mark_offset(anonymous, "clickstream", 0, 900)
    apply(anonymous, "clickstream", event("product_view", T0, "a1", product_id="A"))
    assert cs.mark_absorbed(customer, "shop:s:web-1")
    cs.merge_anonymous(customer, anonymous)
    assert customer["offsets"] == {"clickstream": [2, 40]}  # positions on the session's partition
    assert not cs.mark_absorbed(customer, "shop:s:web-1")  # an absorb sent again
    for i in range(cs.MAX_CLAIMED + 1):
        cs.mark_absorbed(customer, f"shop:s:other-{i}")
    assert len(customer["absorbed"]) == cs.MAX_CLAIMED
