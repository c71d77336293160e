"""Simulated customer responses to the promotion policy's offers in ``nextbest demo``.

The replay's orders are the real data's; what the customers do with an offer is simulated, with
the customer-response model of ``models.promotion.simulator`` (said so in the tail and the
summary):

* The abandoned carts are real visits replayed without their order (``abandon_share`` of the
  known customers' invoices). A cart's session is answered once, with the last decision made on
  it (the offer shown at checkout). A visit that ends with an order in the data is bought with or
  without an offer; one that was abandoned is bought only if an offer brings the customer back,
  with the simulator's take-up probability (``offer_take_up``): of the carts not bought without
  an offer, the share an offer of that depth converts. Then the visit's real order follows,
  five minutes after the visit's end.
* Each customer (by customer key, seeded) gets the simulator's hidden parameters: base purchase
  log-odds ``logit(cart_conversion)`` plus noise (sd ``conversion_spread``) and a discount
  sensitivity, the Hillstrom e-mail's overall lift on conversions times a mean-one log-normal
  (sd ``sensitivity_spread``); each visit has its own uniform. Habituation, intent and the
  Hillstrom cells are left out.
* A buyer redeems the offer they have: free shipping and %-off always, a threshold nudge only
  if the order reaches its tier (the data decides the top-up), a product coupon only if the
  order has its product. The redemption is sent as ``offer_redeemed`` feedback (at the order's
  time); an offer not redeemed is ignored (no feedback).

`expected_profit` prices any action on a session the same way, with the reward join's own
pricing (``streams.promotion.rewards``): the threshold rules' counterfactual profit on the
same carts.
"""

from __future__ import annotations

import math
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime

import numpy as np
import orjson

from agents.runtime.settings import Settings
from agents.tools.replay import EventBuilder, ReplayEvent
from models.promotion.simulator import SimConfig, offer_take_up
from schemas.keys import iso
from schemas.records import SCHEMA_VERSION
from streams.decisions import threshold_offer
from streams.merchants.catalog import Merchant
from streams.promotion import rewards
from streams.promotion.actions import Action, candidate_actions, no_offer

TIERS = ("free_shipping", "percent_off")
SIM = SimConfig()  # the simulator's documented assumptions
RETURN_S = 300.0  # a customer an offer brings back orders this long after the visit's end
SETTLE_WALL_S = 3.0  # a session is answered this long (wall clock) after its last event went out


@dataclass(frozen=True)
class Session:
    """One replayed visit: its cart events and its real order (held back if abandoned)."""

    invoice: str
    customer_key: str
    end: float  # event time of the visit's last event (its order, or its last cart add)
    order: ReplayEvent | None  # the data's order; None for a visit without one (no products)
    abandoned: bool


def plan(
    events: Iterable[ReplayEvent], builder: EventBuilder
) -> tuple[list[ReplayEvent], dict[str, Session], dict[str, str]]:
    """Split a replay made without abandonment (``abandon_share=0``) into the events to send
    (the abandoned visits' checkout and order left out, picked by ``builder`` as the replay
    picks them), the visits by invoice, and each cart event's invoice."""
    sent: list[ReplayEvent] = []
    sessions: dict[str, Session] = {}
    cart_invoice: dict[str, str] = {}
    for event in events:
        value = event.value
        is_order = event.topic_kind == "orders" and value["event_type"] == "order"
        if event.topic_kind == "cart":
            invoice = value["session_id"].removeprefix("web-")
            cart_invoice[value["event_id"]] = invoice
        elif is_order:
            invoice = value["order_id"]
        else:
            sent.append(event)
            continue
        abandoned = builder.abandoned(invoice, value.get("customer_id"))
        held_back = abandoned and value["event_type"] in ("checkout", "order")
        session = sessions.get(invoice) or Session(invoice, event.key, event.ts, None, abandoned)
        sessions[invoice] = replace(
            session,
            end=session.end if held_back else max(session.end, event.ts),
            order=event if is_order else session.order,
        )
        if not held_back:
            sent.append(event)
    return sent, sessions, cart_invoice


@dataclass(frozen=True)
class Customer:
    """A customer's hidden parameters in the response model."""

    base_logit: float
    sensitivity: float

    @classmethod
    def draw(cls, key: str, lift: float, seed: int, config: SimConfig = SIM) -> Customer:
        rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
        p = config.cart_conversion
        base = math.log(p / (1.0 - p)) + float(rng.normal(0.0, config.conversion_spread))
        sd = config.sensitivity_spread
        return cls(base, lift * float(np.exp(rng.normal(-sd * sd / 2.0, sd))))


