"""models.promotion.uplift_metrics against values recorded from scikit-uplift 0.5.1.

tests/data/uplift_metrics_sklift.json holds 66 datasets and what ``sklift.metrics`` returned on
each (its ``source`` names the versions): 60 random ones with 2 to 40 rows, treated and
responder shares from 5 % to 95 %, and scores with heavy ties, some ties, no ties, all tied,
negative, or informative; a row-less control group and an outcome without responders (sklift
raises); two rows whose perfect uplift curve has no area (sklift divides by zero); 3,000 rows
with ties (scores only). The library itself is no longer a dependency: it pinned scikit-learn
below 1.10.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from models.promotion import uplift_metrics as um

RECORDED = json.loads((Path(__file__).parent / "data" / "uplift_metrics_sklift.json").read_text())
DATASETS = RECORDED["datasets"]
CURVES = ("qini_curve", "uplift_curve", "perfect_qini_curve", "perfect_uplift_curve")
TOLERANCE = 1e-9


def arrays(record: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = np.array([int(c) for c in record["y"]])
    t = np.array([int(c) for c in record["t"]])
    return y, np.array(record["score"], dtype=float), t


def curve(name: str, y: np.ndarray, score: np.ndarray, t: np.ndarray) -> um.Curve:
    fn = getattr(um, name)
    return fn(y, t) if name.startswith("perfect") else fn(y, score, t)


def assert_recorded(expected: float | str | None, compute) -> None:
    """``"error"``: raises ValueError; None: NaN; a number: equal within TOLERANCE."""
    if expected == "error":
        with pytest.raises(ValueError):
            compute()
        return
    value = compute()
    assert isinstance(value, float)
    if expected is None:
        assert math.isnan(value)
    else:
        assert value == pytest.approx(expected, rel=0, abs=TOLERANCE)


def test_the_recording_covers_the_cases_that_matter():
    assert len(DATASETS) >= 60 and "scikit-uplift 0.5.1" in RECORDED["source"]
    scores = [d["expected"]["uplift_auc_score"] for d in DATASETS]
    at_k = [v for d in DATASETS for *_, v in d["expected"]["uplift_at_k"]]
    assert scores.count("error") >= 3 and None in at_k and "error" in at_k
    assert any(len(set(d["score"])) == 1 for d in DATASETS)  # every row tied
    assert max(len(d["y"]) for d in DATASETS) >= 3000


@pytest.mark.parametrize("index", range(len(DATASETS)))
def test_curves_match_sklift(index):
    record = DATASETS[index]
    y, score, t = arrays(record)
    for name in CURVES:
        expected = record["expected"].get(name)
        if expected is None:  # not recorded for the large dataset
            continue
        if expected == "error":
            with pytest.raises(ValueError):
                curve(name, y, score, t)
            continue
        x, values = curve(name, y, score, t)
        assert x.tolist() == expected[0], name
        np.testing.assert_allclose(values, expected[1], rtol=0, atol=TOLERANCE, err_msg=name)


@pytest.mark.parametrize("index", range(len(DATASETS)))
def test_scores_match_sklift(index):
    record = DATASETS[index]
    y, score, t = arrays(record)
    expected = record["expected"]
    assert_recorded(expected["qini_auc_score"], lambda: um.qini_auc_score(y, score, t))
    assert_recorded(expected["uplift_auc_score"], lambda: um.uplift_auc_score(y, score, t))
    for strategy, k, value in expected["uplift_at_k"]:
        assert_recorded(value, lambda s=strategy, k=k: um.uplift_at_k(y, score, t, strategy=s, k=k))


def test_descending_order_puts_later_ties_first():
    assert um.descending_order(np.array([0.5, 0.9, 0.5, 0.1, 0.5])).tolist() == [1, 4, 2, 0, 3]


def test_perfect_ranking_scores_one_and_reversed_less_than_zero():
    rng = np.random.default_rng(3)
    t = rng.integers(0, 2, 500)
    y = (rng.random(500) < 0.2 + 0.3 * t).astype(int)
    best = y * t - y * (1 - t)
    assert um.qini_auc_score(y, best, t) == pytest.approx(1.0)
    assert um.qini_auc_score(y, -best, t) < 0


def test_qini_curve_by_hand():
    # ranked: (y=1, t=1), then a tie of (y=0, t=0) and (y=1, t=0), then (y=1, t=1)
    y, score, t = np.array([1, 0, 1, 1]), np.array([3, 2, 2, 1]), np.array([1, 0, 0, 1])
    x, q = um.qini_curve(y, score, t)
    assert x.tolist() == [0, 1, 3, 4]
    assert q.tolist() == [0, 1, 1 - 1 * 1 / 2, 2 - 1 * 2 / 2]


@pytest.mark.parametrize(
    ("y", "t", "message"),
    [
        ([0, 0, 0, 0], [0, 1, 0, 1], "y_true must hold both 0 and 1"),
        ([0, 1, 0, 1], [1, 1, 1, 1], "treatment must hold both 0 and 1"),
        ([0, 1, 2, 1], [0, 1, 0, 1], "y_true must hold both 0 and 1"),
        ([0, 1, 0], [0, 1, 0, 1], "different lengths"),
    ],
)
def test_invalid_inputs_are_refused(y, t, message):
    with pytest.raises(ValueError, match=message):
        um.qini_auc_score(np.array(y), np.arange(4.0), np.array(t))


@pytest.mark.parametrize(
    ("strategy", "k", "message"),
    [
        ("top", 0.3, "strategy must be"),
        ("overall", 1.0, "k=1.0 must be in"),
        ("overall", 0, "k=0 must be in"),
        ("overall", 6, "k=6 must be in"),
        ("overall", True, "k must be a float share or an int"),
        ("by_group", 4, "more than the 3 rows of group t=1"),
    ],
)
def test_uplift_at_k_refuses_bad_k_and_strategy(strategy, k, message):
    y, t = np.array([0, 1, 0, 1, 1, 0]), np.array([1, 1, 1, 0, 0, 0])
    with pytest.raises(ValueError, match=message):
        um.uplift_at_k(y, np.arange(6.0), t, strategy=strategy, k=k)
