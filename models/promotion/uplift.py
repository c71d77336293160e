"""Multi-arm uplift (treatment-effect) model on LightGBM.

One arm is the control; every other arm is a treatment. For a batch of numeric feature rows the
model returns, per treatment arm, the estimated uplift ``E[Y | x, arm] - E[Y | x, control]`` and,
per arm, the expected response ``E[Y | x, arm]``. It is validated offline on the Hillstrom
experiment (`models.promotion.hillstrom`, ``nextbest uplift-validate``); the streaming policy learns
its per-offer purchase model online instead (`streams.promotion.bandit.LinearThompson`, Thompson
sampling with logged propensities), as exploration needs a posterior to sample from.

Learners (each fitted one treatment arm against the control):

* ``class_transformation`` -- Jaskowski & Jaroszewicz (2012): with ``Z = 1[Y == T]`` and
  ``P(T=1) = 1/2``, ``uplift(x) = 2 P(Z=1 | x) - 1``. Arms of unequal size are reweighted to
  equal total weight, which makes the identity hold for any assignment share. Binary outcomes only.
* ``t_learner`` -- one outcome model per arm; uplift = difference of predictions.
* ``x_learner`` -- Kuenzel et al. (2019): the T-learner's models impute individual effects,
  which are regressed per arm and blended with the (constant, randomised) assignment share.

Every learner also fits a control outcome model; the response of a treatment arm is the control
response plus the uplift (clipped to [0, 1] for binary outcomes), so both outputs agree.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import joblib
import lightgbm
import numpy as np
from lightgbm import LGBMClassifier, LGBMRegressor

FORMAT_VERSION = 1
LEARNERS = ("class_transformation", "t_learner", "x_learner")


@dataclass(frozen=True)
class GBMParams:
    """LightGBM settings shared by every base model (heavily regularised: effects are small)."""

    n_estimators: int = 200
    learning_rate: float = 0.03
    num_leaves: int = 15
    min_child_samples: int = 200
    subsample: float = 0.8
    subsample_freq: int = 1
    colsample_bytree: float = 0.8
    reg_lambda: float = 1.0
    n_jobs: int = 1


def data_sha256(x: np.ndarray, arm: np.ndarray, y: np.ndarray) -> str:
    """Hash of a training set (features, arm labels, outcomes), stored with the model."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(x, dtype=np.float64).tobytes())
    h.update("\x1f".join(map(str, arm)).encode())
    h.update(np.ascontiguousarray(y, dtype=np.float64).tobytes())
    return h.hexdigest()


