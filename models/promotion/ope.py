"""Off-policy evaluation of a candidate promotion policy from the decision log: ``nextbest ope``.

Every logged decision ``i`` has its allowed actions, the action ``a_i`` the logging policy chose
with probability ``p_i`` (``propensity``) and the reward ``r_i`` (profit within the attribution
window, ``streams.promotion.rewards``). A candidate policy gives probabilities ``pi(a | x_i)`` over
the
same allowed actions; with ``w_i = pi(a_i | x_i) / p_i``::

    IPS    = mean(w_i r_i)
    SNIPS  = sum(w_i r_i) / sum(w_i)
    DR     = mean( sum_a pi(a | x_i) q(x_i, a) + w_i (r_i - q(x_i, a_i)) )

``q`` is a reward model (`RewardModel`: LightGBM on the context features and the action's
economics), cross-fitted: the rows of each fold are predicted by a model fitted on the other
folds. Confidence intervals are normal 95% intervals on the larger of two standard errors: the
sample one of the per-row terms (the delta method for SNIPS), and the one computed from the
logged probabilities of every allowed action and the reward model's second moments, which
still counts an action the log shows only a handful of times (`evaluate`); the command also
prints each candidate's effective number of decisions (`effective_rows`). Rows: rewards that
are learnable (``streams.promotion.rewards.learnable``: applied actions, not the holdout, not
superseded) joined to their decisions (repeats, ``repeat_of``, have none: left out); an arm can
be chosen with ``--arm``. The value is
profit per decision.

The estimates assume what the log records is true: every allowed action had a positive
probability (the bandit explores; a deterministic logging policy supports only candidates that
agree with it: others get infinite intervals) and the propensities are the probabilities
actually used.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from lightgbm import LGBMRegressor

from models.promotion.log import read_log
from streams.merchants.catalog import Merchant
from streams.promotion.actions import KINDS, Action
from streams.promotion.bandit import ChoiceInput, LinearThompson
from streams.promotion.rewards import learnable

METHODS = ("IPS", "SNIPS", "DR")
Z95 = 1.959964


@dataclass
class LoggedDecision:
    """A logged decision joined to its learnable reward: what the estimators weigh."""

    decision_id: str
    merchant_id: str
    options: list[str]  # allowed action ids, "none" first
    kinds: list[str]
    basket: np.ndarray
    discount: np.ndarray
    cart_value: float
    margin_rate: float
    deep_discount: tuple[float, float]  # the merchant's (depth, cost) when it decided
    horizon_margin: float
    repurchase: float
    features: np.ndarray
    logged: int  # index of the logged action in options
    propensity: float
    reward: float
    probabilities: np.ndarray  # the logging policy's, over options


Candidate = Callable[[LoggedDecision], np.ndarray]


@dataclass(frozen=True)
class Estimate:
    method: str
    value: float
    se: float
    low: float
    high: float
    rows: int


def load_rows(
    decisions: Sequence[dict], reward_records: Sequence[dict], arm: str | None = None
) -> list[LoggedDecision]:
    """Learnable rewards joined to their decisions (optionally of one arm), in decision order."""
    by_id = {r["decision_id"]: r for r in reward_records if learnable(r)}
    rows = []
    for d in decisions:
        reward = by_id.get(d["decision_id"])
        if reward is None or (arm is not None and d["arm"] != arm) or d.get("guard"):
            continue
        if d.get("repeat_of"):  # a repeat names its decision's reward: never a row of its own
            continue
        options = d["options"]
        ids = [o["action"] for o in options]
        rows.append(
            LoggedDecision(
                decision_id=d["decision_id"],
                merchant_id=d["merchant_id"],
                options=ids,
                kinds=[o["action_kind"] for o in options],
                basket=np.array([o["basket"] for o in options], dtype=np.float64),
                discount=np.array([o["discount"] for o in options], dtype=np.float64),
                cart_value=float(d["cart_value"]),
                margin_rate=float(d["margin_rate"]),
                deep_discount=(  # older logs: a policy without the premium (cost 0)
                    float(d.get("deep_discount_depth") or Merchant.deep_discount_depth),
                    float(d.get("deep_discount_cost") or 0.0),
                ),
                horizon_margin=float(d["horizon_margin"]),
                repurchase=float(d.get("repurchase_probability", 0.0)),
                features=np.array(d["features"], dtype=np.float64),
                logged=ids.index(d["action"]),
                propensity=float(d["propensity"]),
                reward=float(reward["profit"]),
                probabilities=np.array([o["probability"] for o in options], dtype=np.float64),
            )
        )
    return rows


# --- candidate policies ----------------------------------------------------------------------


def static(target: str) -> Candidate:
    """Always the action with id or kind ``target`` when allowed, else no offer."""

    def probabilities(row: LoggedDecision) -> np.ndarray:
        p = np.zeros(len(row.options))
        hit = next(
            (
                i
                for i, (a, k) in enumerate(zip(row.options, row.kinds, strict=True))
                if target in (a, k)
            ),
            0,
        )
        p[hit] = 1.0
        return p

    return probabilities


def logged() -> Candidate:
    """The logging policy itself (its OPE value must match the mean logged reward)."""
    return lambda row: row.probabilities


def _actions(row: LoggedDecision) -> list[Action]:
    return [
        Action(id=a, kind=k, cart_value=row.cart_value, basket=float(b), discount=float(d))
        for a, k, b, d in zip(row.options, row.kinds, row.basket, row.discount, strict=True)
    ]


def greedy(model: LinearThompson | dict[str, LinearThompson]) -> Candidate:
    """The bandit's choice at its posterior mean (per merchant when given a dict)."""

    def probabilities(row: LoggedDecision) -> np.ndarray:
        bandit = model if isinstance(model, LinearThompson) else model[row.merchant_id]
        depth, cost = row.deep_discount
        merchant = Merchant(
            row.merchant_id,
            "",
            0.0,
            (),
            margin_rate=row.margin_rate,
            deep_discount_depth=depth,
            deep_discount_cost=cost,
        )
        choice = ChoiceInput(
            None, merchant, row.features, _actions(row), row.horizon_margin, row.repurchase
        )
        p = np.zeros(len(row.options))
        p[bandit.greedy(choice)] = 1.0
        return p

    return probabilities