def visit_uniform(invoice: str, seed: int) -> float:
    """The visit's uniform: the same for every policy (common random numbers)."""
    return float(np.random.default_rng([seed, zlib.crc32(invoice.encode()), 1]).random())


def redeems(action: Action, order: dict | None) -> bool:
    """Whether a buyer placing ``order`` redeems the offer (see the module doc)."""
    if order is None or action.kind == "none":
        return False
    if action.kind in TIERS:
        return True
    if action.kind == "threshold_nudge":
        return order["total"] >= action.basket
    return any(line["product_id"] == action.product_id for line in order["lines"])


def bought_probability(session: Session, action: Action, customer: Customer) -> float:
    """P(the visit ends with its order) given the offer: 1 if the data has it bought, else the
    take-up of an offer the order could redeem."""
    if session.order is None:
        return 0.0
    if not session.abandoned:
        return 1.0
    if not redeems(action, session.order.value):
        return 0.0
    return offer_take_up(customer.base_logit, customer.sensitivity, action.depth)


def booked_profit(record: dict, action: Action, order: dict, merchant: Merchant) -> float:
    """The profit the reward join books for ``order`` had decision ``record`` taken ``action``
    (redeemed when `redeems` says so): the join itself, run on a scratch state."""
    promotion = action.promotion
    offer_id = "offer" if promotion is not None else None
    decision = {
        **record,
        "decision_id": "what-if",
        "action": action.id,
        "action_kind": action.kind,
        "promotion_id": promotion.id if promotion else None,
        "product_id": action.product_id,
        "sent": offer_id is not None,
        "offer_id": offer_id,
        "max_discount": action.discount if offer_id else None,
    }
    terms = {
        "tier_type": promotion.type if promotion else None,
        "percent": promotion.percent if promotion else 0.0,
        "shipping_cost": merchant.shipping_cost,
        "margin_rate": merchant.margin_rate,
        "ledger_key": None,
    }
    state: dict = {}
    rewards.open_decision(state, decision, 0.0, 2.0, terms)
    if offer_id and redeems(action, order):
        event = {"event_type": "offer_redeemed", "offer_id": offer_id, "_ts": 1.0}
        rewards.on_feedback(state, event)
    rewards.on_order(state, {**order, "_ts": 1.0})
    return rewards.close_due(state, 2.0)[0]["profit"]


def expected_profit(
    record: dict, session: Session, action: Action, customer: Customer, merchant: Merchant
) -> float:
    """Expected profit of ``action`` on the visit decided by ``record``, in the demo's response
    model, priced as the reward join prices it."""
    p = bought_probability(session, action, customer)
    return p * booked_profit(record, action, session.order.value, merchant) if p else 0.0


def record_action(record: dict, merchant: Merchant) -> Action:
    """The decided action of a decision record, with its option's economics."""
    option = next(o for o in record["options"] if o["action"] == record["action"])
    promotions = (*merchant.promotions, *merchant.product_coupons)
    promotion = next((p for p in promotions if p.id == record["promotion_id"]), None)
    return Action(
        id=record["action"],
        kind=record["action_kind"],
        cart_value=record["cart_value"],
        basket=option["basket"],
        discount=option["discount"],
        promotion=promotion,
        product_id=record.get("product_id"),
    )


