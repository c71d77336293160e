"""Off-policy evaluation of engagement-action rankings from the log: ``nextbest engagement-ope``.

The log: promotion records (topic ``promotions``) that carry a cart's ranked engagement actions
(``engagement_actions``, best first, each with its posterior-mean ``p_take`` and ``value``, and
``engagement_propensity``, the probability the first had of being ranked first: the
Thompson-sampling ranking, ``streams.engagement.ranking``) and the action-feedback events
(topic ``action-feedback``). A record's reward is the first action's ``value`` if the customer
took that action within ``--window-hours`` after the record's event time, else 0: value per
showing, the quantity both rankings are meant to raise.

Candidates rank the same listed actions greedily at the logged posterior means:
``expected_value`` (``p_take x value``, first) or ``propensity`` (``p_take`` alone, Amazon
Personalize's way), or ``logged`` (the logging policy itself: weight 1). A deterministic
candidate's importance weight is ``1[its first == the logged first] / propensity``; the IPS and
SNIPS estimates and their 95% intervals are ``models.promotion.ope``'s. Only the listed actions
can be compared: log with ``engagement.attach`` at least the number of the merchant's actions,
or a candidate may prefer an action the record does not list (it then ranks among the listed
ones only).

Rankings ``GET /next-best-actions`` served (``--served``: its answers as the shop kept them,
JSON Lines) are rows too, once the shop reported showing their first action: an
``action_shown`` carrying the answer's ``ranking_id`` (and ``propensity``). The row's listing
and propensity are the answer's, its reward the first action's value if taken within the
window after that showing; an answer never shown is no row (n: ask for every action to
compare them all, as with ``attach``).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from models.promotion.ope import Estimate, effective_rows, evaluate

CANDIDATES = ("logged", "expected_value", "propensity")


@dataclass
class ShownAction:
    """One logged cart decision's engagement ranking, joined to whether its first was taken
    (the fields `models.promotion.ope.evaluate` weighs)."""

    record_id: str
    options: list[str]  # the listed actions, in the logged ranking's order
    p_take: np.ndarray
    value: np.ndarray
    logged: int  # always 0: the first listed action is the one shown first
    propensity: float
    reward: float


def _ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def _customer(record: dict) -> tuple[str, str | None]:
    return record["merchant_id"], record.get("customer_id")


def load_rows(
    promotions: Iterable[dict],
    feedback: Iterable[dict],
    window_s: float,
    served: Iterable[dict] = (),
) -> list[ShownAction]:
    """Promotion records with an engagement ranking, and the ``served`` answers of
    ``GET /next-best-actions`` whose first action the shop reported shown, joined to the takes
    of their first action (deduplicated by offer id, ranking id and event id: the topics are
    at-least-once)."""
    takes: dict[tuple, list[float]] = defaultdict(list)
    shown_at: dict[tuple, float] = {}  # (merchant, customer, ranking id, action) -> first showing
    seen: set[str] = set()
    for event in feedback:
        if event["event_id"] in seen:
            continue
        seen.add(event["event_id"])
        at, key = _ts(event["event_time"]), (*_customer(event), event["action_id"])
        if event.get("event_type") == "action_taken":
            takes[key].append(at)
        elif event.get("event_type") == "action_shown" and event.get("ranking_id"):
            shown = (*_customer(event), event["ranking_id"], event["action_id"])
            shown_at[shown] = min(at, shown_at.get(shown, at))
    rows, logged = [], set()
    for record in promotions:
        ranked = record.get("engagement_actions")
        if not ranked or record.get("engagement_propensity") is None:
            continue
        if record["offer_id"] in logged or record.get("customer_id") is None:
            continue
        logged.add(record["offer_id"])
        shown = _ts(record["event_time"])
        propensity = float(record["engagement_propensity"])
        rows.append(
            _row(record["offer_id"], _customer(record), ranked, shown, propensity, takes, window_s)
        )
    for answer in served:
        ranked, ranking_id = answer.get("actions"), answer.get("ranking_id")
        if not ranked or ranking_id is None or ranking_id in logged:
            continue
        customer = (answer["merchant"], answer["customer"])
        shown = shown_at.get((*customer, ranking_id, ranked[0]["action_id"]))
        if shown is None:  # served, never reported shown
            continue
        logged.add(ranking_id)
        propensity = float(answer["propensity"])
        rows.append(_row(ranking_id, customer, ranked, shown, propensity, takes, window_s))
    return rows


def _row(
    record_id: str,
    customer: tuple[str, str | None],
    ranked: list[dict],
    shown: float,
    propensity: float,
    takes: dict[tuple, list[float]],
    window_s: float,
) -> ShownAction:
    """A showing at ``shown`` of ``ranked``'s first action, rewarded with its value if the
    customer took it within ``window_s``."""
    first = ranked[0]
    taken = any(
        shown <= ts <= shown + window_s for ts in takes.get((*customer, first["action_id"]), ())
    )
    return ShownAction(
        record_id=record_id,
        options=[a["action_id"] for a in ranked],
        p_take=np.array([a["p_take"] for a in ranked], dtype=np.float64),
        value=np.array([a["value"] for a in ranked], dtype=np.float64),
        logged=0,
        propensity=propensity,
        reward=float(first["value"]) if taken else 0.0,
    )


Candidate = Callable[[ShownAction], np.ndarray]


def _greedy(score: Callable[[ShownAction], np.ndarray]) -> Candidate:
    def probabilities(row: ShownAction) -> np.ndarray:
        p = np.zeros(len(row.options))
        p[int(np.argmax(score(row)))] = 1.0
        return p

    return probabilities


def candidate(name: str) -> Candidate:
    """``logged``, ``expected_value`` or ``propensity``."""
    if name == "logged":  # weight 1 on the logged first: the log's own mean reward
        return lambda row: np.eye(len(row.options))[0] * row.propensity
    if name == "expected_value":
        return _greedy(lambda row: row.p_take * row.value)
    if name == "propensity":
        return _greedy(lambda row: row.p_take)
    raise ValueError(f"unknown candidate {name!r}, expected one of {CANDIDATES}")


def estimate(rows: Sequence[ShownAction], name: str) -> tuple[list[Estimate], float]:
    """IPS and SNIPS estimates of the candidate's value per showing, and its effective rows."""
    policy = candidate(name)
    probabilities = [policy(row) for row in rows]
    return evaluate(rows, probabilities), effective_rows(rows, probabilities)  # type: ignore[arg-type]


