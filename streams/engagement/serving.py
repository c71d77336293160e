"""How a cart decision serves a ranking of engagement actions beside its offer.

One decision per cart still: the merchant's ``engagement.combine`` rule says what the cart's
promotion record carries.

- ``offer_first``: a cart that gets an offer gets it alone; a cart without one (no offer, the
  holdout, the offer it already had) gets the first-ranked action as its decision
  (``offer_type: engagement_action``);
- ``both``: an offer carries the ranked actions; a cart without one gets the first action;
- ``best_value``: the first action competes with the offer inside the promotion policy's choice
  (`contest`, `streams.decisions.ValueContest`): the action goes out alone when its expected
  value (P(take) x value) exceeds the offer's expected incremental value to the shop as the
  policy scores it (over no offer), else the offer alone; both records carry
  ``value_contest`` (the winner and both values). A cart without an offer gets the first
  action.

A cart gets one action as its decision (``state["engagement"]["last"]`` = ``[cart
generation, action id]``), whatever later changes of the cart rank first.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from streams.decisions import ValueContest
from streams.engagement.ranking import Ranking

ENGAGEMENT_OFFER_TYPE = "engagement_action"
API_RANKING_PREFIX = "api-"
BEST_VALUE = "best_value"


@dataclass(frozen=True)
class CartServing:
    """What a cart decision does with a ranking."""

    attach: bool  # the offer's record carries the ranked actions
    standalone: bool  # the first action goes as the cart's decision (no offer was made)


def serve(ranking: Ranking, has_offer: bool, combine: str) -> CartServing:
    if ranking.first is None:
        return CartServing(attach=False, standalone=False)
    if has_offer:
        return CartServing(attach=combine == "both", standalone=False)
    return CartServing(attach=False, standalone=True)


def contest(ranking: Ranking | None, state: dict, generation: int | None) -> ValueContest | None:
    """Under ``best_value``: the first-ranked action's expected value, to compete with the
    policy's offer; None when no action would go out (none eligible, or this cart got its
    action already)."""
    if ranking is None or ranking.first is None:
        return None
    if generation is not None and action_made(state, generation):
        return None
    return ValueContest(action_value=ranking.first.expected_value)


def contest_fields(value_contest: ValueContest | None) -> dict:
    """The ``value_contest`` field of the records of a cart whose action and offer competed
    (empty when they did not)."""
    if value_contest is None or value_contest.winner is None:
        return {}
    offer_value = value_contest.offer_value
    return {
        "value_contest": {
            "winner": value_contest.winner,
            "action_value": round(value_contest.action_value, 6),
            "offer_value": None if offer_value is None else round(offer_value, 6),
        }
    }


def action_made(state: dict, generation: int) -> bool:
    """Whether cart ``generation`` got an engagement action as its decision already."""
    last = (state.get("engagement") or {}).get("last")
    return last is not None and last[0] == generation


def ranking_fields(ranking: Ranking, attach: int) -> dict:
    """The fields a promotion record gains from ``ranking`` (its first ``attach`` actions)."""
    return {
        "engagement_actions": [item.as_record() for item in ranking.items[:attach]],
        "engagement_ranking": ranking.mode,
        "engagement_propensity": round(ranking.propensity, 6),
    }


def action_message(ranking: Ranking) -> str:
    first = ranking.first
    return first.action.title if first is not None else ""


def action_reason(ranking: Ranking, currency: str) -> str:
    first = ranking.first
    if first is None:
        return ""
    if ranking.mode == "expected_value":
        return (
            f"engagement action {first.action.id}: P(take) {first.p_take:.3f} x value "
            f"{first.action.value:.2f} {currency} = {first.expected_value:.2f}"
        )
    return f"engagement action {first.action.id}: P(take) {first.p_take:.3f} (propensity ranking)"


def api_ranking_id(state_key: str, now: float) -> str:
    """The id of a ranking ``GET /next-best-actions`` serves the customer of ``state_key`` at
    ``now``: a digest of both (an input ``Id`` whatever the key's length, for the shop to send
    back on its ``action_shown``); the ranking's draws are seeded by it (``ranking_rng``)."""
    digest = hashlib.blake2b(f"{state_key}|{now!r}".encode(), digest_size=12).hexdigest()
    return API_RANKING_PREFIX + digest
