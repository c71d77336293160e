"""Thompson sampling over offers, with logged propensities, and the other policy variants.

Response model (`LinearThompson`, one per merchant): a Bayesian linear uplift model of
P(buy within the attribution window) on the context features (``streams.promotion.features``)
plus an intercept::

    P(buy | x, none) = x' beta
    P(buy | x, a)    = x' beta + x' gamma_a          (gamma_a: the uplift of offer a)

An offer never lowers the purchase probability of the cart it is made on (its later cost is
the objective's future term): a negative ``x' gamma_a`` counts as 0. ``beta`` is learned from
every decision, so the offers share what the base rate needs and only their uplift has to be
learned per offer; the priors are ``N(0, s2 / prior_precision)`` for
``beta`` and a tighter ``N(0, s2 / uplift_precision)`` for each ``gamma_a`` (offers move
purchase probabilities by a little, not by 0.5). The posterior is Gaussian; its sufficient
statistics are, per action ("arm", e.g. ``percent_off:ten-off``), the Gram matrix and
``sum y x`` of the decisions that played it, plus counts of purchases and of purchases that
redeemed the offer (``rho``, Beta(1, 1) prior; a nudged customer may buy without topping up).

Choice (`LinearThompson.choose`): ``draws`` joint posterior draws of all weights (drawn again
when the model changes) are scored by the objective
(``streams.promotion.objective``); each draw votes for its best allowed action, and the policy
plays the
vote of one draw picked uniformly -- or, with probability ``explore``, a random allowed
action, drawn with weights ``w(a) = 1 / (1 + depth(a) / explore_depth_scale)`` (normalised:
``e(a)``) so that exploration is spent mostly on cheap offers: with the default scale of 0.02,
20% off is explored an eleventh as often as no offer, 5% off two sevenths as often. Given the
draws, the probability of playing action ``a`` is exactly::

    propensity(a) = (1 - explore) * votes(a) / draws + explore * e(a)

which is what the decision log records (the Monte Carlo estimate of the Thompson-sampling
probability, made exact by playing one of the draws). Every action keeps at least
``explore * e(a) > 0``, so off-policy evaluation of any candidate policy stays possible.

Replays decide the same: the posterior draws are a function of the statistics (each action's
block of standard normals is seeded by the action id and the model's update count; an action
with no statistics is independent of the others, so actions the model merely heard of change
no other draw), and the choice among them takes the caller's generator (the promotion policy
seeds one per decision id). Same statistics, same features, same decision id: same choice,
on any worker, in any batch.

Cost: the draws are made once per change of the statistics (a model refresh): the Cholesky
factor covers the base rate and the offers with statistics only, and an offer without any
draws from its prior (closed form, the same numbers) when it is first scored, so a new action
never refactors the posterior. A decision is then one matrix-vector product of its features
with every draw and the objective over its allowed actions
(``tests/test_promotion_seeded_replay.py``: a seeded replay decides as before this was so).

Learning: `LinearThompson.update` with a reward (features, arm, purchased, redeemed) of an
applied action, into the statistics ``streams.learning.linear.LinearStatistics`` keeps (shared
with the engagement take models); a bounded memory of decision ids makes a replayed reward a
no-op. The whole state is plain JSON (`to_dict` / `from_dict`) for a Faust table or a
checkpoint. The statistics are additive: models that learned disjoint sets of rewards sum
(`add`, `merged`) to the one model that learned them all -- how the workers share one bandit
(``streams.promotion.policy.PartitionedLearning``, ``agents.promotion``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy.linalg import cho_factor, cho_solve, solve_triangular

from streams.decisions import DecisionContext, threshold_offer
from streams.learning.linear import ArmStatistics, LinearStatistics
from streams.merchants.catalog import Merchant
from streams.promotion.actions import NONE, Action
from streams.promotion.features import FEATURE_NAMES, FEATURE_SET
from streams.promotion.objective import DeepDiscount, Economics, ObjectiveConfig, incremental_profit

FORMAT = 2
P_MIN, P_MAX = 1e-3, 1.0 - 1e-3


@dataclass(frozen=True)
class BanditConfig:
    draws: int = 256
    explore: float = 0.02
    prior_precision: float = 1.0
    uplift_precision: float = 1000.0  # prior sd of an offer's uplift in P(buy): ~0.035
    noise_var: float = 0.25  # a Bernoulli outcome's largest variance
    remember: int = 4096  # decision ids kept to ignore replayed rewards
    #: Exploration favours cheap offers: an action's share of it is proportional to
    #: ``1 / (1 + depth / explore_depth_scale)`` (None: uniform over the allowed actions).
    explore_depth_scale: float | None = 0.02

    def __post_init__(self) -> None:
        if self.draws < 1 or not 0.0 <= self.explore <= 1.0:
            raise ValueError("draws must be >= 1 and explore in [0, 1]")
        if self.explore_depth_scale is not None and self.explore_depth_scale <= 0:
            raise ValueError("explore_depth_scale must be > 0 (None: uniform exploration)")
        if min(self.prior_precision, self.uplift_precision, self.noise_var) <= 0:
            raise ValueError("prior_precision, uplift_precision and noise_var must be > 0")


@dataclass(frozen=True)
class Choice:
    index: int  # into the allowed actions
    propensity: float  # probability with which this action was chosen
    probabilities: tuple[float, ...]  # of every allowed action
    version: str
    #: each allowed action's objective (expected incremental profit over no offer) averaged
    #: over the posterior draws; None: the chooser does not score actions
    values: tuple[float, ...] | None = None


@dataclass
class ChoiceInput:
    """One cart, as the choosers see it (actions already filtered by the guard rails)."""

    context: DecisionContext | None  # None when re-scoring a logged decision
    merchant: Merchant
    features: np.ndarray
    actions: list[Action]
    horizon: float  # the customer's horizon margin (``streams.promotion.objective.horizon_margin``)
    repurchase: float = 0.0  # P(another order within the horizon), ``streams.promotion.objective``


class Chooser(Protocol):
    name: str

    def choose(self, row: ChoiceInput, rng: np.random.Generator) -> Choice: ...


#: an arm's counters (``ArmStatistics.counts``): its rewards with a purchase, and those of them
#: that redeemed the offer
COUNTERS = ("bought", "redeemed")


def redeem_share(arm: ArmStatistics) -> float:
    """The posterior mean share of an arm's purchases that redeem its offer."""
    return (arm.counts["redeemed"] + 1.0) / (arm.counts["bought"] + 2.0)


