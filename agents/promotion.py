"""The promotion policy in the stream (``NEXTBEST_POLICY=promotion``): decision and reward
topics, budget ledgers, the reward join and the bandit's learning.

The pipeline owns the micro-batch; `PromotionHooks` plugs into it like `agents.outreach`:

- `begin` at the start of a batch: remembers an event of every partition in it (table I/O is
  routed by pinning one) and starts a fresh ledger cache;
- `on_input` after an input event was applied to the customer's state: offer feedback joins
  the customer's open decisions (a redemption settles the budget ledger), an order is kept for
  attribution (``streams.rewards``);
- `finish` once per batch, after the cart decisions and the journeys' offers: the policy's
  decision records go to the decisions topic (keyed by customer), the rewards of every
  attribution window that ended (customers with events in the batch, plus a sweep of this
  worker's due index) go to the rewards topic, the bandit learns from them, the metrics are
  updated and the touched ledgers are written back.

Windows close on event time: a partition's clock is the newest event time this worker has seen
on it, minus ``NEXTBEST_JOURNEY_LATENESS_S`` (a customer's topics are consumed a little apart).
Ledgers live in the ``promo-ledgers`` table, one per ``merchant:promotion:partition``, read and
written while an event of that partition is pinned, so each changelog record lands on the
partition whose worker owns the ledger (see streams/guardrails.py).

The bandit learns from the rewards this worker closes and is checkpointed to
``<NEXTBEST_STATE_DIR>/promo-bandit.json`` every `CHECKPOINT_S` seconds when it learned
something and at shutdown; a worker restarted on the same state directory starts from it.

Limits: the due index lives in this worker's memory: after a restart or a rebalance, a
customer's open windows close at their next event (not by the sweep). Each worker has its own
bandit (a fresh state directory starts from the prior).
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import faust
import orjson
from aiokafka.partitioner import murmur2
from faust.streams import _current_event

from streams import promo_metrics, rewards
from streams.app import NextbestApp
from streams.promotion_policy import PromotionPolicy, SignalsProvider

log = logging.getLogger(__name__)
CHECKPOINT_S = 30.0
Load = Callable[[object, str, faust.EventT], object]  # the pipeline's (batch, key, event) -> Entry


class LedgerTable(MutableMapping[str, dict]):
    """The ``promo-ledgers`` table as the policy's mapping of JSON ledgers, for one batch.

    Reads are cached for the batch; writes are kept and flushed once (`flush`), each pinned to
    an event of the ledger's partition (the last part of its key).
    """

    def __init__(self, table: faust.Table) -> None:
        self.table = table
        self.events: dict[int, faust.EventT] = {}  # partition -> an event of it in the batch
        self._cache: dict[str, dict | None] = {}
        self._dirty: set[str] = set()

    def begin(self, events: Sequence[faust.EventT]) -> None:
        self.events = {event.message.partition: event for event in events}
        self._cache.clear()
        self._dirty.clear()

    def _pin(self, key: str) -> None:
        partition = int(key.rsplit(":", 1)[1])
        event = self.events.get(partition)
        if event is None:
            # not a KeyError: a missing ledger must never read as a new, empty one
            raise RuntimeError(f"ledger {key}: no event of partition {partition} in this batch")
        _current_event.set(weakref.ref(event))

    def __getitem__(self, key: str) -> dict:
        if key not in self._cache:
            self._pin(key)
            raw = self.table.get(key.encode())
            self._cache[key] = orjson.loads(raw) if raw is not None else None
        ledger = self._cache[key]
        if ledger is None:
            raise KeyError(key)
        return ledger

    def __setitem__(self, key: str, ledger: dict) -> None:
        self._cache[key] = ledger
        self._dirty.add(key)

    def __delitem__(self, key: str) -> None:
        raise TypeError("ledgers are never deleted")

    def __iter__(self) -> Iterator[str]:
        return (key for key, ledger in self._cache.items() if ledger is not None)

    def __len__(self) -> int:
        return sum(1 for ledger in self._cache.values() if ledger is not None)

    def flush(self) -> dict[str, dict]:
        """Write the changed ledgers; returns them."""
        written = {}
        for key in sorted(self._dirty):
            ledger = self._cache[key]
            self._pin(key)
            self.table[key.encode()] = orjson.dumps(ledger)
            written[key] = ledger
        self._dirty.clear()
        return written


@dataclass
class _Partition:
    clock: float | None = None  # newest event time seen on the partition
    due: dict[str, float] = field(default_factory=dict)  # customer key -> next window end


class PromotionHooks:
    def __init__(self, nb: NextbestApp, policy: PromotionPolicy, ledgers: LedgerTable) -> None:
        self.nb = nb
        self.policy = policy
        self.ledgers = ledgers
        self.lateness_s = nb.settings.journey_lateness_s
        self.partitions: dict[int, _Partition] = {}
        self.budgets: dict[str, dict] = {}  # last ledger written per key (budget metrics)
        self._batch: object | None = None
        self._touched: dict[str, float] = {}  # customer key -> newest event time in the batch
        self.learned = 0  # rewards learned since the last checkpoint

    def partition_of(self, customer_key: str) -> int:
        """The partition of the customer's events in this batch (murmur2 if none is there)."""
        entry = getattr(self._batch, "entries", {}).get(customer_key)
        if entry is not None:
            return entry.event.message.partition
        return (murmur2(customer_key.encode()) & 0x7FFFFFFF) % self.nb.settings.partitions

    def begin(self, batch: object, events: Sequence[faust.EventT]) -> None:
        self._batch = batch
        self._touched = {}
        self.ledgers.begin(events)

    def on_input(self, key: str, state: dict, kind: str, data: dict, event: faust.EventT) -> None:
        if kind == "feedback":
            rewards.on_feedback(state, data, self.ledgers)
        elif kind == "orders":
            rewards.on_order(state, data)
        ts = data["_ts"]
        self._touched[key] = max(ts, self._touched.get(key, ts))
        part = self.partitions.setdefault(event.message.partition, _Partition())
        part.clock = ts if part.clock is None else max(part.clock, ts)

    def forget(self, partitions: Sequence[int]) -> None:
        """Partitions revoked from this worker."""
        for partition in partitions:
            self.partitions.pop(partition, None)
        gone = {str(p) for p in partitions}
        self.budgets = {k: v for k, v in self.budgets.items() if k.rsplit(":", 1)[1] not in gone}

    def finish(self, batch: object, load: Load) -> None:
        """Emit records and rewards, learn, write ledgers; outputs go to ``batch.outputs``."""
        records, closed = self.policy.drain_records()
        blocked = self.policy.drain_blocked()
        for record in records:
            batch.outputs.append(
                (self.nb.decisions, record["customer_key"].encode(), orjson.dumps(record))
            )
        closed.extend(self._close_due(batch, load))
        for reward in closed:
            batch.outputs.append(
                (self.nb.rewards, reward["customer_key"].encode(), orjson.dumps(reward))
            )
        if closed:
            promo_metrics.observe_rewards(closed)
            self.learned += self.policy.learn(closed)
        promo_metrics.observe_decisions(records, blocked)
        written = self.ledgers.flush()
        if written:
            self.budgets.update(written)
            promo_metrics.observe_budgets(self.budgets)
        self._batch = None

    def _close_due(self, batch: object, load: Load) -> list[dict]:
        closed = []
        keys = set(self._touched)
        for partition, part in self.partitions.items():
            event = self.ledgers.events.get(partition)
            if event is None or part.clock is None:
                continue
            now = part.clock - self.lateness_s
            for key in rewards.due_customers(part.due, now):
                del part.due[key]
                load(batch, key, event)  # loaded into the batch: closed below, saved after
                keys.add(key)
        for key in sorted(keys):
            entry = batch.entries.get(key)
            if entry is None or entry.state is None or "promo" not in entry.state:
                continue
            partition = entry.event.message.partition
            part = self.partitions.setdefault(partition, _Partition())
            if part.clock is not None:
                due = rewards.close_due(entry.state, part.clock - self.lateness_s)
                if due:
                    entry.dirty = True
                    closed.extend(due)
            next_due = rewards.next_due(entry.state)
            if next_due is None:
                part.due.pop(key, None)
            else:
                part.due[key] = next_due
        return closed


