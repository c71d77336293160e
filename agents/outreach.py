"""Journeys in the stream: arm timers on input events, fire them on event time, deliver.

The pipeline owns the micro-batch; `Outreach` plugs into it at three points (see the
"Journeys and timers" section of docs/architecture.md):

- `on_input` after an input event was applied to the customer's state: arm / cancel journeys
  (`streams.outreach.journeys.on_event`) and note the partition's newest event time;
- `on_tick` for a ``{"kind": "tick"}`` record on the session-merges topic: a wake-up that
  `register_ticks` sends to every partition this worker owns, so idle partitions move on too;
- `finish` once per batch, before the state is saved: advance each touched partition's clock
  (`streams.timers`), update the due-time index for changed customers, fire the steps that
  are due (customers loaded through the pipeline's own ``load``, so state is read and written
  once per batch), ask the policy once for the offers of all abandoned carts, apply the
  delivery rules (`streams.outreach.delivery.decide`), emit notifications and record them in state.

Metrics: every step is counted by outcome (``nextbest_journey_steps_total``: sent, held,
suppressed, and cancelled: the pending steps `streams.outreach.journeys` reports ended), a
quiet-hours hold once per message (``nextbest_messages_held_total``) and again when it ends
(``nextbest_messages_released_total``), and the due-time index's size after each batch
(``nextbest_journey_timers_pending``).

Timers live in the ``journey-timers`` table (customer key -> ``{"due", "p"}``, plus one clock
per partition), written with the partition of the customer's own events, so the table is
co-partitioned with the customers and recovered with them after a restart or rebalance.
A customer's due time is written only when it comes earlier than the stored one, the clock at
most once a second (`streams.outreach.journeys.journey_timers`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import faust
import orjson

from agents.runtime import churn_metrics, metrics
from agents.runtime.app import NextbestApp
from agents.runtime.batch import CustomerEntry, LoadEntry
from agents.runtime.timer_table import timer_table
from schemas.keys import offer_id_for, parse_state_key
from schemas.records import notification_record
from streams.decisions import DecisionContext, Offer, Policy
from streams.merchants.catalog import Merchant
from streams.outreach import journeys, retention
from streams.outreach.delivery import Held, Send, Suppressed, decide
from streams.outreach.journeys import Cancelled, Step
from streams.promotion.experiments import HOLDOUT
from streams.state import customer_state
from streams.timers import TimerStore

log = logging.getLogger(__name__)
DEFAULT_LATENESS_S = 60.0  # Settings.journey_lateness_s
TICK_KEY = b"__tick__"


@dataclass
class _Touched:
    """What a batch did to one partition."""

    event: object  # an event of the partition: table writes are routed by it
    newest: float | None = None
    changed: dict[str, CustomerEntry] = field(default_factory=dict)


@dataclass
class _Fired:
    key: str
    entry: CustomerEntry
    merchant: Merchant
    step: Step
    now: float
    partition: int
    event: object
    offer: Offer | None = None
    arm: str | None = None  # a retention step's: treated or holdout

    @property
    def decision_event_id(self) -> str | None:
        """The event id the policy decided this step's offer for: the abandoned cart's, or the
        retention step's own (its dedupe key); None: the policy is not asked."""
        if self.step.cart_event_id is not None:
            return self.step.cart_event_id
        if self.arm == retention.TREATED:
            config = self.merchant.options.journeys.retention
            return self.step.dedupe_key if config is not None and config.offer else None
        return None


#: ranks engagement actions for a journey's message: (batch, merchant, state, message id,
#: channel, event time, an event of the customer's partition) -> the fields the message gains,
#: or None (``agents.engagement``)
MessageActions = Callable[[object, Merchant, dict, str, str, float, faust.EventT], dict | None]


