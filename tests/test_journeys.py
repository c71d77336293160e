"""Journeys with a controlled clock: the pure rules, and the timer hooks driven like the pipeline.

`Driver` plays the pipeline's part (apply each event to the customer's state, call the hooks,
finish the batch) over an in-memory timer store; wall time is a number the test moves.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace

import orjson
import pytest

from agents.outreach import Outreach
from agents.runtime import metrics
from agents.runtime.batch import CustomerEntry
from schemas.keys import iso
from schemas.validation import parse_event
from streams.decisions import ThresholdRulesPolicy
from streams.merchants.catalog import (
    DEFAULT_MERCHANTS,
    CatalogError,
    Merchant,
    MerchantRegistry,
    load_merchants,
    parse_merchant,
)
from streams.merchants.options import FollowUp, Journeys
from streams.outreach import journeys
from streams.state import customer_state
from streams.timers import DueIndex, PartitionClock

SHOP = "uci-gift-shop"
MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


T0 = utc("2011-11-14T10:00:00")  # a Monday morning in London


@pytest.fixture
def shop() -> Merchant:
    return load_merchants(DEFAULT_MERCHANTS)[SHOP]


# -- a small stand-in for the pipeline ------------------------------------------------------


@dataclass
class Batch:
    entries: dict = field(default_factory=dict)
    outputs: list = field(default_factory=list)


class MemoryStore:
    """The journey-timers table as a dict (it outlives `Outreach`, like the real table)."""

    def __init__(self) -> None:
        self.due: dict[str, tuple[int, float]] = {}
        self.clocks: dict[int, dict] = {}

    def read_partition(self, partition):
        entries = [(k, due) for k, (p, due) in self.due.items() if p == partition]
        return PartitionClock.from_json(self.clocks.get(partition)), entries

    def write_due(self, key, partition, due, event):
        assert event.message.partition == partition  # writes are routed to the key's partition
        if due is None:
            self.due.pop(key, None)
        else:
            self.due[key] = (partition, due)

    def write_clock(self, partition, clock, event):
        self.clocks[partition] = clock.to_json()


def fake_event(partition: int) -> SimpleNamespace:
    return SimpleNamespace(message=SimpleNamespace(partition=partition))


class Driver:
    def __init__(self, merchant: Merchant, store: MemoryStore | None = None) -> None:
        self.states: dict[str, dict] = {}
        self.store = store or MemoryStore()
        self.wall = 1_700_000_000.0
        self.nb = SimpleNamespace(
            registry=MerchantRegistry({merchant.id: merchant}), notifications="notifications"
        )
        self.outreach = Outreach(
            self.nb, ThresholdRulesPolicy(), self.store, lateness_s=60.0, wall=lambda: self.wall
        )
        self.sent: list[dict] = []

    def load(self, batch: Batch, key: str, event) -> CustomerEntry:
        entry = batch.entries.get(key)
        if entry is None:
            entry = batch.entries[key] = CustomerEntry(self.states.get(key), event)
        return entry

    def batch(self, *events: tuple[str, dict], tick: bool = False, partition: int = 0) -> list:
        """One micro-batch of (topic kind, event) on ``partition``; returns notifications."""
        batch = Batch()
        for kind, raw in events:
            data = parse_event(orjson.dumps(raw), kind, 65536)
            who = (
                f"c:{data['customer_id']}" if data.get("customer_id") else f"s:{data['session_id']}"
            )
            key = f"{data['merchant_id']}:{who}"
            event = fake_event(partition)
            entry = self.load(batch, key, event)
            if entry.state is None:
                entry.state = customer_state.new_state()
            customer_state.apply_event(entry.state, kind, data)
            entry.dirty = True
            self.outreach.on_input(key, entry, kind, data, event)
        if tick:
            self.outreach.on_tick(fake_event(partition))
        self.outreach.finish(batch, self.load)
        for key, entry in batch.entries.items():
            self.states[key] = entry.state
        notes = [orjson.loads(value) for topic, _, value in batch.outputs]
        assert all(topic == "notifications" for topic, _, _ in batch.outputs)
        self.sent.extend(notes)
        return notes


def ev(event_type: str, event_id: str, ts: float, customer: str = "c1", **fields) -> dict:
    return {
        "schema_version": 1,
        "event_id": event_id,
        "event_type": event_type,
        "merchant_id": SHOP,
        "event_time": iso(ts),
        "customer_id": customer,
        **fields,
    }


def profile(ts: float, customer: str = "c1", zone: str | None = "Europe/London", **fields):
    channels = {
        "email": f"{customer}@example.com",
        "push": "tok",
        "sms": "+447700900001",
        "in_app": False,
    }
    return (
        "profiles",
        ev(
            "profile",
            f"p-{customer}-{ts}",
            ts,
            customer,
            channels=channels,
            preferred_channel="email",
            time_zone=zone,
            **fields,
        ),
    )


def cart(event_type: str, n: int, ts: float, value: float, customer="c1", product=None):
    line = {"product_id": product or f"P{n}", "quantity": 1, "unit_price": value}
    lines = [] if event_type in ("checkout", "cart_clear") else [line]
    return (
        "cart",
        ev(
            event_type,
            f"{customer}-cart-{n}",
            ts,
            customer,
            lines=lines,
            cart_value=value,
            currency="GBP",
        ),
    )


def order(n: int, ts: float, customer: str = "c1", products=("85123A",)):
    lines = [{"product_id": p, "quantity": 1, "unit_price": 3.0} for p in products]
    return (
        "orders",
        ev(
            "order",
            f"{customer}-order-{n}",
            ts,
            customer,
            order_id=f"{n}",
            lines=lines,
            total=3.0 * len(lines),
            currency="GBP",
        ),
    )


def opened(ts: float, notification_id: str, customer: str = "c1"):
    return (
        "feedback",
        ev(
            "offer_opened",
            f"open-{ts}",
            ts,
            customer,
            offer_id=notification_id,
            notification_id=notification_id,
        ),
    )


def other(ts: float, n: int = 0):
    """Another customer's page view on the same partition: it moves the clock only."""
    return ("clickstream", ev("page_view", f"other-{ts}-{n}", ts, "zz", page="/"))


