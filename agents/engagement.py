"""Engagement actions in the worker: feedback checked and joined, take windows learned, and the
ranking a cart decision or ``GET /next-best-actions`` serves (the rules are in
``streams.engagement``; this module only counts and wires).

The take models are this worker's (`Rankers`): each learns the rewards closed in the
partitions the worker owns, from its prior; they are written to
``<NEXTBEST_STATE_DIR>/engagement-models.json`` every `CHECKPOINT_S` and at shutdown, and read
back at start (docs/merchants.md, "Engagement actions").
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Protocol

import faust
import orjson

from agents.runtime import metrics
from agents.runtime.app import NextbestApp
from schemas.validation import InvalidEvent
from streams.engagement import rewards, serving
from streams.engagement.ranking import (
    Rankers,
    Ranking,
    action_features,
    ranking_rng,
)
from streams.merchants.catalog import Merchant
from streams.state.customer_state import ENGAGEMENT_INTERACTIONS

log = logging.getLogger(__name__)


class Tally(Protocol):
    """A batch's counters (``agents.pipeline.Batch.count``)."""

    def count(self, metric: object, *labels: str) -> None: ...


CHECKPOINT_S = 30.0
CHECKPOINT_NAME = "engagement-models.json"


class Engagement:
    def __init__(self, rankers: Rankers | None = None) -> None:
        self.rankers = rankers or Rankers()
        self.learned = False  # since the last checkpoint

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
            learned = model.update(
                reward["reward_id"], reward["action_id"], reward["features"], reward["taken"]
            )
            self.learned = self.learned or learned

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


def load_checkpoint(path: Path) -> Rankers:
    """The take models written to ``path``; the priors alone when there is none or it cannot
    be used (logged)."""
    if not path.exists():
        return Rankers()
    try:
        return Rankers.from_dict(orjson.loads(path.read_bytes()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.error("engagement models %s unusable (%r): starting from the priors", path, exc)
        return Rankers()


def save_checkpoint(engagement: Engagement, path: Path) -> None:
    """Write the take models to ``path`` when they learned since the last write (replaced whole,
    never half-written)."""
    if not engagement.learned:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(orjson.dumps(engagement.rankers.to_dict()))
    os.replace(partial, path)
    engagement.learned = False


def register(nb: NextbestApp) -> Engagement:
    """The worker's engagement hooks, their models read back from the last checkpoint and
    written every `CHECKPOINT_S` and at shutdown."""
    path = Path(nb.settings.state_dir) / CHECKPOINT_NAME
    engagement = Engagement(load_checkpoint(path))

    def save() -> None:
        try:
            save_checkpoint(engagement, path)
        except OSError:
            log.exception("cannot write the engagement models %s", path)

    @nb.app.timer(CHECKPOINT_S)
    async def checkpoint() -> None:
        save()

    @nb.app.on_before_shutdown.connect
    async def on_shutdown(app: faust.App, **kwargs: object) -> None:
        save()

    return engagement
