"""Engagement actions in the worker: feedback checked and joined, take windows learned, and the
ranking a cart decision or ``GET /next-best-actions`` serves (the rules are in
``streams.engagement``; this module only counts and wires).

One take model per merchant for all workers, as the promotion bandit is one: the take models'
statistics are sums over the closed take windows (``streams.learning.linear``), kept per
``merchant:partition`` (`Rankers`, ``streams.learning.partitioned``) in the
``engagement-models`` global table (``agents.runtime.parts_table``). The worker that owns an
input partition learns the windows closed there into that partition's entry (its customers'
events close them) and writes it at most every ``WRITE_S`` seconds (a timer); every worker
reads every entry and ranks with the priors plus their sum, refreshed every ``REFRESH_S``
seconds: a take learned from a customer of one worker moves the rankings every worker serves,
and after a rebalance or on an empty state directory a worker gets every part back from the
changelog. ``/engagement/models/`` shows the updates learned per merchant and part
(docs/merchants.md, "Engagement actions").

Limits (the bandit's): another worker's takes reach this worker's models a little later (the
changelog's delay plus up to ``REFRESH_S``); learning not yet written (at most ``WRITE_S``
behind) is lost if the worker dies or loses the partition first.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import faust

from agents.runtime import metrics, parts_table
from agents.runtime.app import NextbestApp
from agents.runtime.parts_table import PartsTable
from schemas.validation import InvalidEvent
from streams.engagement import rewards, serving
from streams.engagement.ranking import (
    Rankers,
    Ranking,
    action_features,
    ranking_rng,
)
from streams.learning.partitioned import learning_key
from streams.merchants.catalog import Merchant
from streams.state.customer_state import ENGAGEMENT_INTERACTIONS

log = logging.getLogger(__name__)


class Tally(Protocol):
    """A batch's counters (``agents.pipeline.Batch.count``)."""

    def count(self, metric: object, *labels: str) -> None: ...


class Engagement:
    def __init__(self, rankers: Rankers | None = None, table: PartsTable | None = None) -> None:
        self.rankers = rankers or Rankers()
        self.table = table  # the ``engagement-models`` table (None: this worker's parts only)
        self._current: set[str] = set()  # parts caught up with the table since assigned

    def check(self, merchant: Merchant, kind: str, data: dict) -> None:
        """An action feedback event for an action the merchant does not define is invalid
        (dead-lettered before it changes any state)."""
        if kind != "action_feedback":
            return
        action_id = data["action_id"]
        if not any(a.id == action_id for a in merchant.engagement_actions):
            raise InvalidEvent(
                "unknown_engagement_action",
                f"action_id: {action_id!r} is not an engagement action of merchant {merchant.id!r}",
            )

    def on_input(
        self,
        batch: Tally,
        merchant: Merchant,
        state: dict,
        kind: str,
        data: dict,
        event: faust.EventT,
    ) -> None:
        """After ``data`` was applied to ``state``: count feedback, join it to take windows,
        close the windows that ended, learn what closed."""
        if not merchant.engagement_actions and "engagement" not in state:
            return
        ts = data["_ts"]
        closed = []
        if kind == "action_feedback":
            action_id, event_type = data["action_id"], data["event_type"]
            interaction = ENGAGEMENT_INTERACTIONS[event_type]
            batch.count(metrics.ENGAGEMENT_FEEDBACK, merchant.id, action_id, interaction)
            if interaction == "taken":
                closed += rewards.take(state, action_id, ts)
            elif interaction == "shown":  # of an API-served ranking: its id and propensity
                ranking_id = data.get("ranking_id") or data["event_id"]
                propensity = data.get("propensity")
                closed += self._open(merchant, state, ranking_id, action_id, ts, None, propensity)
        closed += rewards.close_due(state, ts)
        self.learn(merchant.id, closed, event)

    def learn(self, merchant_id: str, closed: list[dict], event: faust.EventT) -> None:
        """Learn closed take windows into the part of ``event``'s partition (the customer's),
        first caught up with the table once after the partition was assigned."""
        if not closed:
            return
        partition = event.message.partition
        key = learning_key(merchant_id, partition)
        if self.table is not None and key not in self._current:
            self.table.catch_up([key])
            self._current.add(key)
        if self.rankers.learn(key, closed) and self.table is not None:
            self.table.learned([key], {partition: event})

    def forget(self, partitions: Sequence[int]) -> None:
        """Partitions revoked from this worker: their parts are the table's again."""
        if self.table is not None:
            self.table.forget(partitions)
        gone = {str(p) for p in partitions}
        self._current = {k for k in self._current if k.rsplit(":", 1)[1] not in gone}

    def _open(
        self,
        merchant: Merchant,
        state: dict,
        ranking_id: str,
        action_id: str,
        ts: float,
        features: list[float] | None,
        propensity: float | None,
    ) -> list[dict]:
        options = merchant.engagement
        return rewards.open_window(
            state,
            ranking_id,
            action_id,
            ts,
            options.take_window_s,
            features if features is not None else action_features(state, action_id, ts),
            propensity,
            options.ranking,
        )

    def rank(self, merchant: Merchant, state: dict | None, ts: float, ranking_id: str) -> Ranking:
        """The merchant's actions ranked for the customer (nothing counted or written)."""
        model = self.rankers.model(merchant.id)
        return model.rank(
            merchant.engagement_actions,
            state,
            ts,
            merchant.engagement.ranking,
            ranking_rng(ranking_id),
        )

    def for_message(
        self,
        batch: Tally,
        merchant: Merchant,
        state: dict,
        message_id: str,
        channel: str,
        ts: float,
        event: faust.EventT,
    ) -> dict | None:
        """The fields a journey's message on ``channel`` gains: the actions shown on that
        channel ranked for the customer (the first counted, its take window opened), where the
        merchant allows it (``engagement.in_journeys``); None otherwise or when none is
        eligible."""
        if not merchant.engagement.in_journeys:
            return None
        actions = [a for a in merchant.engagement_actions if channel in a.channels]
        model = self.rankers.model(merchant.id)
        ranking = model.rank(
            actions, state, ts, merchant.engagement.ranking, ranking_rng(message_id)
        )
        if ranking.first is None:
            return None
        self.shown(batch, merchant, state, ranking, message_id, ts, event)
        return serving.ranking_fields(ranking, merchant.engagement.attach)

    def shown(
        self,
        batch: Tally,
        merchant: Merchant,
        state: dict,
        ranking: Ranking,
        ranking_id: str,
        ts: float,
        event: faust.EventT,
    ) -> None:
        """A cart decision served ``ranking``'s first action: count it, open its window
        (``event``: the customer's, for the windows it pushes out)."""
        first = ranking.first
        if first is None:
            return
        batch.count(metrics.ENGAGEMENT_RANKED, merchant.id, first.action.id)
        features = ranking.features.get(first.action.id)
        closed = self._open(
            merchant, state, ranking_id, first.action.id, ts, features, ranking.propensity
        )
        self.learn(merchant.id, closed, event)


def register(nb: NextbestApp) -> Engagement:
    """The worker's engagement hooks, their take models shared through the
    ``engagement-models`` table (module doc)."""
    rankers = Rankers()
    table = PartsTable(nb.engagement_models, rankers, "take model")
    engagement = Engagement(rankers, table)
    merges = nb.settings.topics.merges

    parts_table.serve(nb.app, table, "/engagement/models/", rankers.summary)

    @nb.app.on_partitions_revoked.connect
    async def on_revoked(app: faust.App, revoked: set, **kwargs: object) -> None:
        engagement.forget([tp.partition for tp in revoked if tp.topic == merges])

    return engagement
