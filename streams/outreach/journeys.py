"""Journeys as event-time timers kept in the customer's own state (no cron, no scheduler).

Four journeys, configured per merchant (``journeys:`` in the catalog, `streams.merchants.options`):

- **abandoned cart**: a cart change arms a timer ``after_minutes`` later; a later cart change
  re-arms it, checkout / clear / an order cancels it. When it fires and the cart still holds
  lines, one reminder goes out (the agent adds the policy's offer for that cart, if any); the
  same cart is never reminded twice.
- **replenishment**: after each order of a customer with ``min_orders`` orders, a reminder is
  due ``lead_days`` before the typical (median) interval between their orders has passed since
  the last one (intervals shorter than ``min_interval_days`` are not reminded); a new order
  re-arms it.
- **follow-up** (multi-step): on the trigger order, an e-mail; if it is opened (offer feedback
  ``offer_opened`` naming the e-mail's notification id), a push at once; if it is not opened
  within ``wait_days``, an SMS instead.
- **retention**: when the customer's churn risk reaches the merchant's threshold, an offer, a
  recommendation or a message, against a holdout (`streams.outreach.retention`).

State: ``state["journeys"]`` maps a journey name to its one running instance, ``{"id", "step",
"due", ...}``; ``due`` is the event time the next step fires (None: waiting for nothing).
Everything here is pure: `on_event` arms and cancels, `due_steps` says what is due at ``now``,
`settle` records what the delivery rules did with a step (sent, held until, suppressed).
Each of them returns the pending steps that ended without firing (`Cancelled`, with what
ended them); the agent counts them (``nextbest_journey_steps_total{outcome="cancelled"}``).
`journey_timers` is the due-time index the agent keeps of `next_due`.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from schemas.keys import id_digest, is_customer_key
from streams.merchants.catalog import Merchant
from streams.merchants.options import Journeys
from streams.outreach import retention
from streams.outreach.delivery import Held, Message, Send, Suppressed
from streams.timers import PartitionTimers, TimerStore

ABANDONED_CART = "abandoned_cart"
REPLENISHMENT = "replenishment"
FOLLOW_UP = "follow_up"
RETENTION = retention.RETENTION
NO_REMINDER_CART_EVENTS = ("checkout", "cart_clear")
REPLENISH_PRODUCTS = 3


@dataclass(frozen=True)
class Step:
    """One message a journey wants to send now."""

    journey: str
    step: str  # "remind" | "first" | "opened" | "not_opened"
    instance: str
    channel: str | None  # None: the customer's preferred channel
    body: str
    dedupe_key: str
    cart_event_id: str | None = None  # abandoned cart: the cart the policy is asked about
    products: tuple[str, ...] = ()
    held: bool = False  # the rules held this step for quiet hours before (it fires again now)

    @property
    def message(self) -> Message:
        return Message(self.journey, self.dedupe_key, self.channel)


@dataclass(frozen=True)
class Cancelled:
    """A pending step that ended without firing, and what ended it (``reason``)."""

    journey: str
    step: str
    reason: str


@dataclass(frozen=True)
class JourneyChange:
    """An input event changed the customer's journeys (the caller then updates the customer's
    entry in the due-time index); ``cancelled``: the pending steps it ended."""

    cancelled: tuple[Cancelled, ...] = ()


def journeys_of(state: dict) -> dict:
    return state.setdefault("journeys", {})


def step_key(merchant_id: str, customer_key: str, journey: str, instance: str, step: str) -> str:
    """The notification's dedupe key: one per journey instance and step, however often fired."""
    return id_digest(merchant_id, customer_key, journey, instance, step)


def cancel(running: dict, journey: str, reason: str, cancelled: list[Cancelled]) -> bool:
    """End ``journey``'s running instance; True when there was one. A pending step (one with a
    due time) is added to ``cancelled`` with ``reason``."""
    instance = running.pop(journey, None)
    if instance is None:
        return False
    if instance.get("due") is not None:
        cancelled.append(Cancelled(journey, instance["step"], reason))
    return True


def typical_interval(order_times: list[float]) -> float | None:
    """Median gap between consecutive orders (None with fewer than two gaps)."""
    times = sorted(order_times)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False) if b > a]
    return statistics.median(gaps) if len(gaps) >= 2 else None


