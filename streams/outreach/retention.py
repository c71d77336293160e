"""The retention journey: one step when a customer's churn risk reaches the merchant's threshold,
or when they have gone ``overdue_intervals`` of their own expected intervals without an order.

The risk (`streams.state.churn`) grows while a customer stays silent, and a silent customer sends
no events, so the journey does not wait for one: each order arms a timer at the time the
trigger will hold if nothing happens (`triggered`): the earlier of the time the risk will reach
``threshold`` (`streams.state.churn.crossing_time`) and the end of ``overdue_intervals``
expected intervals after the last order (the risk of a customer with many orders rises too
slowly to reach a threshold that suits one- and two-order customers: docs/churn.md), no
earlier than the end of the customer's expected interval between orders (a one-order
customer's risk starts high: they are not drifting away the day they bought) and a
``window_s`` after the last step. When it fires the trigger is checked again at that time (a
visit since may have lowered the risk: the timer moves to the new time, `ready`); when it
holds the step goes out: the customer is in the holdout or treated (`arm`, by a stable hash of
the merchant's ``experiment`` id and the customer key, as the promotion policy's holdout); a
treated customer gets the promotion policy's offer for a cart of their average order value
(`decision_context`), else their most bought products, else the message alone; a holdout
customer gets nothing, but the step is counted and the window starts as if it were sent. While
the trigger holds a step fires again a window later, at most ``max_steps`` per lapse; the next
order starts a new lapse.

State: ``state["journeys"]["retention"] = {"id", "step", "due", "lapse", "k", "last"}``: the
lapse (the order that started it), the steps taken in it, the time of the last step.
"""

from __future__ import annotations

from collections import Counter

from streams.decisions import DecisionContext
from streams.merchants.catalog import Merchant
from streams.merchants.options import Retention
from streams.promotion.experiments import HOLDOUT, Arm, Experiment, assign
from streams.state import churn

RETENTION = "retention"
TREATED = "treated"
STEP = "remind"
PRODUCTS = 3


def no_cart_generation(now: float) -> int:
    """The cart generation of a retention decision: negative, no cart's, and one per minute of
    event time, so the promotion policy never takes it for a repeat of the customer's cart
    decision or of an earlier retention step."""
    return -1 - int(now // 60)


def arm(config: Retention, customer_key: str) -> str:
    """``"holdout"`` or ``"treated"``: a pure function of the experiment id and the key."""
    experiment = Experiment(
        id=config.experiment, holdout=config.holdout, arms=(Arm(TREATED, 1.0, RETENTION),)
    )
    return HOLDOUT if assign(experiment, customer_key) == HOLDOUT else TREATED


def triggered(history: churn.History, config: Retention, now: float) -> bool:
    """Whether the journey's trigger holds at ``now`` for a customer with this history: past
    their expected interval, and their risk at the threshold or ``overdue_intervals`` of their
    intervals gone by. With the history unchanged, once it holds it holds."""
    interval = churn.expected_interval_days(history) * churn.DAY_S
    if now < history.last + interval:
        return False
    overdue = _overdue_time(history, config)
    if overdue is not None and now >= overdue:
        return True
    return churn.score(history, now) >= config.threshold


def _overdue_time(history: churn.History, config: Retention) -> float | None:
    """When the customer will have gone ``overdue_intervals`` expected intervals without an
    order (None: that trigger is off)."""
    if config.overdue_intervals is None:
        return None
    interval = churn.expected_interval_days(history) * churn.DAY_S
    return history.last + config.overdue_intervals * interval


def _due(state: dict, config: Retention, now: float, last: float | None) -> float | None:
    start = max(now, churn.overdue_at(state) or now)
    crossing = churn.crossing_time(state, config.threshold, start)
    history = churn.history_of(state)
    overdue = None if history is None else _overdue_time(history, config)
    if overdue is not None:
        overdue = max(overdue, start)
        crossing = overdue if crossing is None else min(crossing, overdue)
    if crossing is None:
        return None
    return crossing if last is None else max(crossing, last + config.window_s)


def arm_timer(running: dict, state: dict, config: Retention, order_id: str, now: float) -> bool:
    """After an order: a new lapse, due when the trigger will hold (None: the risk does not
    reach the threshold within two years and the overdue trigger is off; the instance is kept
    for its ``last``). True: the instance changed."""
    last = (running.get(RETENTION) or {}).get("last")
    running[RETENTION] = {
        "id": f"{order_id}:0",
        "step": STEP,
        "due": _due(state, config, now, last),
        "lapse": order_id,
        "k": 0,
        "last": last,
    }
    return True


def ready(state: dict, config: Retention, instance: dict, now: float) -> bool:
    """Whether the due step fires at ``now``; if not, the instance waits for the new time the
    trigger will hold (a visit lowered the risk), or for nothing."""
    history = churn.history_of(state)
    if history is not None and triggered(history, config, now):
        return True
    instance["due"] = _due(state, config, now, instance.get("last"))
    return False


def after_step(running: dict, config: Retention, instance: dict, now: float) -> None:
    """The step was taken (sent, held out or suppressed): the next one a window later, or the
    lapse's end after ``max_steps``."""
    k = instance["k"] + 1
    due = now + config.window_s if k < config.max_steps else None
    step = STEP if due is not None else "done"
    instance.update(id=f"{instance['lapse']}:{k}", step=step, due=due, k=k, last=now)
    running[RETENTION] = instance


def most_bought(state: dict, count: int = PRODUCTS) -> tuple[str, ...]:
    counts = Counter(p for order in state.get("orders") or () for p in order[3])
    return tuple(p for p, _ in counts.most_common(count))


def decision_context(
    merchant: Merchant, customer_key: str, state: dict, now: float, event_id: str
) -> DecisionContext | None:
    """What the promotion policy is asked for a retention step: a cart of the customer's average
    order value (None: no positive spend to base it on)."""
    rfm = state.get("rfm") or {}
    orders = rfm.get("frequency") or 0
    value = round(rfm.get("monetary", 0.0) / orders, 2) if orders else 0.0
    if value <= 0:
        return None
    return DecisionContext(
        merchant=merchant,
        customer_key=customer_key,
        state=state,
        cart_value=value,
        currency=(state.get("cart") or {}).get("currency") or merchant.currency,
        ts=now,
        cart_event_id=event_id,
        generation=no_cart_generation(now),
    )