# -- abandoned cart -------------------------------------------------------------------------


def test_abandoned_cart_reminder_fires_once_with_the_policys_offer(shop):
    d = Driver(shop)
    assert d.batch(profile(T0 - HOUR), cart("cart_add", 1, T0, 70.0)) == []
    assert d.store.due["uci-gift-shop:c:c1"][1] == T0 + HOUR
    assert d.batch(other(T0 + HOUR)) == []  # clock = T0 + 1h - 60 s lateness: not yet
    [note] = d.batch(other(T0 + HOUR + MINUTE))
    assert (note["source"], note["journey_step"], note["channel"]) == (
        "abandoned_cart",
        "remind",
        "email",
    )
    assert note["body"] == "You left 1 item in your cart. You've unlocked free shipping"
    assert note["promotion_id"] == "free-shipping-60"
    assert note["dedupe_key"] == note["notification_id"]
    assert "uci-gift-shop:c:c1" not in d.store.due  # nothing pending any more
    # Time goes on, the same cart changes again: still only that one reminder.
    assert d.batch(other(T0 + 3 * HOUR)) == []
    d.batch(cart("cart_add", 2, T0 + 3 * HOUR, 80.0))
    assert d.batch(other(T0 + 6 * HOUR)) == []
    assert len(d.sent) == 1
    # After a checkout, a new cart is a new cart: it can be reminded once.
    d.batch(cart("checkout", 3, T0 + 6 * HOUR, 80.0), cart("cart_add", 4, T0 + 6 * HOUR, 20.0))
    [again] = d.batch(other(T0 + 8 * HOUR))
    assert again["promotion_id"] is None and again["offer_id"] == again["dedupe_key"]