class _Draws:
    """The posterior draws of one model's statistics: each action's block of weights (dim,
    draws) (block 0, ``none``: the base rate), side by side in ``weights``; room is kept for as
    many actions again (unlearned ones, added when first scored)."""

    def __init__(self, arm_ids: Sequence[str], blocks: np.ndarray, draws: int) -> None:
        """``blocks``: (len(arm_ids), dim, draws)."""
        self.column = {arm_id: j for j, arm_id in enumerate(arm_ids)}
        self.draws = draws
        used = len(arm_ids) * draws
        self._room = np.empty((blocks.shape[1], 2 * used))
        self._room[:, :used] = np.concatenate(blocks, axis=1)
        self.weights = self._room[:, :used]  # (dim, blocks * draws)

    def add(self, arm_id: str, block: np.ndarray) -> int:
        """Another action's block; returns its column."""
        column = len(self.column)
        used = (column + 1) * self.draws
        if used > self._room.shape[1]:
            self._room = np.concatenate((self._room, np.empty_like(self._room)), axis=1)
        self._room[:, used - self.draws : used] = block
        self.column[arm_id] = column
        self.weights = self._room[:, :used]
        return column

    def score(self, x: np.ndarray) -> np.ndarray:
        """``x' w`` of every draw of every block: (draws, blocks)."""
        return (x @ self.weights).reshape(-1, self.draws).T


