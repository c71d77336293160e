"""One micro-batch of input events: parse, update state, decide, emit.

The agent in ``agents.customer_events`` hands each batch from `take_ready` here.
Per batch, each customer's state is read from the table once and written once (coalesced
writes); cart decisions go to the policy as one batch; outputs are produced with dedupe keys.
Delivery is at-least-once: offsets are committed only after the batch's outputs and state
changes are flushed; a redelivered input is recognised by its offset (each customer's state
keeps the last offset applied per topic, written with the input's effects), the same event sent
twice by its ``event_id`` (see "Delivery guarantees" in docs/operations.md).

Failure isolation (docs/architecture.md, "Failure isolation"): no output of a batch is sent
and no customer state written before all of it was computed, serialised and checked against
the size limits (`Pipeline._prepare`); if anything raises on the way, the batch is discarded
and its events are run again one at a time, and the single event that still fails is
dead-lettered (``processing_error``, or the `EventFailed` reason) while the others go on.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import faust
import orjson
from prometheus_client import Counter as Metric

from agents.engagement import Engagement
from agents.outreach import Outreach
from agents.promotion import PromotionHooks
from agents.runtime import churn_metrics, metrics
from agents.runtime.app import NextbestApp
from agents.runtime.batch import CustomerEntry, pin
from schemas.keys import offer_id_for, parse_state_key, state_key
from schemas.records import (
    EXCERPT_BYTES,
    dead_letter_record,
    notification_record,
    promotion_record,
)
from schemas.validation import InvalidEvent, parse_event
from streams.decisions import DecisionContext, Offer, Policy
from streams.engagement import serving
from streams.engagement.ranking import Ranking
from streams.merchants.catalog import Merchant
from streams.outreach.delivery import Send, plan_delivery
from streams.state import customer_state

log = logging.getLogger(__name__)
NO_OFFER_CART_EVENTS = ("checkout", "cart_clear")
#: What a Kafka record adds to its key and value when the producer sizes it (record batch
#: header and record framing: aiokafka counts 61 + at most 21 bytes)
RECORD_OVERHEAD = 128


class EventFailed(Exception):
    """The batch cannot be committed as it is because of what its events did; ``reason`` is the
    dead-letter reason of the event found to cause it."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Decision:
    context: DecisionContext
    event: faust.EventT


@dataclass
class Batch:
    entries: dict[str, CustomerEntry] = field(default_factory=dict)
    decisions: list[Decision] = field(default_factory=list)
    outputs: list[tuple[faust.TopicT, bytes | None, bytes]] = field(default_factory=list)
    #: counter increments, applied once the batch is committed: (counter, labels) -> amount
    tally: Counter[tuple[Metric, tuple[str, ...]]] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # DECISION_LATENCY observations
    #: cart event id -> the engagement fields its promotion record carried (for its decision
    #: record, ``agents.promotion``)
    engagement: dict[str, dict] = field(default_factory=dict)
    churn_risks: list[tuple[str, float]] = field(default_factory=list)  # (merchant, CHURN_RISK)

    def count(self, metric: Metric, *labels: str) -> None:
        self.tally[(metric, labels)] += 1


@dataclass
class Prepared:
    """A batch ready to commit: its state records serialised and every record checked."""

    batch: Batch
    writes: list[tuple[faust.EventT, bytes, bytes | None]]  # (routing event, key, value or None)


