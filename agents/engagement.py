"""Engagement actions in the worker: feedback checked and joined, take windows learned, and the
ranking a cart decision or ``GET /next-best-actions`` serves (the rules are in
``streams.engagement``; this module only counts and wires).

The take models are this worker's, in memory (`Rankers`): each learns the rewards closed in the
partitions the worker owns, from its prior, since the worker started (docs/merchants.md,
"Engagement actions").
"""

from __future__ import annotations

from typing import Protocol

from agents.runtime import metrics
from schemas.validation import InvalidEvent
from streams.engagement import rewards, serving
from streams.engagement.ranking import (
    Rankers,
    Ranking,
    RankingConfig,
    action_features,
    ranking_rng,
)
from streams.merchants.catalog import Merchant
from streams.state.customer_state import ENGAGEMENT_INTERACTIONS


class Tally(Protocol):
    """A batch's counters (``agents.pipeline.Batch.count``)."""

    def count(self, metric: object, *labels: str) -> None: ...


class Engagement:
    def __init__(self, config: RankingConfig | None = None) -> None:
        self.rankers = Rankers(config)

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
        self, batch: Tally, merchant: Merchant, state: dict, kind: str, data: dict
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
            elif interaction == "shown":
                closed += self._open(merchant, state, data["event_id"], action_id, ts, None, None)
        closed += rewards.close_due(state, ts)
        self.learn(merchant.id, closed)

    def learn(self, merchant_id: str, closed: list[dict]) -> None:
        model = self.rankers.model(merchant_id)
        for reward in closed:
            model.update(
                reward["reward_id"], reward["action_id"], reward["features"], reward["taken"]
            )

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
        self.shown(batch, merchant, state, ranking, message_id, ts)
        return serving.ranking_fields(ranking, merchant.engagement.attach)

    def shown(
        self,
        batch: Tally,
        merchant: Merchant,
        state: dict,
        ranking: Ranking,
        ranking_id: str,
        ts: float,
    ) -> None:
        """A cart decision served ``ranking``'s first action: count it, open its window."""
        first = ranking.first
        if first is None:
            return
        batch.count(metrics.ENGAGEMENT_RANKED, merchant.id, first.action.id)
        features = ranking.features.get(first.action.id)
        closed = self._open(
            merchant, state, ranking_id, first.action.id, ts, features, ranking.propensity
        )
        self.learn(merchant.id, closed)
