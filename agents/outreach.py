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

Metrics: every fired step is counted by outcome (``nextbest_journey_steps_total``: sent, held,
suppressed; `streams.outreach.journeys` counts the cancelled ones), a quiet-hours hold once per
message
(``nextbest_messages_held_total``) and again when it ends (``nextbest_messages_released_total``),
and the due-time index's size after each batch (``nextbest_journey_timers_pending``).

Timers live in the ``journey-timers`` table (customer key -> ``{"due", "p"}``, plus one clock
per partition), written with the partition of the customer's own events, so the table is
co-partitioned with the customers and recovered with them after a restart or rebalance.
A customer's due time is written only when it comes earlier than the stored one (see
`Outreach._reindex`), the clock at most once a second.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import faust
import orjson
from faust.streams import _current_event

from agents.runtime import metrics
from agents.runtime.app import NextbestApp
from schemas.events import SCHEMA_VERSION
from streams.decisions import DecisionContext, Offer, Policy
from streams.merchants.catalog import Merchant
from streams.outreach import journeys
from streams.outreach.delivery import Delivery, Held, Suppressed, decide
from streams.outreach.journeys import Step
from streams.state import customer_state
from streams.timers import CLOCK_PREFIX, DueIndex, PartitionClock, TimerStore

log = logging.getLogger(__name__)
DEFAULT_LATENESS_S = 60.0  # Settings.journey_lateness_s
#: A partition's clock is saved at most this often (wall seconds). After a restart the clock
#: can be this much behind: due steps then fire a little late, never early.
CLOCK_SAVE_INTERVAL_S = 1.0
TICK_KEY = b"__tick__"


class Entry(Protocol):
    """The pipeline's per-batch view of one customer (``agents.pipeline.Entry``)."""

    state: dict | None
    dirty: bool


Load = Callable[[object, str, faust.EventT], Entry]  # (batch, key, event) -> Entry


class TableTimerStore:
    """`TimerStore` on a Faust table; writes are routed by pinning an event of the partition."""

    def __init__(self, table: faust.Table) -> None:
        self.table = table

    def read_partition(self, partition: int) -> tuple[PartitionClock, list[tuple[str, float]]]:
        clock_key = f"{CLOCK_PREFIX}{partition}".encode()
        clock, entries = PartitionClock(), []
        for raw_key, raw in self.table.items():
            if raw_key == clock_key:
                clock = PartitionClock.from_json(orjson.loads(raw))
            elif not raw_key.startswith(CLOCK_PREFIX.encode()):
                record = orjson.loads(raw)
                if record["p"] == partition:
                    entries.append((raw_key.decode(), record["due"]))
        return clock, entries

    def write_due(self, key: str, partition: int, due: float | None, event: object) -> None:
        _current_event.set(weakref.ref(event))
        if due is None:
            self.table.pop(key.encode(), None)
        else:
            self.table[key.encode()] = orjson.dumps({"due": due, "p": partition})

    def write_clock(self, partition: int, clock: PartitionClock, event: object) -> None:
        _current_event.set(weakref.ref(event))
        self.table[f"{CLOCK_PREFIX}{partition}".encode()] = orjson.dumps(clock.to_json())


@dataclass
class _Touched:
    """What a batch did to one partition."""

    event: object  # an event of the partition: table writes are routed by it
    newest: float | None = None
    changed: dict[str, Entry] = field(default_factory=dict)


@dataclass
class _Fired:
    key: str
    entry: Entry
    merchant: Merchant
    step: Step
    now: float
    partition: int
    event: object
    offer: Offer | None = None


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def offer_id(customer_key: str, cart_event_id: str, offer: Offer) -> str:
    """The pipeline's offer id for this cart and offer, so feedback joins either message."""
    raw = f"{customer_key}|{cart_event_id}|{offer.key}".encode()
    return hashlib.blake2b(raw, digest_size=12).hexdigest()