class Outreach:
    def __init__(
        self,
        nb: NextbestApp,
        policy: Policy,
        store: TimerStore,
        lateness_s: float = DEFAULT_LATENESS_S,
        wall: Callable[[], float] = time.time,
        actions: MessageActions | None = None,
    ) -> None:
        self.nb = nb
        self.policy = policy
        self.actions = actions
        self.wall = wall
        self.timers = journeys.journey_timers(store, lateness_s, wall)
        self._touched: dict[int, _Touched] = {}

    # -- hooks called by the pipeline ---------------------------------------------------

    def on_input(
        self, key: str, entry: CustomerEntry, kind: str, data: dict, event: faust.EventT
    ) -> None:
        touched = self._touch(event)
        if touched.newest is None or data["_ts"] > touched.newest:
            touched.newest = data["_ts"]
        merchant = self.nb.registry.get(data["merchant_id"])
        if merchant is None:
            return
        change = journeys.on_event(entry.state, merchant, key, kind, data)
        if change is not None:
            _count_cancelled(merchant, change.cancelled)
            touched.changed[key] = entry

    def on_tick(self, event: faust.EventT) -> None:
        self._touch(event)

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions revoked from this worker: their index is rebuilt if they come back."""
        self.timers.forget(partitions)
        self._count_pending()

    def abort(self, partitions: Iterable[int]) -> None:
        """The pipeline discarded a batch: drop what it touched and read these partitions'
        timers back from the table (the steps the batch fired fire again)."""
        self._touched = {}
        self.forget(partitions)

    def finish(self, batch: object, load: LoadEntry) -> None:
        """Advance clocks, fire due steps and deliver them; outputs go to ``batch.outputs``."""
        if not self._touched:
            return
        touched, self._touched = self._touched, {}
        fired: list[_Fired] = []
        for partition, touch in touched.items():
            if touch.newest is not None:
                self.timers.observe(partition, touch.newest)
                self.timers.save_clock(partition, touch.event)
            for key, entry in touch.changed.items():
                self.timers.update(partition, key, entry.state, touch.event)
            now = self.timers.now(partition)
            if now is not None:
                fired.extend(self._fire(batch, load, partition, touch.event, now))
        self._attach_offers(fired)
        for item in fired:
            self._deliver(batch, item)
        # each fired customer's next due time, once all their steps were settled
        for item in {item.key: item for item in fired}.values():
            self.timers.update(item.partition, item.key, item.entry.state, item.event)
        self._count_pending()

    def _count_pending(self) -> None:
        metrics.JOURNEY_TIMERS_PENDING.set(self.timers.total_pending())

    # -- internals ----------------------------------------------------------------------

    def _touch(self, event: faust.EventT) -> _Touched:
        partition = event.message.partition
        touched = self._touched.get(partition)
        if touched is None:
            touched = self._touched[partition] = _Touched(event)
        return touched

    def _fire(
        self, batch: object, load: LoadEntry, partition: int, event: object, now: float
    ) -> list[_Fired]:
        fired = []
        for key in self.timers.pop_due(partition, now):
            entry = load(batch, key, event)
            merchant = self.nb.registry.get(key.partition(":")[0])
            if entry.state is None or merchant is None:
                self.timers.update(partition, key, None, event)  # gone: no timer
                continue
            steps, cancelled = journeys.due_steps(entry.state, merchant, key, now)
            _count_cancelled(merchant, cancelled)
            entry.dirty = True
            if not steps:
                self.timers.update(partition, key, entry.state, event)
            for s in steps:
                config = merchant.options.journeys.retention
                arm = retention.arm(config, key) if s.journey == journeys.RETENTION else None
                fired.append(_Fired(key, entry, merchant, s, now, partition, event, arm=arm))
        return fired

    def _attach_offers(self, fired: list[_Fired]) -> None:
        """One policy call for every abandoned cart and treated retention step in the batch (a
        retention step: a cart of the customer's average order, `retention.decision_context`);
        no offer if it fails."""
        asking, contexts = [], []
        for f in fired:
            event_id = f.decision_event_id
            if event_id is None:
                continue
            if f.step.cart_event_id is not None:
                context = DecisionContext.of_stored_cart(
                    f.merchant, f.key, f.entry.state, f.now, event_id
                )
            else:
                context = retention.decision_context(
                    f.merchant, f.key, f.entry.state, f.now, event_id
                )
            if context is not None:
                asking.append(f)
                contexts.append(context)
        if not asking:
            return
        try:
            offers = self.policy.decide_batch(contexts)
        except Exception:  # a reminder without an offer beats no reminder
            log.exception("policy failed on %d journey steps", len(contexts))
            return
        for f, offer in zip(asking, offers, strict=True):
            f.offer = offer

    def _deliver(self, batch: object, f: _Fired) -> None:
        state = f.entry.state
        result = decide(state, f.merchant, f.step.message, f.now)
        _count_cancelled(f.merchant, journeys.settle(state, f.merchant, f.step, result, f.now))
        step = (f.merchant.id, f.step.journey, f.step.step)
        if f.arm is not None and isinstance(result, Send):
            churn_metrics.RETENTION_STEPS.labels(f.merchant.id, f.arm).inc()
            if f.arm == HOLDOUT:  # would have been sent: counted, nothing sent
                metrics.JOURNEY_STEPS.labels(*step, "suppressed", "holdout").inc()
                return
        if isinstance(result, Held):
            metrics.JOURNEY_STEPS.labels(*step, "held", result.reason).inc()
            if not f.step.held:
                metrics.MESSAGES_HELD.labels(f.merchant.id, f.step.journey).inc()
            return
        if f.step.held:
            outcome = "suppressed" if isinstance(result, Suppressed) else "sent"
            metrics.MESSAGES_RELEASED.labels(f.merchant.id, f.step.journey, outcome).inc()
        if isinstance(result, Suppressed):
            metrics.SUPPRESSED.labels(f.merchant.id, result.reason).inc()
            metrics.JOURNEY_STEPS.labels(*step, "suppressed", result.reason).inc()
            return
        metrics.JOURNEY_STEPS.labels(*step, "sent", "").inc()
        customer_state.record_message(state, result.channel, result.dedupe_key, f.now)
        notification = self.notification(f, result)
        if self.actions is not None:
            extra = self.actions(
                batch, f.merchant, state, result.dedupe_key, result.channel, f.now, f.event
            )
            notification.update(extra or {})
        batch.outputs.append((self.nb.notifications, f.key.encode(), orjson.dumps(notification)))
        metrics.NOTIFICATIONS.labels(f.merchant.id, result.channel).inc()

    def notification(self, f: _Fired, send: Send) -> dict:
        body = f.step.body
        if f.offer is not None:
            body = f"{body} {f.offer.message}"
        return notification_record(
            dedupe_key=send.dedupe_key,
            merchant_id=f.merchant.id,
            customer_id=parse_state_key(f.key)[1],
            channel=send.channel,
            address=send.address,
            title=f.merchant.name,
            body=body,
            offer_id=(
                offer_id_for(f.key, f.decision_event_id, f.offer.key)
                if f.offer is not None and f.decision_event_id
                else send.dedupe_key
            ),
            promotion_id=f.offer.promotion_id if f.offer is not None else None,
            created_at=self.wall(),
            source=f.step.journey,
            journey_step=f.step.step,
            products=list(f.step.products) or None,
        )


def _count_cancelled(merchant: Merchant, cancelled: Sequence[Cancelled]) -> None:
    for c in cancelled:
        metrics.JOURNEY_STEPS.labels(merchant.id, c.journey, c.step, "cancelled", c.reason).inc()


def register(nb: NextbestApp, policy: Policy, actions: MessageActions | None = None) -> Outreach:
    """Declare the timer table, the wake-up ticks and the revocation hook; returns the hooks.
    ``actions``: what a journey's message carries of the merchant's engagement actions.

    Ticks every ``NEXTBEST_JOURNEY_TICK_S``; clocks trail events by ``NEXTBEST_JOURNEY_LATENESS_S``.
    """
    settings = nb.settings
    store = timer_table(
        nb,
        "journey-timers",
        "Journey timers: customer key -> next due event time; a clock per partition",
    )
    outreach = Outreach(nb, policy, store, lateness_s=settings.journey_lateness_s, actions=actions)
    merges = settings.topics.merges

    @nb.app.timer(settings.journey_tick_s)
    async def tick() -> None:
        owned = [tp.partition for tp in nb.app.assignor.assigned_actives() if tp.topic == merges]
        value = orjson.dumps({"kind": "tick"})
        for partition in owned:
            await nb.merges.send(key=TICK_KEY, value=value, partition=partition)

    @nb.app.on_partitions_revoked.connect
    async def on_revoked(app: faust.App, revoked: set, **kwargs: object) -> None:
        outreach.forget(tp.partition for tp in revoked if tp.topic == merges)

    return outreach