class Pipeline:
    def __init__(
        self,
        nb: NextbestApp,
        policy: Policy,
        outreach: Outreach | None = None,
        promotion: PromotionHooks | None = None,
        engagement: Engagement | None = None,
    ) -> None:
        self.nb = nb
        self.policy = policy
        self.outreach = outreach  # journeys: event-time timers in customer state
        self.promotion = promotion  # promotion policy: decision log, rewards, budget ledgers
        self.engagement = engagement  # engagement actions: feedback, take windows, rankings
        self.max_bytes = nb.settings.max_event_bytes
        self.max_future_s = nb.settings.max_future_s or None
        self.max_state_bytes = nb.settings.max_state_bytes
        #: the largest record the producer sends (Faust's ``producer_max_request_size``)
        self.max_record_bytes = nb.app.conf.producer_max_request_size
        self._topics: dict[str, faust.TopicT] = {}

    # -- table access, routed to the partition of the event that carried the key --------

    def _load(self, batch: Batch, key: str, event: faust.EventT) -> CustomerEntry:
        entry = batch.entries.get(key)
        if entry is None:
            pin(event)
            raw = self.nb.customers.get(key.encode())
            entry = CustomerEntry(state=orjson.loads(raw) if raw is not None else None, event=event)
            batch.entries[key] = entry
        return entry

    # -- the batch ----------------------------------------------------------------------

    async def process(self, events: list[faust.EventT]) -> None:
        """Process a batch; an event that makes it fail is dead-lettered, the others go on.
        Raises only if committing fails (the producer's buffer or the store), never on input."""
        metrics.BATCH_EVENTS.observe(len(events))
        try:
            prepared = self._run(events)
        except Exception as exc:
            self._abort(events)
            if len(events) == 1:
                prepared = self._failed(events[0], exc)
            else:
                log.warning(
                    "a batch of %d events failed (%s): running them one at a time",
                    len(events),
                    _describe(exc),
                )
                for event in events:
                    self._commit(self._run_alone(event))
                return
        self._commit(prepared)

    def _run_alone(self, event: faust.EventT) -> Prepared:
        """One event as a batch of its own (state read back from the table); dead-lettered if
        it fails."""
        try:
            return self._run([event])
        except Exception as exc:
            self._abort([event])
            return self._failed(event, exc)

    def _run(self, events: Sequence[faust.EventT]) -> Prepared:
        """Every stage of a batch, up to the commit: nothing is sent or written here."""
        batch = Batch()
        kinds = self.nb.topic_kinds
        if self.promotion is not None:
            self.promotion.begin(batch, events)
        for event in events:
            kind = kinds[event.message.topic]
            try:
                if kind == "merges":
                    self._merge(batch, event)
                else:
                    self._input(batch, kind, event)
            except InvalidEvent as exc:
                self._dead_letter(batch, event, exc.reason, str(exc))
        if batch.decisions:
            self._decide(batch)
        if self.outreach is not None:
            self.outreach.finish(batch, self._load)
        if self.promotion is not None:
            self.promotion.finish(batch, self._load)
        return self._prepare(batch)

    def _prepare(self, batch: Batch) -> Prepared:
        """Serialise every changed state and check every record against its limit; raises
        `EventFailed` (or what serialising raised) before anything was sent or written."""
        writes = []
        for key, entry in batch.entries.items():
            if not entry.dirty:
                continue
            value = None if entry.state is None else orjson.dumps(entry.state)
            if value is not None and len(value) > self.max_state_bytes:
                raise EventFailed(
                    "state_too_large",
                    f"the state of {key[:200]} would be {len(value)} bytes, over "
                    f"NEXTBEST_MAX_STATE_BYTES={self.max_state_bytes}",
                )
            writes.append((entry.event, key.encode(), value))
        for topic, key, value in batch.outputs:
            size = len(key or b"") + len(value) + RECORD_OVERHEAD
            if size > self.max_record_bytes:
                raise EventFailed(
                    "output_too_large",
                    f"a record for {topic.get_topic_name()} would be {size} bytes, over the "
                    f"producer's limit of {self.max_record_bytes}",
                )
        return Prepared(batch, writes)

    def _commit(self, prepared: Prepared) -> None:
        """Send the outputs, write the states, count: a prepared batch raises nothing here."""
        batch = prepared.batch
        for topic, key, value in batch.outputs:
            topic.send_soon(key=key, value=value)
        table = self.nb.customers
        for event, key, value in prepared.writes:
            pin(event)
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value
        for (metric, labels), amount in batch.tally.items():
            (metric.labels(*labels) if labels else metric).inc(amount)
        for latency in batch.latencies:
            metrics.DECISION_LATENCY.observe(latency)
        for merchant_id, risk in batch.churn_risks:
            churn_metrics.CHURN_RISK.labels(merchant_id).observe(risk)

    def _abort(self, events: Sequence[faust.EventT]) -> None:
        """A batch was discarded: the hooks forget what it did in memory."""
        partitions = sorted({event.message.partition for event in events})
        if self.outreach is not None:
            self.outreach.abort(partitions)
        if self.promotion is not None:
            self.promotion.abort(partitions)

    def _failed(self, event: faust.EventT, exc: Exception) -> Prepared:
        """The batch of one event that failed: its dead letter, nothing else."""
        batch = Batch()
        if isinstance(exc, EventFailed):
            log.warning("event %s dead-lettered: %s", event.message.tp, exc)
            self._dead_letter(batch, event, exc.reason, str(exc))
        else:
            log.error("processing failed for %s", event.message.tp, exc_info=exc)
            self._dead_letter(batch, event, "processing_error", _describe(exc))
        return Prepared(batch, [])

    def _input(self, batch: Batch, kind: str, event: faust.EventT) -> None:
        message = event.message
        data = parse_event(message.value, kind, self.max_bytes, self.max_future_s)
        merchant_id = data["merchant_id"]
        merchant = self.nb.registry.get(merchant_id)
        if merchant is None:
            raise InvalidEvent("unknown_merchant", f"merchant_id {merchant_id!r} is not configured")
        key = state_key(merchant_id, data.get("customer_id"), data.get("session_id"))
        if message.key != key.encode():
            # Keyed wrongly by the producer: re-key so the event meets its customer's state.
            batch.count(metrics.REROUTED)
            batch.outputs.append((self._topic(message.topic), key.encode(), message.value))
            return
        if self.engagement is not None:  # an unknown action, like an unknown merchant: not counted
            self.engagement.check(merchant, kind, data)
        batch.count(metrics.EVENTS, merchant_id, kind, data["event_type"])
        entry = self._load(batch, key, event)
        if entry.state is None:
            entry.state = customer_state.new_state()
        fresh = customer_state.mark_offset(
            entry.state, message.topic, message.partition, message.offset
        )
        if not fresh or not customer_state.apply_event(
            entry.state, kind, data, merchant.options.products
        ):
            batch.count(metrics.DUPLICATES)
            entry.dirty = entry.dirty or fresh  # an event sent twice: its offset is kept
            return
        entry.dirty = True
        risk = entry.state["churn"]["score"]
        if kind in ("orders", "cart") and risk is not None:
            batch.churn_risks.append((merchant_id, risk))
        if self.outreach is not None:
            self.outreach.on_input(key, entry, kind, data, event)
        if self.promotion is not None:
            self.promotion.on_input(key, entry.state, kind, data, event)
        if self.engagement is not None:
            self.engagement.on_input(batch, merchant, entry.state, kind, data, event)
        session_id = data.get("session_id")
        if (
            data.get("customer_id")
            and session_id
            and customer_state.claim_session(entry.state, session_id)
        ):
            claim = {"kind": "claim", "customer_key": key}
            session_key = state_key(merchant_id, None, session_id).encode()
            batch.outputs.append((self.nb.merges, session_key, orjson.dumps(claim)))
        if kind == "cart" and data["event_type"] not in NO_OFFER_CART_EVENTS:
            batch.decisions.append(self._decision(key, merchant, entry.state, data, event))

    def _decision(
        self, key: str, merchant: Merchant, state: dict, data: dict, event: faust.EventT
    ) -> Decision:
        context = DecisionContext(
            merchant=merchant,
            customer_key=key,
            state=state,
            cart_value=data["cart_value"],
            currency=data["currency"],
            ts=data["_ts"],
            cart_event_id=data["event_id"],
            generation=state["cart"]["generation"],
            as_of=customer_state.decision_view(state),
        )
        return Decision(context, event)

    def _merge(self, batch: Batch, event: faust.EventT) -> None:
        message = event.message
        request = orjson.loads(message.value)
        if request["kind"] == "tick":  # wakes the journey clock of an idle partition
            if self.outreach is not None:
                self.outreach.on_tick(event)
            return
        key = message.key.decode()
        entry = self._load(batch, key, event)
        if request["kind"] == "claim":
            if entry.state is None:
                return
            absorb = {"kind": "absorb", "session": key, "state": entry.state}
            batch.outputs.append(
                (self.nb.merges, request["customer_key"].encode(), orjson.dumps(absorb))
            )
            entry.state, entry.dirty = None, True
        elif request["kind"] == "absorb":
            if entry.state is None:
                entry.state = customer_state.new_state()
            fresh = customer_state.mark_offset(
                entry.state, message.topic, message.partition, message.offset
            )
            session = request.get("session")  # absent from absorbs sent before it existed
            if not fresh or (session and not customer_state.mark_absorbed(entry.state, session)):
                metrics.DUPLICATES.inc()
                entry.dirty = entry.dirty or fresh
                return
            customer_state.merge_anonymous(entry.state, request["state"])
            entry.dirty = True

    def _decide(self, batch: Batch) -> None:
        # ``combine: best_value``: the cart's actions are ranked before the policy decides, so
        # that the first competes with the offer inside its choice (``DecisionContext.contest``)
        ranked: dict[int, Ranking | None] = {}
        for i, decision in enumerate(batch.decisions):
            ctx = decision.context
            if ctx.merchant.engagement.combine == serving.BEST_VALUE:
                ranked[i] = ranking = self._rank(ctx)
                contest = serving.contest(ranking, ctx.state, ctx.generation)
                if contest is not None:
                    decision.context = replace(ctx, contest=contest)
        offers = self.policy.decide_batch([d.context for d in batch.decisions])
        now = time.time()
        for i, (decision, offer) in enumerate(zip(batch.decisions, offers, strict=True)):
            ranking = ranked[i] if i in ranked else self._rank(decision.context)
            emitted = offer is not None and self._emit_offer(batch, decision, offer, now, ranking)
            if ranking is not None and not emitted:
                self._emit_action(batch, decision, ranking, now)

    def _rank(self, ctx: DecisionContext) -> Ranking | None:
        """The engagement actions ranked for a cart, when its merchant ranks on carts."""
        merchant = ctx.merchant
        if self.engagement is None or not merchant.engagement.on_cart:
            return None
        if not merchant.engagement_actions:
            return None
        # the features as of the cart event (``ctx.view``); what the customer did with the
        # actions (``"engagement"``) as of now: an action taken later in the batch is not offered
        state = ctx.state if ctx.as_of is None else {**ctx.state, **ctx.as_of}
        return self.engagement.rank(merchant, state, ctx.ts, ctx.cart_event_id)

    def _emit_offer(
        self,
        batch: Batch,
        decision: Decision,
        offer: Offer,
        now: float,
        ranking: Ranking | None = None,
    ) -> bool:
        """Emit the offer (and its notification); False when the cart already had it."""
        ctx = decision.context
        offer_id = offer_id_for(ctx.customer_key, ctx.cart_event_id, offer.key)
        if not customer_state.record_offer(ctx.state, ctx.generation, offer.key, offer_id, ctx.ts):
            return False
        merchant_id, customer_id, _ = parse_state_key(ctx.customer_key)
        promotion = _promotion(
            ctx,
            now,
            offer_id,
            offer_type=offer.offer_type,
            promotion_id=offer.promotion_id,
            message=offer.message,
            policy=self.policy.name,
            reason=offer.reason,
            percent_off=offer.percent_off,
            amount_to_next_tier=offer.amount_to_next_tier,
            recommendations=list(offer.recommendations),
            max_discount=offer.max_discount,
            coupon_product_id=offer.product_id,
            recommendation_sources=list(offer.recommendation_sources),
        )
        promotion.update(offer.event_fields())
        if (
            ranking is not None
            and serving.serve(ranking, True, ctx.merchant.engagement.combine).attach
        ):
            fields = serving.ranking_fields(ranking, ctx.merchant.engagement.attach)
            promotion.update(fields)
            batch.engagement[ctx.cart_event_id] = fields
            self.engagement.shown(
                batch, ctx.merchant, ctx.state, ranking, offer_id, ctx.ts, decision.event
            )
        if contest := serving.contest_fields(ctx.contest):  # the offer won (best_value)
            promotion.update(contest)
            batch.engagement[ctx.cart_event_id] = contest
        key = ctx.customer_key.encode()
        batch.outputs.append((self.nb.promotions, key, orjson.dumps(promotion)))
        batch.count(metrics.OFFERS, merchant_id, offer.offer_type)
        batch.latencies.append(max(0.0, now - decision.event.message.timestamp))
        if customer_id is None:
            batch.count(metrics.SUPPRESSED, merchant_id, "no_consent")
            return True
        plan = plan_delivery(
            ctx.state, ctx.merchant, ctx.customer_key, offer, ctx.cart_event_id, ctx.ts
        )
        if not isinstance(plan, Send):
            batch.count(metrics.SUPPRESSED, merchant_id, plan.reason)
            return True
        customer_state.record_message(ctx.state, plan.channel, plan.dedupe_key, ctx.ts)
        notification = notification_record(
            dedupe_key=plan.dedupe_key,
            merchant_id=merchant_id,
            customer_id=promotion["customer_id"],
            channel=plan.channel,
            address=plan.address,
            title=ctx.merchant.name,
            body=offer.message,
            offer_id=offer_id,
            promotion_id=offer.promotion_id,
            created_at=now,
        )
        batch.outputs.append((self.nb.notifications, key, orjson.dumps(notification)))
        batch.count(metrics.NOTIFICATIONS, merchant_id, plan.channel)
        return True

    def _emit_action(self, batch: Batch, decision: Decision, ranking: Ranking, now: float) -> None:
        """A cart without an offer: its first-ranked engagement action as its decision
        (``streams.engagement.serving``), once per cart; in session only, no notification."""
        ctx = decision.context
        first = ranking.first
        if first is None or serving.action_made(ctx.state, ctx.generation):
            return
        customer_state.engagement_state(ctx.state)["last"] = [ctx.generation, first.action.id]
        offer_key = f"{serving.ENGAGEMENT_OFFER_TYPE}:{first.action.id}"
        offer_id = offer_id_for(ctx.customer_key, ctx.cart_event_id, offer_key)
        record = _promotion(
            ctx,
            now,
            offer_id,
            offer_type=serving.ENGAGEMENT_OFFER_TYPE,
            promotion_id=first.action.id,
            message=serving.action_message(ranking),
            policy=ranking.version,
            reason=serving.action_reason(ranking, ctx.currency),
            percent_off=None,
            amount_to_next_tier=None,
            recommendations=[],
        )
        fields = serving.ranking_fields(ranking, ctx.merchant.engagement.attach)
        if ctx.contest is not None and ctx.contest.winner == "action":  # won (best_value)
            fields.update(serving.contest_fields(ctx.contest))
        record.update(fields)
        batch.engagement[ctx.cart_event_id] = fields
        batch.outputs.append((self.nb.promotions, ctx.customer_key.encode(), orjson.dumps(record)))
        self.engagement.shown(
            batch, ctx.merchant, ctx.state, ranking, offer_id, ctx.ts, decision.event
        )

    def _dead_letter(self, batch: Batch, event: faust.EventT, reason: str, error: str) -> None:
        """The event to the dead-letter topic; a letter that would not fit the producer's
        limit keeps an excerpt of the payload, its length and hash (`dead_letter_record`)."""
        message = event.message
        letter = dead_letter_record(
            reason=reason,
            error=error,
            source_topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            key=message.key,
            received_at=time.time(),
            payload=message.value,
            max_bytes=self.max_record_bytes - RECORD_OVERHEAD - EXCERPT_BYTES,
        )
        key = message.key[:EXCERPT_BYTES] if message.key is not None else None
        batch.outputs.append((self.nb.dead_letters, key, orjson.dumps(letter)))
        batch.count(metrics.DEAD_LETTERS, reason)

    def _topic(self, name: str) -> faust.TopicT:
        topic = self._topics.get(name)
        if topic is None:
            topic = self._topics[name] = self.nb.app.topic(
                name,
                key_type=bytes,
                value_type=bytes,
                key_serializer="raw",
                value_serializer="raw",
            )
        return topic


def _describe(exc: BaseException) -> str:
    """An exception as a dead letter's ``error``: its type and text."""
    return f"{type(exc).__name__}: {exc}"


def _promotion(ctx: DecisionContext, now: float, offer_id: str, **decided: object) -> dict:
    """The promotion record of a cart decision: the cart's fields from ``ctx``, what was
    decided (offer type, promotion, message, policy, reason, ...) from ``decided``."""
    merchant_id, customer_id, session_id = parse_state_key(ctx.customer_key)
    return promotion_record(
        offer_id=offer_id,
        merchant_id=merchant_id,
        customer_id=customer_id,
        session_id=session_id,
        cart_event_id=ctx.cart_event_id,
        event_time=ctx.ts,
        decided_at=now,
        cart_value=ctx.cart_value,
        currency=ctx.currency,
        **decided,
    )