def test_checkout_cancels_and_a_new_cart_change_rearms(shop):
    d = Driver(shop)
    d.batch(profile(T0 - HOUR), cart("cart_add", 1, T0, 70.0))
    d.batch(cart("checkout", 2, T0 + 10 * MINUTE, 70.0))
    # the store may keep the cancelled time (an early wake-up is harmless, a write per cart
    # change is not); the wake-up sends nothing and clears it
    assert d.batch(other(T0 + 5 * HOUR)) == []
    assert "uci-gift-shop:c:c1" not in d.store.due

    d = Driver(shop)
    d.batch(profile(T0 - HOUR), cart("cart_add", 1, T0, 30.0))
    d.batch(cart("cart_add", 2, T0 + 30 * MINUTE, 40.0))  # re-armed: due at T0 + 90 min
    assert d.batch(other(T0 + 70 * MINUTE)) == []
    [note] = d.batch(other(T0 + 92 * MINUTE))
    assert note["source"] == "abandoned_cart"


def test_an_order_or_an_emptied_cart_cancels_the_reminder(shop):
    d = Driver(shop)
    d.batch(profile(T0 - HOUR), cart("cart_add", 1, T0, 70.0), order(1, T0 + MINUTE))
    assert "abandoned_cart" not in d.states["uci-gift-shop:c:c1"]["journeys"]
    d.batch(
        cart("cart_add", 2, T0 + 2 * MINUTE, 5.0, product="X"),
        cart("cart_remove", 3, T0 + 3 * MINUTE, 0.0, product="X"),
    )
    assert "abandoned_cart" not in d.states["uci-gift-shop:c:c1"]["journeys"]
    d.batch(other(T0 + 5 * HOUR))
    assert [n["source"] for n in d.sent] == ["follow_up"]  # the first order's e-mail only


def test_reminder_in_quiet_hours_is_held_until_morning_and_idle_partitions_move_on(shop):
    d = Driver(shop)
    evening = utc("2011-11-14T20:30:00")  # reminder due 21:30 London: quiet hours
    d.batch(profile(evening - HOUR), cart("cart_add", 1, evening, 70.0))
    assert d.batch(other(evening + HOUR + MINUTE)) == []
    morning = utc("2011-11-15T08:00:00")
    assert d.store.due["uci-gift-shop:c:c1"][1] == morning  # held: re-armed for 08:00
    # No more events on this partition; wall time passes and the ticks wake it up.
    d.wall += (morning - (evening + HOUR + MINUTE)) - 5 * MINUTE
    assert d.batch(tick=True) == []
    d.wall += 10 * MINUTE
    [note] = d.batch(tick=True)
    assert note["source"] == "abandoned_cart"


def test_opt_out_drops_scheduled_messages(shop):
    d = Driver(shop)
    d.batch(profile(T0 - HOUR), cart("cart_add", 1, T0, 70.0))
    d.batch(profile(T0 + MINUTE, opted_out=True))
    assert d.states["uci-gift-shop:c:c1"]["journeys"] == {}
    assert d.batch(other(T0 + 3 * HOUR)) == []
    assert "uci-gift-shop:c:c1" not in d.store.due
    # Even a step that fires after the opt-out (the timer outran the profile event) is dropped.
    d = Driver(shop)
    d.batch(profile(T0 - HOUR), cart("cart_add", 1, T0, 70.0))
    d.states["uci-gift-shop:c:c1"]["profile"]["opted_out"] = True
    assert d.batch(other(T0 + 3 * HOUR)) == []
    assert d.states["uci-gift-shop:c:c1"]["journeys"] == {}


def test_timers_survive_a_restart(shop):
    first = Driver(shop)
    first.batch(profile(T0 - HOUR), cart("cart_add", 1, T0, 70.0))
    # A new worker (fresh in-memory index) on the same table: the index is rebuilt from it.
    second = Driver(shop, first.store)
    second.states = first.states
    assert second.batch(other(T0 + 30 * MINUTE)) == []
    [note] = second.batch(other(T0 + 2 * HOUR))
    assert note["source"] == "abandoned_cart"


def test_global_cap_applies_to_reminders(shop):
    d = Driver(shop)
    d.batch(profile(T0 - HOUR), cart("cart_add", 1, T0, 70.0))
    state = d.states["uci-gift-shop:c:c1"]
    customer_state.record_message(state, "email", "offer-1", T0)
    customer_state.record_message(state, "email", "offer-2", T0 + 1)
    assert d.batch(other(T0 + 2 * HOUR)) == []
    assert state["journeys"]["abandoned_cart"]["step"] == "done"  # dropped, not retried


