"""Engagement actions ranked per customer by P(take | customer state) x value, or by P(take)
alone, with Thompson sampling and a logged propensity.

Take model (`TakeModel`, one per merchant): per engagement action an independent Bayesian
linear model of P(take within the window | x) on the customer's features ``x``
(`action_features`: the promotion policy's context features of the customer's state and cart,
``streams.promotion.features``, plus how often this action was shown and whether it was
dismissed) and an intercept. Its prior is Gaussian, centred on the action's configured
``prior_take_rate`` for the intercept (sd: half the rate) and on 0 for the features' weights
(sd 0.0125),
so a merchant's actions rank from the first event, by rate x value, before any feedback.
The posterior is Gaussian (the sufficient statistics per action: the Gram matrix,
``sum y x``, counts), kept by ``streams.learning.linear.LinearStatistics`` as the promotion
bandit's are; statistics are additive (`TakeModel.add`, `TakeModel.merged`): the take models
learned on every worker's partitions sum to one (``streams.learning.partitioned``).

Ranking (`TakeModel.rank`): ``draws`` posterior draws of every eligible action's weights are
scored (``p x value`` under ``expected_value``, ``p`` under ``propensity``); each draw votes
for its best action, the ranking is that of one draw picked uniformly -- or, with probability
``explore``, a uniformly drawn action goes first, the rest in the draw's order. The first
action's propensity is exactly::

    propensity(a) = (1 - explore) * votes(a) / draws + explore / k

which a cart decision's record logs (off-policy evaluation of any other ranking of the first
place stays possible: every eligible action keeps ``explore / k > 0``). Draws are a function
of the statistics (each action's standard normals seeded by its id and its update count) and
the choice takes the caller's generator: a replay ranks the same.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.linalg import cho_factor, cho_solve, solve_triangular

from streams.learning.linear import LinearStatistics
from streams.learning.partitioned import PartitionedModels, merchant_of
from streams.merchants.engagement import EngagementAction
from streams.promotion.bandit import P_MAX, P_MIN
from streams.promotion.features import FEATURE_NAMES, context_features
from streams.state.customer_state import new_state

FORMAT = 2  # of `TakeModel.to_dict`
VERSION = "engagement-ts/1"  # of the ranking (the model version a ranking logs)
ACTION_FEATURE_NAMES = (
    *FEATURE_NAMES,
    "action_shown",  # log1p(times this action was shown) / log1p(20)
    "action_dismissed",  # 1 if the customer dismissed this action before
)
_LOG_SHOWN = math.log1p(20.0)


@dataclass(frozen=True)
class RankingConfig:
    draws: int = 128
    explore: float = 0.05
    prior_cv: float = 0.5  # prior sd of an action's base rate, a share of its prior_take_rate
    prior_precision: float = 1600.0  # of a feature's weight: sd sqrt(0.25 / 1600) = 0.0125
    noise_var: float = 0.25  # a Bernoulli outcome's largest variance
    remember: int = 4096  # reward ids kept to ignore replayed rewards

    def __post_init__(self) -> None:
        if self.draws < 1 or not 0.0 <= self.explore <= 1.0:
            raise ValueError("draws must be >= 1 and explore in [0, 1]")
        if min(self.prior_cv, self.prior_precision, self.noise_var) <= 0:
            raise ValueError("prior_cv, prior_precision and noise_var must be > 0")


@dataclass(frozen=True)
class RankedItem:
    action: EngagementAction
    p_take: float  # posterior mean
    expected_value: float  # p_take x value

    def as_record(self) -> dict:
        """The ``RankedAction`` of a promotion record and of ``GET /next-best-actions``."""
        return {
            "action_id": self.action.id,
            "kind": self.action.kind,
            "title": self.action.title,
            "value": self.action.value,
            "p_take": round(self.p_take, 6),
            "expected_value": round(self.expected_value, 6),
        }


@dataclass(frozen=True)
class Ranking:
    items: tuple[RankedItem, ...]  # best first
    propensity: float  # of the first item being ranked first (1.0 when alone or none)
    mode: str  # expected_value | propensity
    version: str
    features: dict[str, list[float]] = field(default_factory=dict)  # action id -> its features

    @property
    def first(self) -> RankedItem | None:
        return self.items[0] if self.items else None


def action_features(state: dict, action_id: str, ts: float) -> list[float]:
    """The customer's features for one engagement action (`ACTION_FEATURE_NAMES`)."""
    cart = state.get("cart") or {}
    base = context_features(state, float(cart.get("value") or 0.0), ts, None)
    record = (state.get("engagement") or {}).get("actions", {}).get(action_id) or {}
    shown = math.log1p(record.get("shown", 0)) / _LOG_SHOWN
    return [*base, min(shown, 1.0), 1.0 if record.get("dismissed") else 0.0]


