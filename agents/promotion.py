"""The promotion policy in the stream (``NEXTBEST_POLICY=promotion``): decision and reward
topics, budget ledgers, the reward join and the bandit's learning.

The pipeline owns the micro-batch; `PromotionHooks` plugs into it like `agents.outreach`:

- `begin` at the start of a batch: remembers an event of every partition in it (table I/O is
  routed by pinning one) and starts a fresh ledger cache;
- `on_input` after an input event was applied to the customer's state: offer feedback joins
  the customer's open decisions (a redemption settles the budget ledger), an order is kept for
  attribution (``streams.promotion.rewards``);
- `finish` once per batch, after the cart decisions and the journeys' offers: the policy's
  decision records go to the decisions topic (keyed by customer), the rewards of every
  attribution window that ended (customers with events or decisions in the batch, plus a sweep
  of the due index of each partition in it) go to the rewards topic, the bandit learns from
  them, the metrics are updated and the touched ledgers are written back.

Windows close on event time: a partition's clock is the newest event time seen on it, minus
``NEXTBEST_JOURNEY_LATENESS_S`` (a customer's topics are consumed a little apart). The sweep's
index (when each customer's next window ends) and the clocks live in the ``reward-due`` table
(customer key -> ``{"due", "p"}``, one clock per partition; changelogged, co-partitioned with the
customers, like the journeys' ``journey-timers``): a key is written only when its time changes,
a clock at most once a second, and a partition's index is read back from the table when the
partition is first seen after it was assigned (``streams.promotion.rewards.reward_windows``, a
``streams.timers.PartitionTimers``). So a window whose customer never comes back closes once
other customers' events move its partition's clock past it, after a restart or a rebalance too,
on the same or an empty state directory.

Ledgers live in the ``promo-ledgers`` table, one per ``merchant:promotion:partition``, read and
written while an event of that partition is pinned, so each changelog record lands on the
partition whose worker owns the ledger (see streams/promotion/guardrails.py).

One bandit for all workers: the bandit's statistics are sums over rewards (Gram matrices,
``sum y x``, counts; ``streams.promotion.bandit``), kept per ``merchant:partition`` in the
``promo-bandit`` global table (``streams.promotion.policy.PartitionedLearning``). The worker
that owns an input partition learns the rewards it closes there into that partition's entry
and writes it while an event of the partition is pinned, like the ledgers (one writer per
entry), at most every `WRITE_S` seconds (an entry is ~100 kB; a timer writes what the batches
left); every worker reads every entry (the global table's changelog is replicated to all of
them) and samples from the prior plus their sum, refreshed every `REFRESH_S` seconds (at the
next batch, or by a timer when idle) and at once for the entries it writes itself. A worker
restarted on an empty state directory gets the bandit back from the changelog. The merged
bandit is also exported to ``<NEXTBEST_STATE_DIR>/promo-bandit.json`` every `CHECKPOINT_S`
seconds when it changed and at shutdown, for ``nextbest ope --policy greedy:<file>`` and the
promotion benchmark; the worker never reads it back (the table is the source; the file would
count its rewards twice). ``/promo/bandit/`` shows the updates learned per merchant and part.

Limits: windows close only as event time moves: a partition with no new events keeps its
windows open (its clock has no wall-clock advance), and a restarted worker's clock may miss
the last second's advance before the stop (windows close a little late, never early).
Another worker's rewards reach this worker's bandit a little later (the changelog's delay
plus up to `REFRESH_S`), so two workers may briefly sample from slightly different
posteriors (every decision logs the model version it used). Learning not yet written (at
most `WRITE_S` behind) is lost if the worker dies or loses the partition first (the rewards
are still in the rewards topic).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from pathlib import Path

import faust
import orjson

from agents.runtime import parts_table
from agents.runtime import promotion_metrics as promo_metrics
from agents.runtime.app import NextbestApp
from agents.runtime.batch import LoadEntry, pin
from agents.runtime.parts_table import WRITE_S, PartsTable
from agents.runtime.timer_table import timer_table
from agents.runtime.topics import key_partition
from streams.promotion import rewards
from streams.promotion.bandit import BanditChooser, BanditConfig, LinearThompson
from streams.promotion.objective import ObjectiveConfig
from streams.promotion.policy import (
    PartitionedLearning,
    PromotionPolicy,
    SignalsProvider,
    learning_key,
)
from streams.timers import PartitionTimers

log = logging.getLogger(__name__)
CHECKPOINT_S = 30.0


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
        pin(event)

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


class BanditTable(PartsTable):
    """The ``promo-bandit`` global table as the policy's `PartitionedLearning`: one JSON entry
    per ``merchant:partition``, loaded when it changed, written by the partition's owner
    (``agents.runtime.parts_table``)."""

    def __init__(
        self, table: faust.Table, learning: PartitionedLearning, write_s: float = WRITE_S
    ) -> None:
        super().__init__(table, learning, "bandit", write_s)
        self.learning: PartitionedLearning = learning

    def learn(self, closed: Sequence[dict], partition_of: Callable[[str], int]) -> None:
        """Learn rewards into their partitions' entries, each first brought up to date
        (`catch_up`)."""
        self.catch_up(
            learning_key(r["merchant_id"], partition_of(r["customer_key"]))
            for r in closed
            if rewards.learnable(r)
        )
        self.learned(self.learning.learn(closed, partition_of))


class PromotionHooks:
    def __init__(
        self,
        nb: NextbestApp,
        policy: PromotionPolicy,
        ledgers: LedgerTable,
        bandit: BanditTable,
        windows: PartitionTimers,
    ) -> None:
        self.nb = nb
        self.policy = policy
        self.ledgers = ledgers
        self.bandit = bandit
        self.windows = windows  # per partition: event clock, who is due when (reward-due table)
        self.budgets: dict[str, dict] = {}  # last ledger written per key (budget metrics)
        self._batch: object | None = None
        self._touched: set[str] = set()  # customer keys with an input event in the batch

    def partition_of(self, customer_key: str) -> int:
        """The partition of the customer's events in this batch (murmur2 if none is there)."""
        entry = getattr(self._batch, "entries", {}).get(customer_key)
        if entry is not None:
            return entry.event.message.partition
        return key_partition(customer_key, self.nb.settings.partitions)

    def begin(self, batch: object, events: Sequence[faust.EventT]) -> None:
        self._batch = batch
        self._touched = set()
        self.ledgers.begin(events)
        self.bandit.refresh_if_due()

    def on_input(self, key: str, state: dict, kind: str, data: dict, event: faust.EventT) -> None:
        if kind == "feedback":
            rewards.on_feedback(state, data, self.ledgers)
        elif kind == "orders":
            rewards.on_order(state, data)
        self._touched.add(key)
        self.windows.observe(event.message.partition, data["_ts"])

    def forget(self, partitions: Sequence[int]) -> None:
        """Partitions revoked from this worker."""
        self.windows.forget(partitions)
        self.bandit.forget(partitions)
        gone = {str(p) for p in partitions}
        self.budgets = {k: v for k, v in self.budgets.items() if k.rsplit(":", 1)[1] not in gone}

    def abort(self, partitions: Sequence[int]) -> None:
        """The pipeline discarded a batch (it runs the events again): drop the decision records
        it made, read these partitions' reward windows back from the table. (Ledgers and the
        bandit key everything by decision id: what the batch wrote is not counted twice.)"""
        self.policy.drain_records()
        self.policy.drain_blocked()
        self.windows.forget(partitions)
        self._batch = None

    def finish(self, batch: object, load: LoadEntry) -> None:
        """Emit records and rewards, learn, write ledgers; outputs go to ``batch.outputs``."""
        records, closed = self.policy.drain_records()
        blocked = self.policy.drain_blocked()
        served = getattr(batch, "engagement", {})  # engagement actions the carts' records carry
        for record in records:
            record.update(served.get(record.get("cart_event_id"), {}))
            batch.outputs.append(
                (self.nb.decisions, record["customer_key"].encode(), orjson.dumps(record))
            )
        closed.extend(self._close_due(batch, load, records))
        for reward in closed:
            batch.outputs.append(
                (self.nb.rewards, reward["customer_key"].encode(), orjson.dumps(reward))
            )
        if closed:
            promo_metrics.observe_rewards(closed)
            self.bandit.learn(closed, self.partition_of)
        self.bandit.flush(self.ledgers.events)
        promo_metrics.observe_decisions(records, blocked)
        written = self.ledgers.flush()
        if written:
            self.budgets.update(written)
            promo_metrics.observe_budgets(self.budgets)
        self._batch = None

    def _close_due(self, batch: object, load: LoadEntry, records: Sequence[dict]) -> list[dict]:
        """Close the windows that ended: of customers with events or decisions in the batch,
        and of those the sweep finds due; then index each one's next window end."""
        keys = self._touched | {record["customer_key"] for record in records}
        for partition, event in self.ledgers.events.items():
            for key in self.windows.sweep(partition, event):
                load(batch, key, event)  # loaded into the batch: closed below, saved after
                keys.add(key)
        closed = []
        for key in sorted(keys):
            entry = batch.entries.get(key)
            if entry is None:
                continue
            try:
                partition = entry.event.message.partition
                now = self.windows.now(partition)
                if now is not None and entry.state is not None and "promo" in entry.state:
                    due = rewards.close_due(entry.state, now)
                    if due:
                        entry.dirty = True
                        closed.extend(due)  # before anything else can fail
                self.windows.update(partition, key, entry.state, entry.event)
            except Exception:  # one customer's failure must not cost the others their rewards
                log.exception("reward windows of %s: closing or indexing failed", key)
        return closed


