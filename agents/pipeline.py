"""One micro-batch of input events: parse, update state, decide, emit.

The agent in ``agents.customer_events`` hands each batch from ``stream.take_events`` here.
Per batch, each customer's state is read from the table once and written once (coalesced
writes); cart decisions go to the policy as one batch; outputs are produced with dedupe keys.
Delivery is at-least-once: offsets are committed only after the batch's outputs and state
changes are flushed; a redelivered input is recognised by its offset (each customer's state
keeps the last offset applied per topic, written with the input's effects), the same event sent
twice by its ``event_id`` (see "Delivery guarantees" in docs/operations.md).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import faust
import orjson

from agents.outreach import Outreach
from agents.promotion import PromotionHooks
from agents.runtime import metrics
from agents.runtime.app import NextbestApp
from agents.runtime.batch import CustomerEntry, pin
from schemas.keys import offer_id_for, parse_state_key, state_key
from schemas.records import dead_letter_record, notification_record, promotion_record
from schemas.validation import InvalidEvent, parse_event
from streams.decisions import DecisionContext, Offer, Policy
from streams.merchants.catalog import Merchant
from streams.outreach.delivery import Send, plan_delivery
from streams.state import customer_state

log = logging.getLogger(__name__)
NO_OFFER_CART_EVENTS = ("checkout", "cart_clear")


@dataclass
class Decision:
    context: DecisionContext
    event: faust.EventT


@dataclass
class Batch:
    entries: dict[str, CustomerEntry] = field(default_factory=dict)
    decisions: list[Decision] = field(default_factory=list)
    outputs: list[tuple[faust.TopicT, bytes | None, bytes]] = field(default_factory=list)
    counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # merchant, kind, type


class Pipeline:
    def __init__(
        self,
        nb: NextbestApp,
        policy: Policy,
        outreach: Outreach | None = None,
        promotion: PromotionHooks | None = None,
    ) -> None:
        self.nb = nb
        self.policy = policy
        self.outreach = outreach  # journeys: event-time timers in customer state
        self.promotion = promotion  # promotion policy: decision log, rewards, budget ledgers
        self.max_bytes = nb.settings.max_event_bytes
        self.max_future_s = nb.settings.max_future_s or None
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

    def _save(self, batch: Batch) -> None:
        table = self.nb.customers
        for key, entry in batch.entries.items():
            if not entry.dirty:
                continue
            pin(entry.event)
            if entry.state is None:
                table.pop(key.encode(), None)
            else:
                table[key.encode()] = orjson.dumps(entry.state)

    # -- the batch ----------------------------------------------------------------------

    async def process(self, events: list[faust.EventT]) -> None:
        batch = Batch()
        metrics.BATCH_EVENTS.observe(len(events))
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
            except Exception as exc:  # a bug must not stop the stream: keep the input
                log.exception("processing failed for %s", event.message.tp)
                self._dead_letter(batch, event, "processing_error", repr(exc))
        if batch.decisions:
            self._decide(batch)
        if self.outreach is not None:
            self.outreach.finish(batch, self._load)
        if self.promotion is not None:
            try:
                self.promotion.finish(batch, self._load)
            except Exception:  # a bug must not stop the stream
                log.exception("promotion policy bookkeeping failed on a batch")
        for topic, key, value in batch.outputs:
            topic.send_soon(key=key, value=value)
        self._save(batch)
        for labels, count in batch.counts.items():
            metrics.EVENTS.labels(*labels).inc(count)

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
            metrics.REROUTED.inc()
            batch.outputs.append((self._topic(message.topic), key.encode(), message.value))
            return
        batch.counts[(merchant_id, kind, data["event_type"])] += 1
        entry = self._load(batch, key, event)
        if entry.state is None:
            entry.state = customer_state.new_state()
        fresh = customer_state.mark_offset(
            entry.state, message.topic, message.partition, message.offset
        )
        if not fresh or not customer_state.apply_event(
            entry.state, kind, data, merchant.options.products
        ):
            metrics.DUPLICATES.inc()
            entry.dirty = entry.dirty or fresh  # an event sent twice: its offset is kept
            return
        entry.dirty = True
        if self.outreach is not None:
            self.outreach.on_input(key, entry, kind, data, event)
        if self.promotion is not None:
            self.promotion.on_input(key, entry.state, kind, data, event)
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
        contexts = [d.context for d in batch.decisions]
        try:
            offers = self.policy.decide_batch(contexts)
        except Exception as exc:  # keep the cart events: they can be replayed from the DLQ
            log.exception(
                "policy %s failed on a batch of %d carts", self.policy.name, len(contexts)
            )
            for decision in batch.decisions:
                self._dead_letter(batch, decision.event, "processing_error", f"policy: {exc!r}")
            return
        now = time.time()
        for decision, offer in zip(batch.decisions, offers, strict=True):
            if offer is not None:
                self._emit_offer(batch, decision, offer, now)

    def _emit_offer(self, batch: Batch, decision: Decision, offer: Offer, now: float) -> None:
        ctx = decision.context
        offer_id = offer_id_for(ctx.customer_key, ctx.cart_event_id, offer.key)
        if not customer_state.record_offer(ctx.state, ctx.generation, offer.key, offer_id, ctx.ts):
            return
        merchant_id, customer_id, session_id = parse_state_key(ctx.customer_key)
        promotion = promotion_record(
            offer_id=offer_id,
            merchant_id=merchant_id,
            customer_id=customer_id,
            session_id=session_id,
            cart_event_id=ctx.cart_event_id,
            event_time=ctx.ts,
            decided_at=now,
            offer_type=offer.offer_type,
            promotion_id=offer.promotion_id,
            message=offer.message,
            cart_value=ctx.cart_value,
            currency=ctx.currency,
            policy=self.policy.name,
            reason=offer.reason,
            percent_off=offer.percent_off,
            amount_to_next_tier=offer.amount_to_next_tier,
            recommendations=list(offer.recommendations),
            max_discount=offer.max_discount,
            coupon_product_id=offer.product_id,
        )
        promotion.update(offer.event_fields())
        key = ctx.customer_key.encode()
        batch.outputs.append((self.nb.promotions, key, orjson.dumps(promotion)))
        metrics.OFFERS.labels(merchant_id, offer.offer_type).inc()
        metrics.DECISION_LATENCY.observe(max(0.0, now - decision.event.message.timestamp))
        if customer_id is None:
            metrics.SUPPRESSED.labels(merchant_id, "no_consent").inc()
            return
        plan = plan_delivery(
            ctx.state, ctx.merchant, ctx.customer_key, offer, ctx.cart_event_id, ctx.ts
        )
        if not isinstance(plan, Send):
            metrics.SUPPRESSED.labels(merchant_id, plan.reason).inc()
            return
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
        metrics.NOTIFICATIONS.labels(merchant_id, plan.channel).inc()

    def _dead_letter(self, batch: Batch, event: faust.EventT, reason: str, error: str) -> None:
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
        )
        batch.outputs.append((self.nb.dead_letters, message.key, orjson.dumps(letter)))
        metrics.DEAD_LETTERS.labels(reason).inc()

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
