"""Experiment assignment: stable, hash-based, never reshuffled; holdout and arm shares."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from streams.promotion.experiments import HOLDOUT, Arm, Experiment, assign, unit_point, variant_of

AB = Experiment(
    id="promo-1", holdout=0.1, arms=(Arm("learned", 1, "bandit"), Arm("rules", 1, "rules"))
)
KEYS = [f"shop:c:{i}" for i in range(8)]


def test_assignment_is_pinned():
    """A change of the hash would silently move customers between arms: pin a few."""
    assert [assign(AB, k) for k in KEYS] == [
        "learned",
        "learned",
        "learned",
        "holdout",
        "rules",
        "learned",
        "learned",
        "rules",
    ]
    assert unit_point("promo-1", "shop:c:0") == pytest.approx(0.167308, abs=1e-6)


def test_assignment_is_the_same_in_a_fresh_process():
    """Restarts never reshuffle: no per-process salt (unlike Python's hash())."""
    code = (
        "from streams.promotion.experiments import Arm, Experiment, assign;"
        "e = Experiment(id='promo-1', holdout=0.1, arms=(Arm('learned', 1, 'bandit'),"
        " Arm('rules', 1, 'rules')));"
        f"print(','.join(assign(e, k) for k in {KEYS!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().split(",") == [assign(AB, k) for k in KEYS]


def test_shares_follow_holdout_and_weights():
    experiment = Experiment(
        id="x", holdout=0.1, arms=(Arm("a", 3, "bandit"), Arm("b", 1, "static:none"))
    )
    counts = Counter(assign(experiment, f"m:c:{i}") for i in range(40_000))
    assert counts[HOLDOUT] / 40_000 == pytest.approx(0.10, abs=0.006)
    assert counts["a"] / 40_000 == pytest.approx(0.675, abs=0.01)
    assert counts["b"] / 40_000 == pytest.approx(0.225, abs=0.01)


def test_other_experiment_id_reshuffles_and_weights_move_only_near_cut_points():
    other = Experiment(id="promo-2", holdout=0.1, arms=AB.arms)
    keys = [f"m:c:{i}" for i in range(5000)]
    moved = sum(assign(AB, k) != assign(other, k) for k in keys)
    assert moved > 1500  # independent hash: about half move
    heavier = Experiment(
        id="promo-1", holdout=0.1, arms=(Arm("learned", 1.2, "bandit"), AB.arms[1])
    )
    changed = [k for k in keys if assign(AB, k) != assign(heavier, k)]
    assert all(assign(AB, k) == "rules" and assign(heavier, k) == "learned" for k in changed)
    assert 0 < len(changed) < 0.1 * len(keys)


def test_holdout_zero_and_variants():
    experiment = Experiment(id="x", holdout=0.0)
    assert {assign(experiment, f"m:c:{i}") for i in range(500)} == {"learned"}
    assert variant_of(AB, "rules", "bandit") == "rules"
    assert variant_of(AB, HOLDOUT, "bandit") == "bandit"


@pytest.mark.parametrize(
    "config",
    [
        {"holdout": 1.0},
        {"holdout": -0.1},
        {"arms": []},
        {"arms": [{"name": "a", "weight": 0}]},
        {"arms": [{"name": "a"}, {"name": "a"}]},
        {"arms": [{"name": "holdout"}]},
        {"arms": [{"weight": 1}]},
        {"id": ""},
        {"holdout": "lots"},
    ],
)
def test_invalid_experiments(config):
    with pytest.raises(ValueError):
        Experiment.from_config(config)


def test_experiment_from_config():
    experiment = Experiment.from_config(
        {
            "id": "e",
            "holdout": 0.2,
            "arms": [{"name": "a", "weight": 2, "variant": "rules"}, {"name": "b"}],
        }
    )
    assert experiment == Experiment("e", 0.2, (Arm("a", 2.0, "rules"), Arm("b", 1.0, "b")))