def save_bandit(policy: PromotionPolicy, path: Path) -> None:
    """Write the policy's learned state to ``path`` (replaced whole, never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(orjson.dumps(policy.state_dict()))
    os.replace(partial, path)


def bandit_start(path: str, objective: ObjectiveConfig) -> dict[str, LinearThompson]:
    """Per merchant, the bandit of a ``nextbest promo-retrain`` file (``path`` empty: none).
    A file that cannot be read or is of another format stops the worker at start."""
    if not path:
        return {}
    try:
        state = orjson.loads(Path(path).read_bytes())["bandit"]
        return {
            merchant: LinearThompson.from_dict(data, BanditConfig(), objective)
            for merchant, data in state.items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"NEXTBEST_PROMO_BANDIT_START {path}: {exc!r}") from None


def register(nb: NextbestApp, signals: SignalsProvider | None = None) -> PromotionHooks:
    """The promotion policy and its hooks for this worker (``NEXTBEST_POLICY=promotion``)."""
    ledgers = LedgerTable(nb.ledgers)
    hooks: PromotionHooks | None = None

    def partition_of(customer_key: str) -> int:
        return hooks.partition_of(customer_key)

    objective = ObjectiveConfig(
        horizon_weeks=nb.settings.promo_horizon_weeks,
        dependency_cost=nb.settings.promo_dependency_cost,
    )
    policy = PromotionPolicy(
        experiment=nb.settings.experiment(),
        variants={
            "bandit": BanditChooser(
                objective=objective, start=bandit_start(nb.settings.promo_bandit_start, objective)
            )
        },
        objective=objective,
        ledgers=ledgers,
        partitions=nb.settings.partitions,
        partition_of=partition_of,
        signals=signals,
    )
    bandit = BanditTable(nb.bandit, PartitionedLearning(policy))
    windows = rewards.reward_windows(
        timer_table(
            nb,
            "reward-due",
            "Promotion: customer key -> end of the next open attribution window; a clock per "
            "partition",
        ),
        nb.settings.journey_lateness_s,
    )
    hooks = PromotionHooks(nb, policy, ledgers, bandit, windows)
    merges = nb.settings.topics.merges
    export = Path(nb.settings.state_dir) / "promo-bandit.json"

    def save() -> None:
        if not bandit.changed:
            return
        try:
            save_bandit(policy, export)
            bandit.changed = False
        except OSError:
            log.exception("cannot write the bandit export %s", export)

    @nb.app.timer(CHECKPOINT_S)
    async def export_bandit() -> None:
        save()

    parts_table.serve(nb.app, bandit, "/promo/bandit/", bandit.learning.summary)

    @nb.app.on_before_shutdown.connect
    async def on_shutdown(app: faust.App, **kwargs: object) -> None:
        save()

    @nb.app.on_partitions_revoked.connect
    async def on_revoked(app: faust.App, revoked: set, **kwargs: object) -> None:
        hooks.forget([tp.partition for tp in revoked if tp.topic == merges])

    return hooks