def test_anonymous_sessions_have_no_journeys(shop):
    state = customer_state.new_state()
    data = {"event_type": "cart_add", "_ts": T0, "event_id": "e"}
    state["cart"]["lines"] = [["P", 1, 1.0]]
    assert not journeys.on_event(state, shop, "uci-gift-shop:s:web-1", "cart", data)
    # a session id holding ":c:" is still a session
    assert not journeys.on_event(state, shop, "uci-gift-shop:s:guest:c:17850", "cart", data)
    assert "journeys" not in state


def test_journeys_return_the_pending_steps_they_cancel(shop):
    """The domain reports cancellations (the agent counts them); it counts nothing itself."""
    key = "uci-gift-shop:c:c1"
    state = customer_state.new_state()
    state["cart"]["lines"] = [["P", 1, 1.0]]
    armed = {"event_type": "cart_add", "_ts": T0, "event_id": "e1"}
    assert journeys.on_event(state, shop, key, "cart", armed) == journeys.JourneyChange()
    checkout = {"event_type": "checkout", "_ts": T0 + 1, "event_id": "e2"}
    assert journeys.on_event(state, shop, key, "cart", checkout) == journeys.JourneyChange(
        (journeys.Cancelled("abandoned_cart", "remind", "checkout"),)
    )
    assert journeys.on_event(state, shop, key, "cart", checkout) is None  # nothing left to end


# -- the multi-step follow-up ---------------------------------------------------------------


def test_follow_up_email_then_push_at_once_when_opened(shop):
    d = Driver(shop)
    d.batch(profile(T0 - HOUR), order(1, T0))
    [email] = d.batch(other(T0 + 2 * MINUTE))
    assert (email["source"], email["journey_step"], email["channel"]) == (
        "follow_up",
        "first",
        "email",
    )
    d.batch(opened(T0 + HOUR, email["notification_id"]))
    [push] = d.batch(other(T0 + HOUR + 2 * MINUTE))
    assert (push["journey_step"], push["channel"], push["address"]) == ("opened", "push", "tok")
    assert d.batch(other(T0 + 5 * DAY)) == []  # no SMS: the journey ended
    assert "follow_up" not in d.states["uci-gift-shop:c:c1"]["journeys"]


def test_follow_up_sms_when_not_opened_within_three_days(shop):
    d = Driver(shop)
    d.batch(profile(T0 - HOUR), order(1, T0))
    [email] = d.batch(other(T0 + 2 * MINUTE))
    d.batch(opened(T0 + HOUR, "some-other-notification"))  # not ours: no branch
    assert d.batch(other(T0 + 3 * DAY)) == []  # due at 3 days after the e-mail + lateness
    [sms] = d.batch(other(T0 + 3 * DAY + 5 * MINUTE))
    assert (sms["journey_step"], sms["channel"], sms["address"]) == (
        "not_opened",
        "sms",
        "+447700900001",
    )
    # An open arriving after the SMS changes nothing.
    d.batch(opened(T0 + 4 * DAY, email["notification_id"]))
    assert d.batch(other(T0 + 4 * DAY + HOUR)) == []
    assert len(d.sent) == 2


def test_follow_up_starts_on_the_first_order_only(shop):
    d = Driver(shop)
    d.batch(profile(T0 - HOUR), order(1, T0))
    d.batch(other(T0 + 2 * MINUTE))
    d.batch(order(2, T0 + DAY))
    assert d.states["uci-gift-shop:c:c1"]["journeys"]["follow_up"]["id"] == "1"
    every_order = dataclasses.replace(
        shop,
        options=dataclasses.replace(
            shop.options,
            journeys=Journeys(follow_up=FollowUp(trigger="order")),
        ),
    )
    d = Driver(every_order)
    d.batch(profile(T0 - HOUR), order(1, T0), order(2, T0 + MINUTE))
    assert d.states["uci-gift-shop:c:c1"]["journeys"]["follow_up"]["id"] == "2"


# -- replenishment --------------------------------------------------------------------------