def save_bandit(policy: PromotionPolicy, path: Path) -> None:
    """Write the policy's learned state to ``path`` (replaced whole, never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(orjson.dumps(policy.state_dict()))
    os.replace(partial, path)


def load_bandit(policy: PromotionPolicy, path: Path) -> bool:
    """Load a checkpoint into the policy; False (logged) when there is none or it is unusable."""
    if not path.exists():
        return False
    try:
        policy.load_state_dict(orjson.loads(path.read_bytes()))
    except (OSError, ValueError, KeyError, TypeError):
        log.exception("bandit checkpoint %s is unusable; starting from the prior", path)
        return False
    return True


def register(nb: NextbestApp, signals: SignalsProvider | None = None) -> PromotionHooks:
    """The promotion policy and its hooks for this worker (``NEXTBEST_POLICY=promotion``)."""
    ledgers = LedgerTable(nb.ledgers)
    hooks: PromotionHooks | None = None

    def partition_of(customer_key: str) -> int:
        return hooks.partition_of(customer_key)

    policy = PromotionPolicy(
        experiment=nb.settings.experiment(),
        ledgers=ledgers,
        partitions=nb.settings.partitions,
        partition_of=partition_of,
        signals=signals,
    )
    hooks = PromotionHooks(nb, policy, ledgers)
    merges = nb.settings.topics.merges
    checkpoint = Path(nb.settings.state_dir) / "promo-bandit.json"
    load_bandit(policy, checkpoint)

    def save() -> None:
        if not hooks.learned:
            return
        try:
            save_bandit(policy, checkpoint)
            hooks.learned = 0
        except OSError:
            log.exception("cannot write the bandit checkpoint %s", checkpoint)

    @nb.app.timer(CHECKPOINT_S)
    async def checkpoint_bandit() -> None:
        save()

    @nb.app.on_before_shutdown.connect
    async def on_shutdown(app: faust.App, **kwargs: object) -> None:
        save()

    @nb.app.on_partitions_revoked.connect
    async def on_revoked(app: faust.App, revoked: set, **kwargs: object) -> None:
        hooks.forget([tp.partition for tp in revoked if tp.topic == merges])

    return hooks