def _on_cart(state: dict, merchant: Merchant, data: dict, cancelled: list[Cancelled]) -> bool:
    running = journeys_of(state)
    config = merchant.options.journeys.abandoned_cart
    current = running.get(ABANDONED_CART)
    cart = state["cart"]
    if data["event_type"] in NO_REMINDER_CART_EVENTS:
        return cancel(running, ABANDONED_CART, data["event_type"], cancelled)
    if config is None or not cart["lines"]:
        reason = "journey_off" if config is None else "cart_emptied"
        return cancel(running, ABANDONED_CART, reason, cancelled)
    generation = cart["generation"]
    if current is not None and current["gen"] == generation and current["step"] == "done":
        return False  # this cart was already reminded once
    running[ABANDONED_CART] = {
        "id": f"cart-{generation}",
        "step": "remind",
        "due": data["_ts"] + config.after_s,
        "gen": generation,
        "event": data["event_id"],
    }
    return True


def _on_order(state: dict, merchant: Merchant, data: dict, cancelled: list[Cancelled]) -> bool:
    running = journeys_of(state)
    changed = cancel(running, ABANDONED_CART, "order", cancelled)  # bought: nothing to remind
    journeys = merchant.options.journeys
    refill = journeys.replenishment
    if refill is not None:
        orders = state["orders"]
        interval = typical_interval([order[0] for order in orders])
        due = None
        if len(orders) >= refill.min_orders and interval and interval >= refill.min_interval_s:
            due = orders[-1][0] + interval - refill.lead_s
        if due is not None and due > data["_ts"]:
            counts = Counter(p for order in orders for p in order[3])
            running[REPLENISHMENT] = {
                "id": data["order_id"],
                "step": "remind",
                "due": due,
                "products": [p for p, _ in counts.most_common(REPLENISH_PRODUCTS)],
            }
            changed = True
        else:
            changed |= cancel(running, REPLENISHMENT, "no_interval", cancelled)
    follow = journeys.follow_up
    if follow is not None and (
        follow.trigger == "order" or (state["rfm"]["frequency"] == 1 and FOLLOW_UP not in running)
    ):
        running[FOLLOW_UP] = {"id": data["order_id"], "step": "first", "due": data["_ts"]}
        changed = True
    if journeys.retention is not None:
        changed |= retention.arm_timer(
            running, state, journeys.retention, data["order_id"], data["_ts"]
        )
    return changed


def _on_opened(state: dict, data: dict) -> bool:
    instance = journeys_of(state).get(FOLLOW_UP)
    if instance is None or instance["step"] != "await_open":
        return False
    if instance["sent"] not in (data.get("notification_id"), data.get("offer_id")):
        return False
    instance.update(step="opened", due=data["_ts"])
    return True


def on_event(
    state: dict, merchant: Merchant, customer_key: str, kind: str, data: dict
) -> JourneyChange | None:
    """Arm, re-arm, advance or cancel journeys after an input event was applied to ``state``.

    None when no journey changed. Anonymous sessions have no journeys: they cannot be messaged.
    """
    if not is_customer_key(customer_key):
        return None
    cancelled: list[Cancelled] = []
    changed = False
    if kind == "profiles":
        running = state.get("journeys")
        if data.get("opted_out") and running:
            for name in list(running):  # opt-out drops every scheduled message at once
                cancel(running, name, "opted_out", cancelled)
            changed = True
    elif kind == "cart":
        changed = _on_cart(state, merchant, data, cancelled)
    elif kind == "orders" and data["event_type"] == "order":
        changed = _on_order(state, merchant, data, cancelled)
    elif kind == "feedback" and data["event_type"] == "offer_opened":
        changed = _on_opened(state, data)
    return JourneyChange(tuple(cancelled)) if changed else None


def next_due(state: dict) -> float | None:
    """Event time of the customer's earliest pending step (None: no timer)."""
    dues = [i["due"] for i in state.get("journeys", {}).values() if i.get("due") is not None]
    return min(dues, default=None)


def journey_timers(
    store: TimerStore, lateness_s: float, wall: Callable[[], float] = time.time
) -> PartitionTimers:
    """The due-time index of `next_due` per partition (the ``journey-timers`` table): the clock
    runs on at wall-clock speed while a partition is quiet (a reminder is due an hour after the
    last cart change, whatever else happens), and a customer's time is stored only when it comes
    earlier than the stored one (a re-armed or cancelled timer costs no write; its early
    wake-up stores the real time)."""
    return PartitionTimers(
        store, next_due, lateness_s, idle_advance=True, earlier_only=True, wall=wall
    )