def test_replenishment_near_the_typical_interval(shop):
    d = Driver(shop)
    d.batch(profile(T0 - HOUR))
    for n, day in enumerate((0, 10, 20)):
        d.batch(order(n, T0 + day * DAY, products=("85123A", "22423")))
    refill = d.states["uci-gift-shop:c:c1"]["journeys"]["replenishment"]
    assert refill["due"] == T0 + 28 * DAY  # last order + 10 day median - 2 days lead
    assert refill["products"][:2] == ["85123A", "22423"]
    assert [n["source"] for n in d.batch(other(T0 + 27 * DAY))] == []
    [note] = d.batch(other(T0 + 28 * DAY + 2 * MINUTE))
    assert (note["source"], note["products"][:2]) == ("replenishment", ["85123A", "22423"])


def test_replenishment_rearms_on_a_new_order_and_skips_short_intervals(shop):
    state = customer_state.new_state()
    for n, day in enumerate((0, 10, 20, 25)):
        data = {
            "event_type": "order",
            "_ts": T0 + day * DAY,
            "order_id": str(n),
            "event_id": str(n),
            "lines": [{"product_id": "85123A", "quantity": 1, "unit_price": 1.0}],
            "total": 1.0,
        }
        customer_state.apply_order(state, data)
        journeys.on_event(state, shop, "uci-gift-shop:c:c1", "orders", data)
    assert state["journeys"]["replenishment"]["due"] == T0 + 33 * DAY  # median gap 10 days
    daily = customer_state.new_state()
    for n in range(5):
        data = {
            "event_type": "order",
            "_ts": T0 + n * DAY,
            "order_id": str(n),
            "event_id": str(n),
            "lines": [{"product_id": "85123A", "quantity": 1, "unit_price": 1.0}],
            "total": 1.0,
        }
        customer_state.apply_order(daily, data)
        journeys.on_event(daily, shop, "uci-gift-shop:c:c1", "orders", data)
    assert "replenishment" not in daily["journeys"]  # under min_interval_days


def test_typical_interval():
    assert journeys.typical_interval([0.0, 10.0]) is None
    assert journeys.typical_interval([0.0, 10.0, 30.0, 40.0]) == 10.0


# -- metrics --------------------------------------------------------------------------------