class UpliftModel:
    """Uplift model over arms ``[control, *treatments]`` with one learner per treatment arm."""

    def __init__(
        self,
        learner: str = "class_transformation",
        control: str = "control",
        params: GBMParams | None = None,
        seed: int = 0,
    ) -> None:
        if learner not in LEARNERS:
            raise ValueError(f"learner must be one of {LEARNERS}, got {learner!r}")
        self.learner = learner
        self.control = control
        self.params = params or GBMParams()
        self.seed = seed
        self.arms: list[str] = []
        self.feature_names: list[str] = []
        self.binary = True
        self.data_sha256 = ""
        self._control_model: LGBMClassifier | LGBMRegressor | None = None
        self._effect_models: dict[str, list] = {}
        self._share: dict[str, float] = {}

    @property
    def treatment_arms(self) -> list[str]:
        """Treatment arms in the column order of :meth:`predict_uplift`."""
        return self.arms[1:]

    def _gbm(self, classifier: bool) -> LGBMClassifier | LGBMRegressor:
        cls = LGBMClassifier if classifier else LGBMRegressor
        return cls(**asdict(self.params), random_state=self.seed, verbose=-1)

    def _outcome(self, model: LGBMClassifier | LGBMRegressor, x: np.ndarray) -> np.ndarray:
        return model.predict_proba(x)[:, 1] if self.binary else model.predict(x)

    def fit(
        self,
        x: np.ndarray,
        arm: np.ndarray,
        y: np.ndarray,
        feature_names: list[str] | None = None,
    ) -> UpliftModel:
        """Fit on features ``x`` (n, d), arm labels ``arm`` (n,) and outcomes ``y`` (n,)."""
        x = np.asarray(x, dtype=np.float64)
        arm = np.asarray(arm).astype(str)
        y = np.asarray(y, dtype=np.float64)
        if not len(x) == len(arm) == len(y):
            raise ValueError("x, arm and y must have the same length")
        treatments = sorted(set(arm) - {self.control})
        if self.control not in set(arm) or not treatments:
            raise ValueError(f"need the control arm {self.control!r} and at least one treatment")
        self.arms = [self.control, *treatments]
        self.feature_names = list(feature_names or [f"x{i}" for i in range(x.shape[1])])
        self.binary = bool(np.isin(y, (0.0, 1.0)).all())
        if self.learner == "class_transformation" and not self.binary:
            raise ValueError("class_transformation needs a binary outcome")
        self.data_sha256 = data_sha256(x, arm, y)

        ctrl = arm == self.control
        self._control_model = self._gbm(self.binary).fit(x[ctrl], y[ctrl])
        self._effect_models = {}
        for a in treatments:
            mask = ctrl | (arm == a)
            xs, ys, t = x[mask], y[mask], arm[mask] == a
            share = float(t.mean())
            self._share[a] = share
            if self.learner == "class_transformation":
                z = (ys == t).astype(int)
                w = np.where(t, 0.5 / share, 0.5 / (1.0 - share))
                self._effect_models[a] = [self._gbm(True).fit(xs, z, sample_weight=w)]
            elif self.learner == "t_learner":
                self._effect_models[a] = [self._gbm(self.binary).fit(xs[t], ys[t])]
            else:
                mu1 = self._gbm(self.binary).fit(xs[t], ys[t])
                d1 = ys[t] - self._outcome(self._control_model, xs[t])
                d0 = self._outcome(mu1, xs[~t]) - ys[~t]
                tau1 = self._gbm(False).fit(xs[t], d1)
                tau0 = self._gbm(False).fit(xs[~t], d0)
                self._effect_models[a] = [tau0, tau1]
        return self

    def predict_uplift(self, x: np.ndarray) -> np.ndarray:
        """Uplift per treatment arm, shape (n, len(treatment_arms))."""
        if self._control_model is None:
            raise RuntimeError("model is not fitted")
        x = np.asarray(x, dtype=np.float64)
        cols = []
        for a in self.treatment_arms:
            models = self._effect_models[a]
            if self.learner == "class_transformation":
                cols.append(2.0 * models[0].predict_proba(x)[:, 1] - 1.0)
            elif self.learner == "t_learner":
                cols.append(self._outcome(models[0], x) - self._outcome(self._control_model, x))
            else:
                g = self._share[a]
                cols.append(g * models[0].predict(x) + (1.0 - g) * models[1].predict(x))
        return np.column_stack(cols)

    def predict_response(self, x: np.ndarray) -> np.ndarray:
        """Expected outcome per arm (probability for binary outcomes), shape (n, len(arms))."""
        uplift = self.predict_uplift(x)
        base = self._outcome(self._control_model, np.asarray(x, dtype=np.float64))
        response = np.column_stack([base, base[:, None] + uplift])
        return np.clip(response, 0.0, 1.0) if self.binary else response

    def save(self, path: str | Path) -> None:
        """Write the model with its format version, data hash and LightGBM version."""
        payload = {
            "format_version": FORMAT_VERSION,
            "data_sha256": self.data_sha256,
            "lightgbm": lightgbm.__version__,
            "model": self,
        }
        joblib.dump(payload, path)

    @classmethod
    def load(cls, path: str | Path) -> UpliftModel:
        """Read a model written by :meth:`save`; refuses other format versions."""
        payload = joblib.load(path)
        if payload.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported uplift model format {payload.get('format_version')}")
        model = payload["model"]
        if not isinstance(model, cls) or model.data_sha256 != payload["data_sha256"]:
            raise ValueError(f"{path} does not hold a consistent {cls.__name__}")
        return model