def _step(
    state: dict, config: Journeys, name: str, instance: dict
) -> tuple[str, str | None, str, dict] | None:
    """(step, channel, body, extra Step fields) of a due instance, or None to drop it."""
    if name == ABANDONED_CART and config.abandoned_cart is not None:
        lines = state["cart"]["lines"]
        if not lines or state["cart"]["generation"] != instance["gen"]:
            return None
        count = sum(line[1] for line in lines)
        body = config.abandoned_cart.message.format(items=f"{count} item{'s' * (count != 1)}")
        return "remind", None, body, {"cart_event_id": instance["event"]}
    if name == REPLENISHMENT and config.replenishment is not None:
        products = tuple(instance["products"])
        return "remind", None, config.replenishment.message, {"products": products}
    if name == RETENTION and config.retention is not None:
        products = retention.most_bought(state) if config.retention.recommend else ()
        return retention.STEP, None, config.retention.message, {"products": products}
    follow = config.follow_up
    if name == FOLLOW_UP and follow is not None:
        if instance["step"] == "first":
            return "first", follow.first, follow.first_message, {}
        if instance["step"] == "opened":
            return "opened", follow.if_opened, follow.opened_message, {}
        if instance["step"] == "await_open":  # not opened in time
            return "not_opened", follow.if_not_opened, follow.not_opened_message, {}
    return None


def due_steps(
    state: dict, merchant: Merchant, customer_key: str, now: float
) -> tuple[list[Step], list[Cancelled]]:
    """The steps due at event time ``now``, and the pending steps cancelled instead: instances
    whose journey or cart is gone are dropped."""
    running = state.get("journeys") or {}
    config = merchant.options.journeys
    steps: list[Step] = []
    cancelled: list[Cancelled] = []
    for name, instance in list(running.items()):
        if instance.get("due") is None or instance["due"] > now:
            continue
        if (
            name == RETENTION
            and config.retention is not None
            and not retention.ready(state, config.retention, instance, now)
        ):
            continue  # a visit lowered the risk: due again at the new crossing time
        made = _step(state, config, name, instance)
        if made is None:  # the cart is gone, or the merchant switched the journey off
            switched_off = getattr(config, name, None) is None
            cancel(running, name, "journey_off" if switched_off else "cart_gone", cancelled)
            continue
        step, channel, body, extra = made
        key = step_key(merchant.id, customer_key, name, instance["id"], step)
        held = instance.get("held", False)
        steps.append(Step(name, step, instance["id"], channel, body, key, held=held, **extra))
    return steps, cancelled


def settle(
    state: dict,
    merchant: Merchant,
    step: Step,
    result: Send | Held | Suppressed,
    now: float,
) -> list[Cancelled]:
    """Move the journey on after the delivery rules decided about ``step`` at ``now``.

    Held: the same step fires again at ``until`` (marked held). Opted out: every journey ends
    (the others' pending steps are returned as cancelled). Sent (or
    already sent: a replay): the next step, or the end. Otherwise suppressed: the step is
    dropped; a follow-up whose first message was not sent ends (nothing can be opened).
    """
    cancelled: list[Cancelled] = []
    running = journeys_of(state)
    instance = running.get(step.journey)
    if instance is None or instance["id"] != step.instance:
        return cancelled
    if isinstance(result, Held):
        instance.update(due=result.until, held=True)
        return cancelled
    instance.pop("held", None)
    if isinstance(result, Suppressed) and result.reason == "opted_out":
        del running[step.journey]
        for name in list(running):
            cancel(running, name, "opted_out", cancelled)
        return cancelled
    sent = isinstance(result, Send) or result.reason == "duplicate"
    if step.journey == ABANDONED_CART:
        running[step.journey] = {
            "id": instance["id"],
            "step": "done",
            "due": None,
            "gen": instance["gen"],
        }
    elif step.journey == FOLLOW_UP and step.step == "first" and sent:
        follow = merchant.options.journeys.follow_up
        wait = follow.wait_s if follow is not None else 0.0
        instance.update(step="await_open", due=now + wait, sent=step.dedupe_key)
    elif step.journey == RETENTION and merchant.options.journeys.retention is not None:
        retention.after_step(running, merchant.options.journeys.retention, instance, now)
    else:
        del running[step.journey]
    return cancelled