def eligible(action: EngagementAction, state: dict | None, ts: float) -> bool:
    """Whether the customer may be shown ``action`` now (its `Eligibility`)."""
    rule = action.eligibility
    if state is None:
        return rule.min_orders == 0
    orders = state["rfm"]["frequency"]
    if orders < rule.min_orders or (rule.max_orders is not None and orders > rule.max_orders):
        return False
    record = (state.get("engagement") or {}).get("actions", {}).get(action.id)
    if record is not None:
        if rule.once and record["taken"]:
            return False
        dismissed = record["dismissed_at"]
        if dismissed is not None and ts - dismissed < rule.dismissed_cooldown_s:
            return False
    if rule.not_bought_rule is not None:
        match = rule.not_bought_rule.match
        if any(match(product) for order in state["orders"] for product in order[3]):
            return False
    return True


class TakeModel:
    """P(take) per engagement action of one merchant, and Thompson ranking (module doc)."""

    def __init__(self, config: RankingConfig | None = None) -> None:
        self.config = config or RankingConfig()
        self.dim = len(ACTION_FEATURE_NAMES) + 1
        self.stats = LinearStatistics(self.dim, ("taken",), self.config.remember)
        self._cache: dict[tuple[str, float], tuple[int, np.ndarray, np.ndarray]] = {}

    @property
    def updates(self) -> int:
        return self.stats.updates

    @property
    def version(self) -> str:
        return f"{VERSION}:{self.updates}"

    def _design(self, features: Sequence[float]) -> np.ndarray:
        return self.stats.design(features)

    def _posterior(self, action: EngagementAction) -> tuple[np.ndarray, np.ndarray]:
        """(mean (dim,), draws (dim, draws)) of the action's weights for the current
        statistics."""
        stats = self.stats.arms.get(action.id)
        n = stats.n if stats is not None else 0
        key = (action.id, action.prior_take_rate)
        cached = self._cache.get(key)
        if cached is not None and cached[0] == n:
            return cached[1], cached[2]
        config = self.config
        prior_mean = np.zeros(self.dim)
        prior_mean[0] = action.prior_take_rate
        prior = np.full(self.dim, config.prior_precision)
        prior[0] = config.noise_var / (config.prior_cv * action.prior_take_rate) ** 2
        precision = np.diag(prior)
        target = prior * prior_mean
        if stats is not None:
            precision += stats.gram
            target += stats.target
        factor = cho_factor(precision, lower=True)
        mean = cho_solve(factor, target)
        seed = hashlib.blake2b(f"{action.id}|{n}".encode(), digest_size=8).digest()
        z = np.random.default_rng(int.from_bytes(seed, "big")).standard_normal(
            (self.dim, config.draws)
        )
        noise = solve_triangular(factor[0], z, lower=True, trans="T") * math.sqrt(config.noise_var)
        draws = mean[:, None] + noise
        self._cache[key] = (n, mean, draws)
        return mean, draws

    def p_take(self, action: EngagementAction, features: Sequence[float]) -> float:
        """Posterior-mean P(take)."""
        mean, _ = self._posterior(action)
        return float(np.clip(self._design(features) @ mean, P_MIN, P_MAX))

    def rank(
        self,
        actions: Sequence[EngagementAction],
        state: dict | None,
        ts: float,
        mode: str,
        rng: np.random.Generator,
    ) -> Ranking:
        """The customer's eligible ``actions``, best first (module doc); ``mode``:
        ``expected_value`` or ``propensity``."""
        candidates = [a for a in actions if eligible(a, state, ts)]
        features = {
            a.id: action_features(state, a.id, ts) if state is not None else _empty_features()
            for a in candidates
        }
        if not candidates:
            return Ranking((), 1.0, mode, self.version)
        means, scores = [], []
        for action in candidates:
            mean, draws = self._posterior(action)
            x = self._design(features[action.id])
            p_mean = float(np.clip(x @ mean, P_MIN, P_MAX))
            p_draws = np.clip(x @ draws, P_MIN, P_MAX)
            weight = action.value if mode == "expected_value" else 1.0
            means.append(p_mean)
            scores.append(p_draws * weight)
        score = np.stack(scores, axis=1)  # (draws, k)
        k = len(candidates)
        winners = score.argmax(axis=1)
        votes = np.bincount(winners, minlength=k) / len(winners)
        explore = self.config.explore
        draw = score[int(rng.integers(len(score)))]
        order = [int(i) for i in np.argsort(-draw, kind="stable")]
        if k > 1 and rng.random() < explore:
            first = int(rng.integers(k))
            order.remove(first)
            order.insert(0, first)
        propensity = 1.0 if k == 1 else (1.0 - explore) * votes[order[0]] + explore / k
        items = tuple(
            RankedItem(candidates[i], means[i], means[i] * candidates[i].value) for i in order
        )
        return Ranking(items, float(propensity), mode, self.version, features)

    def update(
        self, reward_id: str, action_id: str, features: Sequence[float], taken: bool
    ) -> bool:
        """Learn one closed take window; False (no change) for a reward id already learned, or
        for features of another length (a window opened before the context features changed)."""
        if len(features) + 1 != self.dim:
            return False
        taken_counted = ("taken",) if taken else ()
        return self.stats.learn(
            reward_id, action_id, self._design(features), float(taken), taken_counted
        )

    def add(self, other: TakeModel) -> None:
        """Add the statistics another model learned (disjoint rewards sum to one model)."""
        self.stats.add(other.stats)
        self._cache.clear()

    @classmethod
    def merged(cls, parts: Iterable[TakeModel], config: RankingConfig | None = None) -> TakeModel:
        """The priors plus every part's statistics (`add`)."""
        model = cls(config)
        for part in parts:
            model.add(part)
        return model

    def keep_posteriors(self, other: TakeModel) -> None:
        """Take ``other``'s posteriors of the actions whose statistics are the same as this
        model's, bit for bit (a merged model rebuilt after one action learned recomputes only
        that action's)."""
        for key, cached in other._cache.items():
            mine, theirs = self.stats.arms.get(key[0]), other.stats.arms.get(key[0])
            if mine is theirs is None or (
                mine is not None
                and theirs is not None
                and np.array_equal(mine.gram, theirs.gram)
                and np.array_equal(mine.target, theirs.target)
            ):
                self._cache[key] = cached

    def to_dict(self) -> dict:
        return {"format": FORMAT, **self.stats.to_dict()}

    @classmethod
    def from_dict(cls, data: dict, config: RankingConfig | None = None) -> TakeModel:
        """The model `to_dict` wrote; a ValueError for another format or other context
        features."""
        if data.get("format") != FORMAT:
            raise ValueError(f"engagement model format {data.get('format')} is not {FORMAT}")
        model = cls(config)
        model.stats.load(data)
        return model