def metric(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def step_count(journey: str, step: str, outcome: str, reason: str = "") -> float:
    return metric(
        "nextbest_journey_steps_total",
        merchant=SHOP,
        journey=journey,
        step=step,
        outcome=outcome,
        reason=reason,
    )


def test_metrics_count_sent_cancelled_and_pending_steps(shop):
    sent = step_count("abandoned_cart", "remind", "sent")
    by_checkout = step_count("abandoned_cart", "remind", "cancelled", "checkout")
    by_opt_out = step_count("abandoned_cart", "remind", "cancelled", "opted_out")
    d = Driver(shop)
    d.batch(profile(T0 - HOUR), cart("cart_add", 1, T0, 70.0))
    assert metric("nextbest_journey_timers_pending") == 1
    [_] = d.batch(other(T0 + HOUR + MINUTE))
    assert step_count("abandoned_cart", "remind", "sent") == sent + 1
    assert metric("nextbest_journey_timers_pending") == 0
    d.batch(cart("checkout", 2, T0 + 2 * HOUR, 70.0))  # the reminded cart: nothing pending
    d.batch(cart("cart_add", 3, T0 + 3 * HOUR, 20.0))
    d.batch(cart("checkout", 4, T0 + 3 * HOUR + MINUTE, 20.0))
    assert step_count("abandoned_cart", "remind", "cancelled", "checkout") == by_checkout + 1
    d.batch(cart("cart_add", 5, T0 + 4 * HOUR, 20.0), profile(T0 + 4 * HOUR, opted_out=True))
    assert step_count("abandoned_cart", "remind", "cancelled", "opted_out") == by_opt_out + 1
    assert step_count("abandoned_cart", "remind", "sent") == sent + 1


def test_metrics_count_a_quiet_hours_hold_once_and_its_release(shop):
    held = metric("nextbest_messages_held_total", merchant=SHOP, source="abandoned_cart")
    labels = {"merchant": SHOP, "source": "abandoned_cart", "outcome": "sent"}
    released = metric("nextbest_messages_released_total", **labels)
    held_steps = step_count("abandoned_cart", "remind", "held", "quiet_hours")
    d = Driver(shop)
    evening = utc("2011-11-14T20:30:00")
    d.batch(profile(evening - HOUR), cart("cart_add", 1, evening, 70.0))
    assert d.batch(other(evening + HOUR + MINUTE)) == []
    assert metric("nextbest_messages_held_total", merchant=SHOP, source="abandoned_cart") == (
        held + 1
    )
    assert step_count("abandoned_cart", "remind", "held", "quiet_hours") == held_steps + 1
    assert metric("nextbest_messages_released_total", **labels) == released
    [_] = d.batch(other(utc("2011-11-15T08:05:00")))
    assert metric("nextbest_messages_released_total", **labels) == released + 1
    assert metric("nextbest_messages_held_total", merchant=SHOP, source="abandoned_cart") == (
        held + 1
    )
    assert "held" not in d.states["uci-gift-shop:c:c1"]["journeys"]["abandoned_cart"]


def test_metrics_count_suppressed_steps_by_reason(shop):
    capped = step_count("abandoned_cart", "remind", "suppressed", "frequency_cap")
    d = Driver(shop)
    d.batch(profile(T0 - HOUR), cart("cart_add", 1, T0, 70.0))
    state = d.states["uci-gift-shop:c:c1"]
    customer_state.record_message(state, "email", "offer-1", T0)
    customer_state.record_message(state, "email", "offer-2", T0 + 1)
    assert d.batch(other(T0 + 2 * HOUR)) == []
    assert step_count("abandoned_cart", "remind", "suppressed", "frequency_cap") == capped + 1


# -- the clock and the due-time index -------------------------------------------------------


def test_partition_clock_follows_events_then_wall_time():
    clock = PartitionClock()
    assert clock.now(100.0, 60.0) is None
    clock.observe(T0, wall=100.0)
    clock.observe(T0 - 500, wall=150.0)  # late event: the clock never goes back
    assert clock.now(100.0, 60.0) == T0 - 60
    assert clock.now(400.0, 60.0) == T0 - 60 + 300  # idle: wall-clock speed
    assert PartitionClock.from_json(clock.to_json()) == clock


def test_due_index_pops_each_due_key_once_and_ignores_stale_entries():
    index = DueIndex()
    index.load(0, [("a", 10.0), ("b", 20.0)])
    index.set(0, "a", 30.0)  # re-armed: the entry at 10 is stale
    index.set(1, "c", 5.0)
    assert index.pop_due(0, 25.0) == ["b"]
    assert index.pop_due(0, 25.0) == []
    assert index.pop_due(0, 30.0) == ["a"]
    assert index.pop_due(1, 100.0) == ["c"]
    index.set(0, "d", 1.0)
    index.set(0, "d", None)
    assert index.pop_due(0, 100.0) == [] and index.pending(0) == 0
    for i in range(5000):  # heavy re-arming keeps the heap bounded
        index.set(0, "e", 1000.0 + i)
    assert len(index._heaps[0]) < 2000


# -- configuration --------------------------------------------------------------------------


def test_demo_merchant_has_all_three_journeys(shop):
    configured = shop.options.journeys
    assert configured.abandoned_cart.after_s == HOUR
    assert configured.replenishment.min_orders == 3
    assert (
        configured.follow_up.first,
        configured.follow_up.if_opened,
        configured.follow_up.if_not_opened,
        configured.follow_up.wait_s,
    ) == ("email", "push", "sms", 3 * DAY)


@pytest.mark.parametrize(
    ("journeys_config", "message"),
    [
        ({"abandoned_cart": {"after_minutes": 0}}, "after_minutes"),
        ({"replenishment": {"min_orders": 2}}, "min_orders"),
        ({"follow_up": {"trigger": "birthday"}}, "trigger"),
        ({"follow_up": {"if_opened": "pigeon"}}, "if_opened"),
        ({"welcome": {}}, "unknown journey"),
        ({"abandoned_cart": {"message": ""}}, "message"),
        ({"abandoned_cart": {"message": "Hi {name}"}}, "only placeholder"),
    ],
)
def test_bad_journey_config_is_rejected(journeys_config, message):
    with pytest.raises(CatalogError, match=message):
        parse_merchant("m", {"currency": "GBP", "journeys": journeys_config})
