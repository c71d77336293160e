"""Experiments: a global holdout and A/B arms between policy variants.

A customer's arm is a pure function of ``(experiment id, customer key)``: a BLAKE2b hash mapped
to a point ``u`` in [0, 1). ``u < holdout`` is the holdout (decisions are computed and logged,
nothing is sent); the rest of [0, 1) is cut into the arms in proportion to their weights. No
state, no randomness at run time: restarts, rebalances and replays never move anyone, and
changing the experiment id reshuffles everyone on purpose. Changing weights within one id moves
only the customers near the cut points.

An anonymous session has its own key, so a visitor can sit in one arm before logging in and in
another after (their customer key); experiments are read per customer key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

HOLDOUT = "holdout"


@dataclass(frozen=True)
class Arm:
    name: str
    weight: float
    variant: str  # the policy variant serving this arm (a key of the policy's variants)


@dataclass(frozen=True)
class Experiment:
    id: str = "promo-1"
    holdout: float = 0.10
    arms: tuple[Arm, ...] = (Arm("learned", 1.0, "bandit"),)

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("experiment id must not be empty")
        if not 0.0 <= self.holdout < 1.0:
            raise ValueError(f"holdout must be in [0, 1), got {self.holdout}")
        if not self.arms or any(arm.weight <= 0 for arm in self.arms):
            raise ValueError("an experiment needs arms with weights > 0")
        names = [arm.name for arm in self.arms]
        if len(set(names)) != len(names) or HOLDOUT in names:
            raise ValueError(f"arm names must be unique and not {HOLDOUT!r}: {names}")

    @classmethod
    def from_config(cls, config: dict) -> Experiment:
        """``{id, holdout, arms: [{name, weight, variant}]}`` (e.g. parsed from YAML/JSON)."""
        try:
            arms = tuple(
                Arm(str(a["name"]), float(a.get("weight", 1.0)), str(a.get("variant", a["name"])))
                for a in config.get("arms", [{"name": "learned", "variant": "bandit"}])
            )
            return cls(
                id=str(config.get("id", cls.id)),
                holdout=float(config.get("holdout", cls.holdout)),
                arms=arms,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"invalid experiment config {config!r}: {exc}") from None


def unit_point(experiment_id: str, customer_key: str) -> float:
    """The customer's stable point in [0, 1) for this experiment."""
    digest = hashlib.blake2b(f"{experiment_id}\x1f{customer_key}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big") / 2.0**64


def assign(experiment: Experiment, customer_key: str) -> str:
    """The customer's arm name, or ``"holdout"``."""
    u = unit_point(experiment.id, customer_key)
    if u < experiment.holdout:
        return HOLDOUT
    u = (u - experiment.holdout) / (1.0 - experiment.holdout)
    total = sum(arm.weight for arm in experiment.arms)
    edge = 0.0
    for arm in experiment.arms:
        edge += arm.weight / total
        if u < edge:
            return arm.name
    return experiment.arms[-1].name


def variant_of(experiment: Experiment, arm: str, default: str) -> str:
    """The policy variant of an arm; the holdout computes what ``default`` would have done."""
    for candidate in experiment.arms:
        if candidate.name == arm:
            return candidate.variant
    return default
