"""Uplift model: recovery of a known effect, shapes, persistence (synthetic data only)."""

import numpy as np
import pytest

from models.promotion.uplift import LEARNERS, GBMParams, UpliftModel

FAST = GBMParams(n_estimators=80, learning_rate=0.1, min_child_samples=40)


def synthetic(n: int = 6000, seed: int = 0, binary: bool = True):
    """Three arms. 'promo' lifts the response by 0.3 only where x0 > 0.5; 'nag' lowers it
    by 0.1 everywhere; x1 shifts the base rate (prognostic, not an effect modifier)."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, 3))
    arm = rng.choice(np.array(["control", "promo", "nag"]), size=n)
    effect = np.where(arm == "promo", 0.3 * (x[:, 0] > 0.5), 0.0) - 0.1 * (arm == "nag")
    p = 0.2 + 0.3 * x[:, 1] + effect
    y = (rng.random(n) < p).astype(float)
    if not binary:
        y = y * rng.gamma(2.0, 50.0, n)
    return x, arm, y


@pytest.mark.parametrize("learner", LEARNERS)
def test_recovers_sign_and_ordering_of_known_effect(learner):
    x, arm, y = synthetic()
    model = UpliftModel(learner, params=FAST).fit(x, arm, y)
    assert model.treatment_arms == ["nag", "promo"]
    grid = np.random.default_rng(1).random((2000, 3))
    uplift = model.predict_uplift(grid)
    promo, nag = uplift[:, 1], uplift[:, 0]
    hi = grid[:, 0] > 0.5
    assert promo[hi].mean() - promo[~hi].mean() > 0.15
    assert abs(promo[~hi].mean()) < 0.1
    assert np.corrcoef(promo, hi)[0, 1] > 0.6
    assert nag.mean() < -0.03


@pytest.mark.parametrize("learner", ["t_learner", "x_learner"])
def test_continuous_outcome_recovers_effect(learner):
    x, arm, y = synthetic(binary=False)
    model = UpliftModel(learner, params=FAST).fit(x, arm, y)
    uplift = model.predict_uplift(x)[:, 1]
    hi = x[:, 0] > 0.5
    assert uplift[hi].mean() - uplift[~hi].mean() > 10.0  # true: 0.3 * 100
    assert model.predict_response(x).max() > 1.0  # not clipped like a probability


def test_class_transformation_rejects_continuous_outcome():
    x, arm, y = synthetic(n=500, binary=False)
    with pytest.raises(ValueError, match="binary"):
        UpliftModel("class_transformation", params=FAST).fit(x, arm, y)


def test_class_transformation_handles_unequal_arm_sizes():
    x, arm, y = synthetic(n=9000)
    keep = (arm != "promo") | (np.random.default_rng(2).random(len(arm)) < 0.3)
    model = UpliftModel("class_transformation", params=FAST).fit(x[keep], arm[keep], y[keep])
    uplift = model.predict_uplift(x)[:, 1]
    hi = x[:, 0] > 0.5
    assert 0.15 < uplift[hi].mean() < 0.45
    assert abs(uplift[~hi].mean()) < 0.1


def test_multi_arm_prediction_shapes_and_consistency():
    x, arm, y = synthetic(n=1500)
    model = UpliftModel("t_learner", params=FAST).fit(x, arm, y, feature_names=["a", "b", "c"])
    assert model.arms == ["control", "nag", "promo"]
    assert model.feature_names == ["a", "b", "c"]
    batch = x[:37]
    uplift, response = model.predict_uplift(batch), model.predict_response(batch)
    assert uplift.shape == (37, 2)
    assert response.shape == (37, 3)
    assert ((response >= 0) & (response <= 1)).all()
    inside = (response[:, 1:] > 0) & (response[:, 1:] < 1)
    np.testing.assert_allclose((response[:, 1:] - response[:, [0]])[inside], uplift[inside])


def test_input_validation():
    x, arm, y = synthetic(n=300)
    with pytest.raises(ValueError, match="learner"):
        UpliftModel("r_learner")
    with pytest.raises(ValueError, match="control"):
        UpliftModel(params=FAST).fit(x, np.where(arm == "control", "promo", arm), y)
    with pytest.raises(ValueError, match="length"):
        UpliftModel(params=FAST).fit(x, arm[:-1], y)
    with pytest.raises(RuntimeError):
        UpliftModel().predict_uplift(x)


def test_save_load_round_trip(tmp_path):
    x, arm, y = synthetic(n=1500)
    model = UpliftModel("x_learner", params=FAST, seed=3).fit(x, arm, y)
    path = tmp_path / "uplift.joblib"
    model.save(path)
    loaded = UpliftModel.load(path)
    assert loaded.arms == model.arms
    assert loaded.learner == "x_learner"
    assert len(loaded.data_sha256) == 64
    assert loaded.data_sha256 == model.data_sha256
    np.testing.assert_array_equal(loaded.predict_uplift(x), model.predict_uplift(x))
    np.testing.assert_array_equal(loaded.predict_response(x), model.predict_response(x))
    other = UpliftModel("x_learner", params=FAST, seed=3).fit(x, arm, 1.0 - y)
    assert other.data_sha256 != model.data_sha256


def test_load_refuses_other_format_version(tmp_path):
    import joblib

    path = tmp_path / "old.joblib"
    joblib.dump({"format_version": 0, "data_sha256": "", "model": UpliftModel()}, path)
    with pytest.raises(ValueError, match="format"):
        UpliftModel.load(path)