# --- reward model and estimators -------------------------------------------------------------


def _design(row: LoggedDecision) -> np.ndarray:
    """One row per allowed action: context features, then the action's economics and kind."""
    k = len(row.options)
    depth = np.divide(row.discount, row.basket, out=np.zeros(k), where=row.basket > 0)
    kind = np.array([[float(kind == name) for name in KINDS] for kind in row.kinds])
    economics = np.column_stack(
        [
            np.log1p(row.basket),
            np.log1p(row.discount),
            depth,
            np.full(k, math.log1p(row.cart_value)),
        ]
    )
    return np.hstack([np.tile(row.features, (k, 1)), economics, kind])


def _fold(decision_id: str, folds: int) -> int:
    return (
        int.from_bytes(hashlib.blake2b(decision_id.encode(), digest_size=4).digest(), "big") % folds
    )


LEAF_ROWS = 50
"""The reward models' smallest leaf (LightGBM ``min_child_samples``): an action logged fewer
times cannot have a leaf of its own."""


def _cross_fit(
    rows: Sequence[LoggedDecision],
    designs: list[np.ndarray],
    target: np.ndarray,
    folds: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """Predictions of ``target`` for every row and allowed action, each row's by a LightGBM model
    fitted on the other folds (the logged actions' rows)."""
    fold = np.array([_fold(r.decision_id, folds) for r in rows])
    x = np.vstack([d[r.logged] for d, r in zip(designs, rows, strict=True)])
    predictions: dict[str, np.ndarray] = {}
    for f in range(folds):
        train = fold != f
        if train.sum() < 50 or (~train).sum() == 0:
            mean = float(target[train].mean()) if train.any() else 0.0
            for i in np.flatnonzero(~train):
                predictions[rows[i].decision_id] = np.full(len(rows[i].options), mean)
            continue
        model = LGBMRegressor(
            n_estimators=200,
            learning_rate=0.05,
            num_leaves=15,
            min_child_samples=LEAF_ROWS,
            subsample=0.8,
            subsample_freq=1,
            random_state=seed,
            n_jobs=1,
            verbose=-1,
        ).fit(x[train], target[train])
        test = np.flatnonzero(~train)
        predicted = model.predict(np.vstack([designs[i] for i in test]))
        ends = np.cumsum([len(designs[i]) for i in test])
        for i, values in zip(test, np.split(predicted, ends[:-1]), strict=True):
            predictions[rows[i].decision_id] = values
    return predictions


@dataclass
class RewardModel:
    """Cross-fitted moments of the reward for every row and allowed action: the mean
    ``q(x_i, a)`` (``predictions``) and the mean squared error ``E[(r - q)^2]`` around it
    (``residual_squares``), from which `evaluate` computes each estimator's variance over the
    logging policy's choice.

    The squared-error model learns from the logged actions' rows, so an action logged fewer
    than `LEAF_ROWS` times borrows the others' errors, while ``q`` may well be worse for it:
    such an action's squared error is at least the mean squared residual of the rows that
    logged it (of all rows, for an action no row logged)."""

    predictions: dict[str, np.ndarray]
    residual_squares: dict[str, np.ndarray]

    @classmethod
    def fit(cls, rows: Sequence[LoggedDecision], folds: int = 2, seed: int = 0) -> RewardModel:
        designs = [_design(r) for r in rows]
        q = _cross_fit(rows, designs, np.array([r.reward for r in rows]), folds, seed)
        squared = np.array([(r.reward - q[r.decision_id][r.logged]) ** 2 for r in rows])
        modelled = _cross_fit(rows, designs, squared, folds, seed)
        logged: dict[str, list[float]] = {}
        for row, error in zip(rows, squared, strict=True):
            logged.setdefault(row.options[row.logged], []).append(float(error))
        pooled = float(squared.mean()) if len(rows) else 0.0
        floor = {
            action: float(np.mean(errors)) if len(errors) < LEAF_ROWS else 0.0
            for action, errors in logged.items()
        }
        residual_squares = {
            r.decision_id: np.maximum(
                modelled[r.decision_id], [floor.get(a, pooled) for a in r.options]
            )
            for r in rows
        }
        return cls(q, residual_squares)


def _weights(rows: Sequence[LoggedDecision], probabilities: Sequence[np.ndarray]) -> np.ndarray:
    """Importance weights ``pi(a_i | x_i) / p_i`` of the logged actions."""
    return np.array([p[r.logged] / r.propensity for r, p in zip(rows, probabilities, strict=True)])


def _spread(row: LoggedDecision, p: np.ndarray) -> np.ndarray:
    """``pi(a)^2 / mu(a)`` per allowed action (``mu`` the logging policy's probability), so that
    ``E[w^2 f(a)] = spread @ f`` over the logging policy's choice; infinite where the candidate
    takes an action the logging policy never takes (no support)."""
    spread = np.zeros(len(p))
    support = row.probabilities > 0
    spread[support] = p[support] ** 2 / row.probabilities[support]
    spread[~support & (p > 0)] = np.inf
    return spread


def _modelled_variances(
    rows: Sequence[LoggedDecision],
    probabilities: Sequence[np.ndarray],
    model: RewardModel,
    values: tuple[float, float, float],
) -> tuple[float, float, float]:
    """Per-row variances of the IPS, SNIPS and DR terms over the logging policy's choice, from
    the reward model's moments (``values``: the three estimates):

        IPS    mean_i sum_a spread (e + q^2) - IPS^2
        SNIPS  mean_i sum_a spread (e + (q - SNIPS)^2)       delta method, E[w] = 1
        DR     mean_i [ (sum_a pi q - DR)^2 + sum_a spread e ]

    with ``e`` the squared error around ``q`` and ``spread`` `_spread`. Infinite without
    support."""
    ips, snips, dr = values
    second = np.zeros(3)
    for row, p in zip(rows, probabilities, strict=True):
        spread = _spread(row, p)
        if np.isinf(spread).any():
            return math.inf, math.inf, math.inf
        q = model.predictions[row.decision_id]
        error = model.residual_squares[row.decision_id]
        second += (
            spread @ (error + q**2),
            spread @ (error + (q - snips) ** 2),
            (p @ q - dr) ** 2 + spread @ error,
        )
    second /= len(rows)
    return float(second[0] - ips**2), float(second[1]), float(second[2])


def _estimate(method: str, value: float, se: float, modelled: float, n: int) -> Estimate:
    """A normal 95% interval on the larger of the sample standard error ``se`` and the one from
    ``modelled``, the per-row variance the reward model's moments give (NaN: unknown)."""
    both = (se, math.sqrt(max(modelled, 0.0) / n) if n else math.nan)
    se = max((e for e in both if not math.isnan(e)), default=math.nan)
    if math.isinf(se):
        return Estimate(method, value, se, -math.inf, math.inf, n)
    return Estimate(method, value, se, value - Z95 * se, value + Z95 * se, n)


def effective_rows(rows: Sequence[LoggedDecision], probabilities: Sequence[np.ndarray]) -> float:
    """Kish's effective sample size of the importance weights, ``(sum w)^2 / sum w^2``: about
    how many logged decisions carry the candidate's estimate (few: expect a wide interval)."""
    weight = _weights(rows, probabilities)
    squares = float((weight**2).sum())
    return float(weight.sum() ** 2 / squares) if squares > 0 else 0.0


def _sample_se(terms: np.ndarray) -> float:
    """The standard error of the mean of ``terms`` (NaN for fewer than two)."""
    n = len(terms)
    return float(terms.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan


def evaluate(
    rows: Sequence[LoggedDecision],
    probabilities: Sequence[np.ndarray],
    model: RewardModel | None = None,
) -> list[Estimate]:
    """IPS, SNIPS and (with a reward model) DR estimates of the candidate's value.

    Without a model the intervals come from the sample variance of the per-row terms (the delta
    method for SNIPS). That variance misses what the log barely shows: a candidate action the
    logging policy took a handful of times adds its ``pi^2 / mu`` share of the variance only in
    the rows where it was taken, and with a few such rows the sample variance is far too small.
    With a model, each method's variance over the logging policy's choice is also computed from
    the logged probabilities of every allowed action and the reward model's moments
    (`_modelled_variances`), and the larger of the two standard errors is used. A candidate
    that takes an action the logging policy never takes gets an infinite interval."""
    n = len(rows)
    reward = np.array([r.reward for r in rows])
    weight = _weights(rows, probabilities)
    ips_terms = weight * reward
    ips = float(ips_terms.mean()) if n else math.nan
    total = weight.sum()
    snips = float(ips_terms.sum() / total) if total > 0 else math.nan
    snips_se = (
        float(np.sqrt(np.sum((weight * (reward - snips)) ** 2)) / total) if total > 0 else math.nan
    )
    if model is None:
        return [
            _estimate("IPS", ips, _sample_se(ips_terms), math.nan, n),
            _estimate("SNIPS", snips, snips_se, math.nan, n),
        ]
    logged_q = np.array([model.predictions[r.decision_id][r.logged] for r in rows])
    direct = np.array(
        [p @ model.predictions[r.decision_id] for r, p in zip(rows, probabilities, strict=True)]
    )
    dr_terms = direct + weight * (reward - logged_q)
    dr = float(dr_terms.mean()) if n else math.nan
    modelled = (
        _modelled_variances(rows, probabilities, model, (ips, snips, dr)) if n else (math.nan,) * 3
    )
    return [
        _estimate("IPS", ips, _sample_se(ips_terms), modelled[0], n),
        _estimate("SNIPS", snips, snips_se, modelled[1], n),
        _estimate("DR", dr, _sample_se(dr_terms), modelled[2], n),
    ]


# --- command ---------------------------------------------------------------------------------


def candidate(spec: str) -> Candidate:
    """``none``, ``logged``, ``static:<action id or kind>`` or ``greedy:<state.json>`` (the
    file ``nextbest promo-retrain`` writes)."""
    if spec == "none":
        return static("none")
    if spec == "logged":
        return logged()
    if spec.startswith("static:"):
        return static(spec.removeprefix("static:"))
    if spec.startswith("greedy:"):
        state = json.loads(Path(spec.removeprefix("greedy:")).read_text())
        models = {m: LinearThompson.from_dict(s) for m, s in state["bandit"].items()}
        return greedy(models)
    raise ValueError(f"unknown candidate policy {spec!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nextbest ope",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--log", type=Path, nargs="+", required=True, help="JSON Lines log file(s)")
    parser.add_argument(
        "--policy",
        action="append",
        default=None,
        help="candidate (repeatable): none | logged | static:<action> | greedy:<state.json>",
    )
    parser.add_argument("--arm", default=None, help="only decisions of this experiment arm")
    parser.add_argument("--folds", type=int, default=2, help="cross-fitting folds of the DR model")
    parser.add_argument("--json", type=Path, default=None, help="also write the estimates here")
    args = parser.parse_args(argv)
    decisions, reward_records = read_log(args.log)
    rows = load_rows(decisions, reward_records, args.arm)
    if not rows:
        print("no learnable decisions with rewards in the log")
        return 1
    model = RewardModel.fit(rows, folds=args.folds)
    specs = args.policy or ["logged", "none"]
    mean = float(np.mean([r.reward for r in rows]))
    print(f"{len(rows)} decisions; logged policy's mean reward {mean:.3f} per decision")
    print(f"{'candidate':<36} {'effective':>9} " + " ".join(f"{m:>28}" for m in METHODS))
    results = {}
    for spec in specs:
        policy = candidate(spec)
        probabilities = [policy(r) for r in rows]
        estimates = evaluate(rows, probabilities, model)
        effective = effective_rows(rows, probabilities)
        results[spec] = {
            "effective_rows": effective,
            "estimates": [e.__dict__ for e in estimates],
        }
        cells = [f"{e.value:9.3f} [{e.low:8.3f},{e.high:8.3f}]" for e in estimates]
        print(f"{spec:<36} {effective:>9.0f} " + " ".join(f"{c:>28}" for c in cells))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0
