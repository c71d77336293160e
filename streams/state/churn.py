"""Churn risk: how likely a customer is to place no order in the next ``HORIZON_DAYS``, from their
own purchase cadence, its trend and their engagement; a pure function of the customer state and
the event time.

The score is a logistic model over a few fixed transforms, each readable on its own
(`ChurnFeatures`):

- ``overdue``: ``log1p(days since the last order / expected interval)``; the expected interval is
  the customer's mean gap between orders shrunk towards ``PRIOR_INTERVAL_DAYS`` with the weight of
  ``PRIOR_GAPS`` gaps, so a one-order customer gets the prior;
- ``recency``: ``log1p(days since the last order) / log1p(365)``;
- ``orders``: ``log1p(orders) / log1p(100)``;
- ``gap_trend``: ``log(last gap / mean gap)``, clipped to [-2, 2] (0 with fewer than two kept
  orders): gaps getting longer;
- ``spend_trend``: ``log(mean of the last two orders' totals / average order value)``, clipped to
  [-2, 2]: spend falling;
- ``engagement``: ``exp(-days since the last visit / 14)``, a visit being a click, a cart change,
  an offer opened, clicked or redeemed, or an engagement action taken (0 without one);
- ``ignored``: messages sent since the customer's last visit or order, at most 5, over 5.

The weights of the first five were fitted on UCI Online Retail at an earlier cutoff than the one
they are reported on (``nextbest evaluate-churn``, docs/churn.md); the data has no clicks or
messages, so ``engagement`` and ``ignored`` carry hand-set prior weights (docs/churn.md says so).
Time enters only through ``overdue``, ``recency`` (weights >= 0), ``engagement`` (weight <= 0)
and the messages counted up to ``now``: the score never falls while a customer stays silent.

The customer state keeps ``state["churn"] = {"visit", "score", "band", "at"}`` (`update`, called
for every applied event; the score as of ``at``, at most ``RESCORE_S`` of event time old): four
numbers, whatever the customer does. A customer without orders
has no score (``score`` None, band ``"none"``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

DAY_S = 86400.0
HORIZON_DAYS = 90
PRIOR_INTERVAL_DAYS = 37.8
PRIOR_GAPS = 1.0
ENGAGEMENT_DAYS = 14.0
MAX_IGNORED = 5
RESCORE_S = 3600.0  # the stored score is rescored at least this often in event time (`update`)
#: the logistic model's intercept and weights, as ``nextbest evaluate-churn`` fitted them at
#: 2011-06-01 on UCI Online Retail (docs/churn.md), but the two priors
INTERCEPT = 1.347
WEIGHTS = {
    "overdue": 0.427,
    "recency": 0.0,  # fitted below 0: kept at 0 (the score must not fall with time)
    "orders": -7.336,
    "gap_trend": 0.118,
    "spend_trend": -0.386,
    "engagement": -1.0,  # prior (no clicks in the evaluation data)
    "ignored": 0.5,  # prior (no messages in the evaluation data)
}
#: (upper bound, band): a score below the bound is in the band
BANDS = ((0.3, "low"), (0.7, "medium"), (math.inf, "high"))  # the dashboard's bands too
NO_SCORE = "none"
MODEL_VERSION = "churn-risk/1"  # the features and weights above (a segment's ModelVersion)
#: feedback events that are a visit (the customer acted), besides clicks and cart changes
VISIT_FEEDBACK = ("offer_opened", "offer_clicked", "offer_redeemed", "action_taken")
_LOG_YEAR = math.log1p(365.0)
_LOG_100 = math.log1p(100.0)


class ChurnFeatures(NamedTuple):
    overdue: float
    recency: float
    orders: float
    gap_trend: float
    spend_trend: float
    engagement: float
    ignored: float


class History(NamedTuple):
    """What the score reads of a customer: the state's or an order file's."""

    orders: int  # orders in the whole history
    first: float  # first and last order time (epoch s)
    last: float
    last_gap: float | None = None  # s between the last two orders (None: fewer than two)
    recent_spend: float | None = None  # mean total of the last (up to) two orders
    average_spend: float | None = None  # average order value over the whole history
    visit: float | None = None  # last visit (click, cart, offer opened/clicked/redeemed)
    messages: tuple[float, ...] = ()  # times of the messages sent since the last visit or order


def _log_ratio(value: float | None, reference: float | None) -> float:
    if value is None or reference is None or value <= 0 or reference <= 0:
        return 0.0
    return math.log(min(max(value / reference, math.exp(-2.0)), math.exp(2.0)))


def expected_interval_days(history: History, prior_days: float = PRIOR_INTERVAL_DAYS) -> float:
    """The customer's mean gap between orders, shrunk towards the prior."""
    gaps = history.orders - 1
    mean = max((history.last - history.first) / DAY_S / gaps, 1.0) if gaps > 0 else 0.0
    return (gaps * mean + PRIOR_GAPS * prior_days) / (gaps + PRIOR_GAPS)


def features(
    history: History, now: float, prior_days: float = PRIOR_INTERVAL_DAYS
) -> ChurnFeatures:
    since = max(now - history.last, 0.0) / DAY_S
    gaps = history.orders - 1
    mean_gap = (history.last - history.first) / gaps if gaps > 0 else None
    visit = history.visit
    engagement = 0.0
    if visit is not None:
        engagement = math.exp(-max(now - visit, 0.0) / DAY_S / ENGAGEMENT_DAYS)
    ignored = sum(1 for ts in history.messages if ts <= now)
    return ChurnFeatures(
        overdue=math.log1p(since / expected_interval_days(history, prior_days)),
        recency=math.log1p(since) / _LOG_YEAR,
        orders=math.log1p(max(history.orders, 0)) / _LOG_100,
        gap_trend=_log_ratio(history.last_gap, mean_gap),
        spend_trend=_log_ratio(history.recent_spend, history.average_spend),
        engagement=engagement,
        ignored=min(ignored, MAX_IGNORED) / MAX_IGNORED,
    )