def _read_json_lines(paths: Iterable[Path]) -> list[dict]:
    records = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            records.extend(json.loads(line) for line in f if line.strip())
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nextbest engagement-ope",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--log", type=Path, nargs="+", required=True, help="promotion records, JSON Lines"
    )
    parser.add_argument(
        "--feedback", type=Path, nargs="+", required=True, help="action-feedback events, JSON Lines"
    )
    parser.add_argument(
        "--served",
        type=Path,
        nargs="+",
        default=[],
        help="GET /next-best-actions answers the shop kept, JSON Lines (module doc)",
    )
    parser.add_argument("--window-hours", type=float, default=72.0, help="a take counts this long")
    parser.add_argument("--json", type=Path, default=None, help="also write the estimates here")
    args = parser.parse_args(argv)
    rows = load_rows(
        _read_json_lines(args.log),
        _read_json_lines(args.feedback),
        args.window_hours * 3600,
        _read_json_lines(args.served),
    )
    if not rows:
        print(
            "no promotion records with an engagement ranking, nor shown served rankings, in the log"
        )
        return 1
    mean = float(np.mean([r.reward for r in rows]))
    print(f"{len(rows)} rankings shown; logged mean value {mean:.4f} per showing")
    print(f"{'candidate':<16} {'effective':>9} " + " ".join(f"{m:>28}" for m in ("IPS", "SNIPS")))
    results = {}
    for name in CANDIDATES:
        estimates, effective = estimate(rows, name)
        results[name] = {"effective_rows": effective, "estimates": [e.__dict__ for e in estimates]}
        cells = [f"{e.value:9.4f} [{e.low:8.4f},{e.high:8.4f}]" for e in estimates]
        print(f"{name:<16} {effective:>9.0f} " + " ".join(f"{c:>28}" for c in cells))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0