def _empty_features() -> list[float]:
    """The features of a customer the worker has no state for."""
    return action_features(new_state(), "", 0.0)


class Rankers(PartitionedModels[TakeModel]):
    """The take models a worker ranks with: per merchant, the priors plus the statistics learned
    on every input partition (``streams.learning.partitioned``: parts ``merchant:partition``,
    each learned by the partition's owner with `learn`, the other workers' read in with
    `load`). A merchant's model is rebuilt from its parts when it is next asked for after one
    of them learned (the windows a batch closes are summed once), at once when parts are
    loaded."""

    def __init__(self, config: RankingConfig | None = None) -> None:
        super().__init__()
        self.config = config or RankingConfig()
        self.models: dict[str, TakeModel] = {}
        self._stale: set[str] = set()  # merchants with parts learned since their model was built

    def model(self, merchant_id: str) -> TakeModel:
        if merchant_id in self._stale:
            self.rebuild(merchant_id)
        model = self.models.get(merchant_id)
        if model is None:
            model = self.models[merchant_id] = TakeModel(self.config)
        return model

    def learn(self, key: str, rewards: Sequence[dict]) -> bool:
        """Learn closed take windows (``streams.engagement.rewards``) into the part ``key``;
        False when none was new."""
        part = self.parts.get(key)
        if part is None:
            part = self.parts[key] = TakeModel(self.config)
        learned = False
        for reward in rewards:
            learned |= part.update(
                reward["reward_id"], reward["action_id"], reward["features"], reward["taken"]
            )
        if learned:
            self._stale.add(merchant_of(key))
        return learned

    def entry(self, key: str) -> dict:
        part = self.parts.get(key)
        return part.to_dict() if part is not None else {}

    def part_of(self, entry: dict) -> TakeModel:
        return TakeModel.from_dict(entry, self.config)

    def set_merged(self, merchant_id: str, parts: list[TakeModel]) -> None:
        model = TakeModel.merged(parts, self.config)
        previous = self.models.get(merchant_id)
        if previous is not None:
            model.keep_posteriors(previous)
        self.models[merchant_id] = model
        self._stale.discard(merchant_id)

    def summary(self) -> dict:
        """Updates learned per merchant, in all and per part (a read-only view)."""
        for merchant_id in sorted(self._stale):
            self.model(merchant_id)
        return {
            merchant_id: {
                "updates": model.updates,
                "parts": {
                    key: part.updates
                    for key, part in sorted(self.parts.items())
                    if merchant_of(key) == merchant_id
                },
            }
            for merchant_id, model in sorted(self.models.items())
        }


def ranking_rng(ranking_id: str) -> np.random.Generator:
    """A ranking's own random stream, from its id: a replayed ranking draws the same."""
    digest = hashlib.blake2b(ranking_id.encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "big"))