class LinearThompson:
    """Bayesian linear uplift model and Thompson choice for one merchant."""

    def __init__(
        self, config: BanditConfig | None = None, objective: ObjectiveConfig | None = None
    ):
        self.config = config or BanditConfig()
        self.objective = objective or ObjectiveConfig()
        self.dim = len(FEATURE_NAMES) + 1
        self.stats = LinearStatistics(self.dim, COUNTERS, self.config.remember)
        self.stats.arm(NONE)
        self._posterior: tuple | None = None  # (learned offer arm ids, mean, cholesky factor)
        self._draws: _Draws | None = None  # of the current statistics

    @property
    def arms(self) -> dict[str, ArmStatistics]:
        return self.stats.arms

    @property
    def updates(self) -> int:
        return self.stats.updates

    @property
    def version(self) -> str:
        return f"linear-ts/{FORMAT}:{self.updates}"

    def _arm(self, arm_id: str) -> ArmStatistics:
        return self.stats.arm(arm_id)  # a new one has no statistics: the posterior is the same

    def _design(self, features: np.ndarray) -> np.ndarray:
        return self.stats.design(features)

    def posterior(self) -> tuple[list[str], np.ndarray, tuple]:
        """Learned offer arm ids (block order), posterior mean (1 + learned offers, dim),
        Cholesky factor of the precision.

        Only offers with statistics take part: an offer without is independent of everything
        else, its uplift's posterior its prior (mean 0, ``precision^-1/2 =
        uplift_precision^-1/2``; `_draws`)."""
        if self._posterior is None:
            offers = sorted(a for a, arm in self.arms.items() if a != NONE and arm.gram.any())
            d, k = self.dim, len(offers)
            precision = np.zeros(((1 + k) * d, (1 + k) * d))
            target = np.zeros((1 + k) * d)
            precision[:d, :d] = np.eye(d) * self.config.prior_precision
            for arm in self.arms.values():
                precision[:d, :d] += arm.gram
                target[:d] += arm.target
            for j, arm_id in enumerate(offers, start=1):
                arm, block = self.arms[arm_id], slice(j * d, (j + 1) * d)
                precision[:d, block] = precision[block, :d] = arm.gram
                precision[block, block] = np.eye(d) * self.config.uplift_precision + arm.gram
                target[block] = arm.target
            factor = cho_factor(precision, lower=True)
            mean = cho_solve(factor, target).reshape(1 + k, d)
            self._posterior = (offers, mean, factor)
        return self._posterior

    def _sample(self) -> _Draws:
        """The posterior draws, a function of the statistics (module docstring); drawn once per
        change of the statistics, an unlearned action's when it is first scored."""
        if self._draws is None:
            offers, mean, (lower, _) = self.posterior()
            z = np.concatenate([self._normals(arm_id) for arm_id in (NONE, *offers)])
            noise = solve_triangular(lower, z, lower=True, trans="T")  # precision^-1/2 z
            noise *= np.sqrt(self.config.noise_var)
            blocks = mean[:, :, None] + noise.reshape(len(mean), self.dim, self.config.draws)
            self._draws = _Draws((NONE, *offers), blocks, self.config.draws)
        return self._draws

    def _normals(self, arm_id: str) -> np.ndarray:
        """One action's block of standard normals (dim, draws) for the current statistics."""
        seed = hashlib.blake2b(f"{arm_id}|{self.updates}".encode(), digest_size=8).digest()
        rng = np.random.default_rng(int.from_bytes(seed, "big"))
        return rng.standard_normal((self.dim, self.config.draws))

    def _prior_draws(self, arm_id: str) -> np.ndarray:
        """An unlearned offer's uplift draws (dim, draws): its prior's."""
        noise = self._normals(arm_id) / np.sqrt(self.config.uplift_precision)
        return noise * np.sqrt(self.config.noise_var)

    def _columns(self, actions: Sequence[Action]) -> list[int]:
        """Each action's block in the draws (``none``: 0, the base rate)."""
        draws = self._sample()
        columns = []
        for action in actions:
            column = draws.column.get(action.id)
            if column is None:
                self._arm(action.id)
                column = draws.add(action.id, self._prior_draws(action.id))
            columns.append(column)
        return columns

    def _objective(self, row: ChoiceInput, p: np.ndarray) -> np.ndarray:
        share = np.array(
            [1.0 if a.id == NONE else redeem_share(self.arms[a.id]) for a in row.actions]
        )
        economics = Economics.of(row.actions)
        return incremental_profit(
            p,
            share,
            economics,
            row.merchant.margin_rate,
            row.horizon,
            self.objective,
            row.repurchase,
            DeepDiscount(row.merchant.deep_discount_depth, row.merchant.deep_discount_cost),
        )

    def purchase_probability(self, features: np.ndarray, actions: Sequence[Action]) -> np.ndarray:
        """Posterior-mean P(buy) of each action."""
        for action in actions:
            self._arm(action.id)
        offers, mean, _ = self.posterior()
        per_block = mean @ self._design(features)
        learned = {arm_id: j for j, arm_id in enumerate(offers, start=1)}
        uplift = np.array(
            [max(per_block[learned[a.id]], 0.0) if a.id in learned else 0.0 for a in actions]
        )
        return np.clip(per_block[0] + uplift, P_MIN, P_MAX)

    def choose(self, row: ChoiceInput, rng: np.random.Generator) -> Choice:
        k = len(row.actions)
        if k == 1:
            return Choice(0, 1.0, (1.0,), self.version)
        columns = np.array(self._columns(row.actions))
        draws = self._sample().score(self._design(row.features))  # (draws, blocks)
        uplift = np.where(columns == 0, 0.0, np.maximum(draws[:, columns], 0.0))
        p = np.minimum(np.maximum(draws[:, :1] + uplift, P_MIN), P_MAX)
        objective = self._objective(row, p)
        winners = objective.argmax(axis=1)
        votes = np.bincount(winners, minlength=k) / len(winners)
        explore = self.config.explore
        spread = self._exploration(row.actions)
        probabilities = ((1.0 - explore) * votes + explore * spread).tolist()
        if rng.random() < explore:
            index = int(rng.choice(k, p=spread))
        else:
            index = int(winners[rng.integers(len(winners))])
        values = tuple(objective.mean(axis=0).tolist())
        return Choice(index, probabilities[index], tuple(probabilities), self.version, values)

    def _exploration(self, actions: Sequence[Action]) -> np.ndarray:
        """How exploration spreads over the allowed actions (sums to 1)."""
        scale = self.config.explore_depth_scale
        if scale is None:
            return np.full(len(actions), 1.0 / len(actions))
        weights = 1.0 / (1.0 + np.array([a.depth for a in actions]) / scale)
        return weights / weights.sum()

    def greedy(self, row: ChoiceInput) -> int:
        """The action with the best objective at the posterior mean (no exploration)."""
        p = self.purchase_probability(row.features, row.actions)
        return int(np.argmax(self._objective(row, p[None, :])[0]))

    def update(
        self,
        decision_id: str,
        features: Sequence[float],
        arm_id: str,
        purchased: bool,
        redeemed: bool,
    ) -> bool:
        """Learn from one reward; False (no change) for a decision id already learned."""
        counted = COUNTERS if purchased and redeemed else COUNTERS[:1] if purchased else ()
        x = self._design(features)
        if not self.stats.learn(decision_id, arm_id, x, float(purchased), counted):
            return False
        self._posterior = self._draws = None
        return True

    def add(self, other: LinearThompson) -> None:
        """Add the statistics another model learned to this one's.

        The posterior is the prior plus sums over the rewards learned (Gram matrices,
        ``sum y x``, counts), so models that learned disjoint sets of rewards add up to the one
        model that learned them all. Their decision-id memories are not merged: each part
        dedupes its own rewards."""
        self.stats.add(other.stats)
        self._posterior = self._draws = None

    @classmethod
    def merged(
        cls,
        parts: Iterable[LinearThompson],
        config: BanditConfig | None = None,
        objective: ObjectiveConfig | None = None,
    ) -> LinearThompson:
        """The prior plus every part's statistics (`add`)."""
        model = cls(config, objective)
        for part in parts:
            model.add(part)
        return model

    def to_dict(self) -> dict:
        return {"format": FORMAT, "feature_set": FEATURE_SET, **self.stats.to_dict()}

    @classmethod
    def from_dict(
        cls,
        data: dict,
        config: BanditConfig | None = None,
        objective: ObjectiveConfig | None = None,
    ) -> LinearThompson:
        if data.get("format") != FORMAT or data.get("feature_set") != FEATURE_SET:
            raise ValueError(
                f"bandit state format {data.get('format')}/{data.get('feature_set')} is not "
                f"{FORMAT}/{FEATURE_SET}"
            )
        bandit = cls(config, objective)
        bandit.stats.load(data)
        return bandit


