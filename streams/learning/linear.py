"""The statistics of a Bayesian linear (Gaussian, conjugate) model with one weight vector per
arm, learned once per reward: what the promotion bandit (``streams.promotion.bandit``) and the
engagement take models (``streams.engagement.ranking``) both learn.

With a Gaussian prior and Gaussian noise the posterior of an arm's weights depends on the
rewards only through, per arm, the Gram matrix ``sum x x'`` and ``sum y x`` of the rewards
that played it (``x``: the design vector, an intercept then the features); the models add
their own priors and counts of outcomes (``counters``: ``bought`` and ``redeemed`` for the
bandit, ``taken`` for the take models). The statistics are sums, so statistics learned from
disjoint sets of rewards add up (`LinearStatistics.add`) to those of one model that learned
them all. A bounded memory of reward ids (insertion order, the oldest forgotten first) makes a
replayed reward a no-op; it is not added: each part dedupes its own rewards.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class ArmStatistics:
    gram: np.ndarray  # sum of x x' over the rewards of this arm
    target: np.ndarray  # sum of y x
    n: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # counter name -> rewards counted


class LinearStatistics:
    """Per-arm sufficient statistics (module doc) of ``dim``-long design vectors."""

    def __init__(self, dim: int, counters: Sequence[str], remember: int) -> None:
        self.dim = dim
        self.counters = tuple(counters)
        self.remember = remember
        self.arms: dict[str, ArmStatistics] = {}
        self.updates = 0
        self.seen: dict[str, None] = {}  # reward ids learned, oldest first

    def design(self, features: Sequence[float]) -> np.ndarray:
        """The design vector of ``features``: an intercept, then the features."""
        return np.concatenate(([1.0], np.asarray(features, dtype=np.float64)))

    def arm(self, arm_id: str) -> ArmStatistics:
        """The arm's statistics (empty ones, kept, for an arm not seen before)."""
        arm = self.arms.get(arm_id)
        if arm is None:
            counts = dict.fromkeys(self.counters, 0)
            arm = ArmStatistics(np.zeros((self.dim, self.dim)), np.zeros(self.dim), 0, counts)
            self.arms[arm_id] = arm
        return arm

    def learn(
        self, reward_id: str, arm_id: str, x: np.ndarray, y: float, counted: Iterable[str] = ()
    ) -> bool:
        """Add one reward (design vector ``x``, outcome ``y``; ``counted``: the counters it
        adds one to); False (no change) for a reward id already learned."""
        if reward_id in self.seen:
            return False
        self.seen[reward_id] = None
        while len(self.seen) > self.remember:
            del self.seen[next(iter(self.seen))]
        arm = self.arm(arm_id)
        arm.gram += np.outer(x, x)
        arm.target += y * x
        arm.n += 1
        for name in counted:
            arm.counts[name] += 1
        self.updates += 1
        return True

    def add(self, other: LinearStatistics) -> None:
        """Add the statistics ``other`` learned (not its reward ids)."""
        for arm_id, arm in other.arms.items():
            mine = self.arm(arm_id)
            mine.gram += arm.gram
            mine.target += arm.target
            mine.n += arm.n
            for name, count in arm.counts.items():
                mine.counts[name] += count
        self.updates += other.updates

    def to_dict(self) -> dict:
        """``{"updates", "arms": {arm id: {"gram", "target", "n", counters...}}, "seen"}``."""
        return {
            "updates": self.updates,
            "arms": {
                arm_id: {
                    "gram": arm.gram.tolist(),
                    "target": arm.target.tolist(),
                    "n": arm.n,
                    **arm.counts,
                }
                for arm_id, arm in self.arms.items()
            },
            "seen": list(self.seen),
        }

    def load(self, data: dict) -> None:
        """Take the statistics of `to_dict`'s ``data`` (an arm's replace this model's, in this
        model's arm order); a ValueError (nothing changed) for statistics of another
        dimension."""
        arms = {}
        for arm_id, arm in data["arms"].items():
            gram = np.array(arm["gram"], dtype=np.float64)
            target = np.array(arm["target"], dtype=np.float64)
            if gram.shape != (self.dim, self.dim) or target.shape != (self.dim,):
                raise ValueError(f"statistics of {len(target)} weights, not {self.dim}")
            counts = {name: int(arm[name]) for name in self.counters}
            arms[arm_id] = ArmStatistics(gram, target, int(arm["n"]), counts)
        self.arms.update(arms)
        self.updates = int(data["updates"])
        self.seen = dict.fromkeys(data.get("seen", []))