class Responses:
    """Answers each visit's last decision with the simulated customer's response: sends the
    ``offer_redeemed`` feedback and, for a visit an offer brings back, its real order."""

    def __init__(
        self,
        settings: Settings,
        merchant: Merchant,
        sessions: dict[str, Session],
        cart_invoice: dict[str, str],
        lift: float,
        seed: int = 0,
    ) -> None:
        from confluent_kafka import Producer

        from agents.tools.replay import producer_config

        self.settings = settings
        self.merchant = merchant
        self.sessions = sessions
        self.cart_invoice = cart_invoice
        self.lift = lift
        self.seed = seed
        self.producer = Producer(producer_config(settings))
        self.lock = threading.Lock()
        self.last: dict[str, tuple[dict, float]] = {}  # invoice -> (last decision, wall time)
        self.ended: dict[str, float] = {}  # invoice -> wall time its last event went out
        self.answered: dict[str, dict] = {}  # invoice -> the decision answered
        self.outcomes: Counter[str] = Counter()
        self.sent = 0  # events sent (feedback and orders), for the processed count

    def customer(self, key: str) -> Customer:
        return Customer.draw(key, self.lift, self.seed)

    def on_sent(self, event: ReplayEvent) -> None:
        """Replay callback: notes when a visit's last event went out."""
        invoice = (event.value.get("session_id") or "").removeprefix("web-")
        session = self.sessions.get(invoice)
        if session is not None and event.ts >= session.end:
            with self.lock:
                self.ended[invoice] = time.monotonic()

    def on_decision(self, record: dict) -> None:
        invoice = self.cart_invoice.get(record["cart_event_id"])
        if invoice in self.sessions and invoice not in self.answered:
            with self.lock:
                self.last[invoice] = (record, time.monotonic())

    def settle(self, everything: bool = False) -> None:
        """Answer the visits whose last event went out `SETTLE_WALL_S` ago and whose last
        decision is as old (all of them with ``everything``)."""
        now = time.monotonic()
        with self.lock:
            if self.producer is None:
                return
            due = [
                invoice
                for invoice, (_, seen) in self.last.items()
                if everything
                or (invoice in self.ended and now - max(seen, self.ended[invoice]) >= SETTLE_WALL_S)
            ]
            for invoice in due:
                self._answer(self.sessions[invoice], self.last.pop(invoice)[0])
            self.producer.poll(0)

    def _answer(self, session: Session, record: dict) -> None:
        self.answered[session.invoice] = record
        if not record["sent"] or session.order is None:
            self.outcomes["no offer" if not record["sent"] else "ignored"] += 1
            return
        action = record_action(record, self.merchant)
        order = session.order.value
        if not redeems(action, order):
            self.outcomes["ignored"] += 1
            return
        at = session.order.ts
        if session.abandoned:
            customer = self.customer(session.customer_key)
            take_up = offer_take_up(customer.base_logit, customer.sensitivity, action.depth)
            if visit_uniform(session.invoice, self.seed) >= take_up:
                self.outcomes["ignored"] += 1
                return
            at = session.end + RETURN_S
        self._send_feedback(session, record, at)
        if session.abandoned:
            late = {**order, "event_time": iso(at)}
            self._produce(self.settings.topics.orders, session.order.key, late)
            self.outcomes["brought back"] += 1
        else:
            self.outcomes["redeemed"] += 1

    def _send_feedback(self, session: Session, record: dict, at: float) -> None:
        order = session.order.value
        feedback = {
            "schema_version": SCHEMA_VERSION,
            "event_id": f"redeem-{record['decision_id']}",
            "event_type": "offer_redeemed",
            "merchant_id": record["merchant_id"],
            "customer_id": order.get("customer_id"),
            "session_id": None if order.get("customer_id") else order.get("session_id"),
            "event_time": iso(at),
            "offer_id": record["offer_id"],
            "notification_id": None,
        }
        self._produce(self.settings.topics.feedback, session.order.key, feedback)

    def _produce(self, topic: str, key: str, value: dict) -> None:
        self.producer.produce(topic, key=key.encode(), value=orjson.dumps(value))
        self.sent += 1

    def close(self) -> None:
        with self.lock:
            if self.producer is not None:
                self.producer.flush(10)
                self.producer = None  # librdkafka clients close when collected


def rules_action(record: dict, merchant: Merchant) -> Action:
    """What the threshold rules (``streams.decisions.threshold_offer``) would have offered on
    the decision's cart (guard rails and budgets not applied)."""
    ts = datetime.fromisoformat(record["event_time"]).timestamp()
    cart, currency = record["cart_value"], record["currency"]
    offer = threshold_offer(merchant, cart, currency, ts)
    actions = candidate_actions(merchant, cart, currency, ts)
    return next((a for a in actions if offer is not None and a.id == offer.key), actions[0])


@dataclass(frozen=True)
class Counterfactual:
    """Expected profit on one arm's answered visits that have an order in the data."""

    carts: int
    policy: float  # of the actions applied (the holdout's: none)
    rules: float  # had the threshold rules decided
    no_offer: float


def counterfactual(
    answered: dict[str, dict],
    sessions: dict[str, Session],
    merchant: Merchant,
    customer: Callable[[str], Customer],
) -> dict[str, Counterfactual]:
    """Per arm, the expected profit of the policy's applied actions, of the threshold rules'
    and of no offer on the same visits (each visit's answered decision), in the demo's response
    model (`expected_profit`)."""
    sums: dict[str, list[float]] = {}
    for invoice, record in answered.items():
        session = sessions[invoice]
        if session.order is None:
            continue
        who = customer(session.customer_key)
        applied = record_action(record, merchant) if record["sent"] else no_offer(0.0)
        row = sums.setdefault(record["arm"], [0, 0.0, 0.0, 0.0])
        row[0] += 1
        for i, action in enumerate((applied, rules_action(record, merchant), no_offer(0.0)), 1):
            row[i] += expected_profit(record, session, action, who, merchant)
    return {arm: Counterfactual(int(n), p, r, z) for arm, (n, p, r, z) in sorted(sums.items())}