def logit(
    values: ChurnFeatures, weights: dict[str, float] = WEIGHTS, intercept: float = INTERCEPT
) -> float:
    if weights is WEIGHTS:
        return intercept + sum(w * x for w, x in zip(_WEIGHT_VECTOR, values, strict=True))
    return intercept + sum(
        weights[name] * x for name, x in zip(values._fields, values, strict=True)
    )


def probability(z: float) -> float:
    """The logistic function, safe for any finite ``z``."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def score(history: History, now: float) -> float:
    """P(no order within ``HORIZON_DAYS`` of ``now``), in (0, 1)."""
    return probability(logit(features(history, now)))


def band(value: float | None) -> str:
    if value is None:
        return NO_SCORE
    return next(name for bound, name in BANDS if value < bound)


def history_of(state: dict) -> History | None:
    """The state's `History` (None: no orders yet)."""
    rfm = state.get("rfm") or {}
    count = rfm.get("frequency") or 0
    if count <= 0 or rfm.get("last") is None or rfm.get("first") is None:
        return None
    kept = state.get("orders") or []
    last_gap = kept[-1][0] - kept[-2][0] if len(kept) >= 2 else None
    recent = [order[2] for order in kept[-2:]]
    visit = (state.get("churn") or {}).get("visit")
    since = max(rfm["last"], visit or rfm["last"])
    messages = tuple(entry[0] for entry in state.get("sent") or () if entry[0] > since)
    return History(
        orders=count,
        first=rfm["first"],
        last=rfm["last"],
        last_gap=last_gap,
        recent_spend=sum(recent) / len(recent) if recent else None,
        average_spend=rfm.get("monetary", 0.0) / count,
        visit=visit,
        messages=messages,
    )


def risk(state: dict, now: float) -> float | None:
    """The customer's churn risk at ``now`` (None: no orders)."""
    history = history_of(state)
    return None if history is None else score(history, now)


def explain(state: dict, now: float) -> str | None:
    """The score in words, for a reason: ``churn risk 0.72 (high): 45 days since the last order,
    usually every 20``; None without orders."""
    history = history_of(state)
    if history is None:
        return None
    value = score(history, now)
    since = max(now - history.last, 0.0) / DAY_S
    usual = expected_interval_days(history)
    return (
        f"churn risk {value:.2f} ({band(value)}): {since:.0f} days since the last order, "
        f"usually every {usual:.0f}"
    )


def update(state: dict, topic_kind: str, event: dict) -> None:
    """Note a visit and rescore at the event's time, called for every applied event.

    Rescored at every order and offer or action feedback, at a visit after ``RESCORE_S``
    without one, and at any event ``RESCORE_S`` or more after the last score: the clicks and
    cart changes of one session cost a comparison each, and the stored score is at most
    ``RESCORE_S`` of event time old (the risk moves by thousandths in an hour; the policy and
    the API score at their own time)."""
    ts = event["_ts"]
    churn = state.get("churn") or {"visit": None, "score": None, "band": NO_SCORE, "at": None}
    state["churn"] = churn
    last_visit = churn["visit"]
    visited = topic_kind in ("clickstream", "cart") or (
        topic_kind in ("feedback", "action_feedback") and event["event_type"] in VISIT_FEEDBACK
    )
    if visited:
        churn["visit"] = ts if last_visit is None else max(last_visit, ts)
    at = churn["at"]
    if (
        at is not None
        and ts - at < RESCORE_S
        and topic_kind not in ("orders", "feedback", "action_feedback")
        and not (visited and (last_visit is None or ts - last_visit >= RESCORE_S))
    ):
        return
    at = ts if at is None else max(at, ts)
    value = risk(state, at)
    churn.update(score=None if value is None else round(value, 4), band=band(value), at=at)


def overdue_at(state: dict) -> float | None:
    """When the customer's expected interval since their last order runs out (None: no
    orders)."""
    history = history_of(state)
    if history is None:
        return None
    return history.last + expected_interval_days(history) * DAY_S


def merge_visit(customer: dict, anonymous: dict) -> None:
    """A session's last visit counts for the customer who claimed it (rescored at their next
    event)."""
    visit = (anonymous.get("churn") or {}).get("visit")
    churn = customer.get("churn")
    if visit is not None and churn is not None:
        churn["visit"] = visit if churn["visit"] is None else max(churn["visit"], visit)


def crossing_time(
    state: dict, threshold: float, now: float, limit_days: float = 730.0
) -> float | None:
    """The first time at or after ``now`` when the risk reaches ``threshold`` if nothing happens
    (the score never falls with time alone: bisection); None: not within ``limit_days``, or no
    orders."""
    history = history_of(state)
    if history is None:
        return None
    if score(history, now) >= threshold:
        return now
    high = now + limit_days * DAY_S
    if score(history, high) < threshold:
        return None
    low = now
    while high - low > 60.0:
        middle = (low + high) / 2
        if score(history, middle) >= threshold:
            high = middle
        else:
            low = middle
    return high


def feature_names() -> tuple[str, ...]:
    return ChurnFeatures._fields


_WEIGHT_VECTOR = tuple(WEIGHTS[name] for name in ChurnFeatures._fields)