class BanditChooser:
    """The learned variant: one `LinearThompson` per merchant."""

    def __init__(
        self,
        config: BanditConfig | None = None,
        objective: ObjectiveConfig | None = None,
        start: Mapping[str, LinearThompson] | None = None,
    ):
        self.name = "linear-ts"
        self.config = config or BanditConfig()
        self.objective = objective or ObjectiveConfig()
        self.models: dict[str, LinearThompson] = {}
        #: per merchant, statistics every model of it starts from (e.g. `nextbest promo-retrain`)
        self.start = dict(start or {})

    def model(self, merchant_id: str) -> LinearThompson:
        model = self.models.get(merchant_id)
        if model is None:
            model = self.models[merchant_id] = self._merged(merchant_id, ())
        return model

    def choose(self, row: ChoiceInput, rng: np.random.Generator) -> Choice:
        return self.model(row.merchant.id).choose(row, rng)

    def learn(self, reward: dict) -> bool:
        """Update from a learnable reward dict (``streams.promotion.rewards.learnable``)."""
        return self.model(reward["merchant_id"]).update(
            reward["decision_id"],
            reward["features"],
            reward["action"],
            reward["purchased"],
            reward["redeemed"],
        )

    def state_dict(self) -> dict:
        return {merchant: model.to_dict() for merchant, model in self.models.items()}

    def load_state_dict(self, state: dict) -> None:
        self.models = {
            merchant: LinearThompson.from_dict(data, self.config, self.objective)
            for merchant, data in state.items()
        }

    def learner(self) -> LinearThompson:
        """A fresh model of this variant's configuration (e.g. one partition's statistics)."""
        return LinearThompson(self.config, self.objective)

    def set_merged(self, merchant_id: str, parts: Iterable[LinearThompson]) -> None:
        """The merchant's model becomes the prior plus its start's and the parts' statistics."""
        self.models[merchant_id] = self._merged(merchant_id, parts)

    def _merged(self, merchant_id: str, parts: Iterable[LinearThompson]) -> LinearThompson:
        start = self.start.get(merchant_id)
        starts = [start] if start is not None else []
        return LinearThompson.merged([*starts, *parts], self.config, self.objective)


def _certain(index: int, k: int, version: str) -> Choice:
    probabilities = tuple(1.0 if i == index else 0.0 for i in range(k))
    return Choice(index, 1.0, probabilities, version)


class StaticChooser:
    """Always the same action when it is allowed (by id, e.g. ``percent_off:ten-off``, or by
    kind, e.g. ``threshold_nudge``), else no offer. Deterministic: propensity 1."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.name = f"static:{target}"

    def choose(self, row: ChoiceInput, rng: np.random.Generator) -> Choice:
        for i, action in enumerate(row.actions):
            if self.target in (action.id, action.kind):
                return _certain(i, len(row.actions), self.name)
        return _certain(0, len(row.actions), self.name)


class RulesChooser:
    """The threshold-rules policy (``streams.decisions.threshold_offer``) as a variant."""

    name = "threshold-rules/1"

    def choose(self, row: ChoiceInput, rng: np.random.Generator) -> Choice:
        ctx = row.context
        offer = ctx and threshold_offer(row.merchant, ctx.cart_value, ctx.currency, ctx.ts)
        if offer is not None:
            for i, action in enumerate(row.actions):
                if action.id == offer.key:
                    return _certain(i, len(row.actions), self.name)
        return _certain(0, len(row.actions), self.name)