class Outreach:
    def __init__(
        self,
        nb: NextbestApp,
        policy: Policy,
        store: TimerStore,
        lateness_s: float = DEFAULT_LATENESS_S,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.nb = nb
        self.policy = policy
        self.store = store
        self.lateness_s = lateness_s
        self.wall = wall
        self.index = DueIndex()
        self.clocks: dict[int, PartitionClock] = {}
        self._touched: dict[int, _Touched] = {}
        self._clock_saved: dict[int, float] = {}  # wall time of each partition's last clock write

    # -- hooks called by the pipeline ---------------------------------------------------

    def on_input(self, key: str, entry: Entry, kind: str, data: dict, event: faust.EventT) -> None:
        touched = self._touch(event)
        if touched.newest is None or data["_ts"] > touched.newest:
            touched.newest = data["_ts"]
        merchant = self.nb.registry.get(data["merchant_id"])
        if merchant is not None and journeys.on_event(entry.state, merchant, key, kind, data):
            touched.changed[key] = entry

    def on_tick(self, event: faust.EventT) -> None:
        self._touch(event)

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions revoked from this worker: their index is rebuilt if they come back."""
        partitions = list(partitions)
        self.index.forget(partitions)
        for partition in partitions:
            self.clocks.pop(partition, None)
        self._count_pending()

    def finish(self, batch: object, load: Load) -> None:
        """Advance clocks, fire due steps and deliver them; outputs go to ``batch.outputs``."""
        if not self._touched:
            return
        touched, self._touched = self._touched, {}
        wall = self.wall()
        fired: list[_Fired] = []
        for partition, touch in touched.items():
            clock = self._clock(partition)
            if touch.newest is not None:
                clock.observe(touch.newest, wall)
                if wall - self._clock_saved.get(partition, -math.inf) >= CLOCK_SAVE_INTERVAL_S:
                    self.store.write_clock(partition, clock, touch.event)
                    self._clock_saved[partition] = wall
            for key, entry in touch.changed.items():
                self._reindex(partition, key, entry, touch.event)
            now = clock.now(wall, self.lateness_s)
            if now is not None:
                fired.extend(self._fire(batch, load, partition, touch.event, now))
        self._attach_offers(fired)
        for item in fired:
            self._deliver(batch, item)
            self._reindex(item.partition, item.key, item.entry, item.event, fired=True)
        self._count_pending()

    def _count_pending(self) -> None:
        pending = sum(self.index.pending(partition) for partition in self.clocks)
        metrics.JOURNEY_TIMERS_PENDING.set(pending)

    # -- internals ----------------------------------------------------------------------

    def _touch(self, event: faust.EventT) -> _Touched:
        partition = event.message.partition
        touched = self._touched.get(partition)
        if touched is None:
            touched = self._touched[partition] = _Touched(event)
        return touched

    def _clock(self, partition: int) -> PartitionClock:
        if not self.index.loaded(partition):
            clock, entries = self.store.read_partition(partition)
            self.index.load(partition, entries)
            self.clocks[partition] = clock
        return self.clocks.setdefault(partition, PartitionClock())

    def _reindex(
        self, partition: int, key: str, entry: Entry, event: object, fired: bool = False
    ) -> None:
        """Store the key's next due time when the stored one is no longer early enough;
        ``fired``: the key just left the index, its time is stored anew.

        The index mirrors the store, and the store only needs a time no later than the real
        one: an early time wakes the customer up for nothing (`_fire` then stores the real
        time), a late one would delay a step. So a re-armed timer (an abandoned cart's moves on
        with every cart change) or a cancelled one costs no table write; a new or earlier one,
        or a wake-up, does.
        """
        due = journeys.next_due(entry.state) if entry.state is not None else None
        stored = self.index.get(partition, key)
        if fired or (due is not None and (stored is None or due < stored)):
            self.index.set(partition, key, due)
            self.store.write_due(key, partition, due, event)

    def _fire(
        self, batch: object, load: Load, partition: int, event: object, now: float
    ) -> list[_Fired]:
        fired = []
        for key in self.index.pop_due(partition, now):
            entry = load(batch, key, event)
            merchant = self.nb.registry.get(key.partition(":")[0])
            if entry.state is None or merchant is None:
                self.store.write_due(key, partition, None, event)
                continue
            steps = journeys.due_steps(entry.state, merchant, key, now)
            entry.dirty = True
            if not steps:
                self._reindex(partition, key, entry, event, fired=True)
            fired.extend(_Fired(key, entry, merchant, s, now, partition, event) for s in steps)
        return fired

    def _attach_offers(self, fired: list[_Fired]) -> None:
        """One policy call for every abandoned cart in the batch; no offer if it fails."""
        asking = [f for f in fired if f.step.cart_event_id is not None]
        if not asking:
            return
        contexts = []
        for f in asking:
            cart = f.entry.state["cart"]
            contexts.append(
                DecisionContext(
                    merchant=f.merchant,
                    customer_key=f.key,
                    state=f.entry.state,
                    cart_value=cart["value"],
                    currency=cart["currency"] or f.merchant.currency,
                    ts=f.now,
                    cart_event_id=f.step.cart_event_id,
                )
            )
        try:
            offers = self.policy.decide_batch(contexts)
        except Exception:  # a reminder without an offer beats no reminder
            log.exception("policy failed on %d abandoned carts", len(contexts))
            return
        for f, offer in zip(asking, offers, strict=True):
            f.offer = offer

    def _deliver(self, batch: object, f: _Fired) -> None:
        state = f.entry.state
        result = decide(state, f.merchant, f.step.message, f.now)
        journeys.settle(state, f.merchant, f.step, result, f.now)
        step = (f.merchant.id, f.step.journey, f.step.step)
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
        batch.outputs.append(
            (self.nb.notifications, f.key.encode(), orjson.dumps(self.notification(f, result)))
        )
        metrics.NOTIFICATIONS.labels(f.merchant.id, result.channel).inc()

    def notification(self, f: _Fired, delivery: Delivery) -> dict:
        body = f.step.body
        if f.offer is not None:
            body = f"{body} {f.offer.message}"
        return {
            "schema_version": SCHEMA_VERSION,
            "notification_id": delivery.dedupe_key,
            "dedupe_key": delivery.dedupe_key,
            "merchant_id": f.merchant.id,
            "customer_id": f.key.split(":c:", 1)[1],
            "channel": delivery.channel,
            "address": delivery.address,
            "title": f.merchant.name,
            "body": body,
            "offer_id": (
                offer_id(f.key, f.step.cart_event_id, f.offer)
                if f.offer is not None and f.step.cart_event_id
                else delivery.dedupe_key
            ),
            "promotion_id": f.offer.promotion_id if f.offer is not None else None,
            "created_at": iso(self.wall()),
            "source": f.step.journey,
            "journey_step": f.step.step,
            "products": list(f.step.products) or None,
        }


def timer_table(nb: NextbestApp, name: str, help_text: str) -> TableTimerStore:
    """A `TableTimerStore` on a new table co-partitioned with the customers."""
    table = nb.app.Table(
        name,
        default=None,
        partitions=nb.settings.partitions,
        key_type=bytes,
        value_type=bytes,
        help=help_text,
    )
    return TableTimerStore(table)


def register(nb: NextbestApp, policy: Policy) -> Outreach:
    """Declare the timer table, the wake-up ticks and the revocation hook; returns the hooks.

    Ticks every ``NEXTBEST_JOURNEY_TICK_S``; clocks trail events by ``NEXTBEST_JOURNEY_LATENESS_S``.
    """
    settings = nb.settings
    store = timer_table(
        nb,
        "journey-timers",
        "Journey timers: customer key -> next due event time; a clock per partition",
    )
    outreach = Outreach(nb, policy, store, lateness_s=settings.journey_lateness_s)
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
