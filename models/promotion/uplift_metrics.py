"""Uplift ranking metrics: Qini and uplift curves, their normalised areas, uplift at k.

The definitions of scikit-uplift 0.5.1 (``sklift.metrics``), with which the Hillstrom figures
were first computed; tests/test_uplift_metrics.py checks these functions against values recorded
from it. Outcomes ``y`` and treatment flags ``t`` are binary and must each hold both 0 and 1.

Rows are ranked by predicted uplift, highest first (`descending_order`). A curve has one point
per distinct score, after the last row of that score, plus the origin ``(0, 0)``; at a point with
``n`` rows ranked so far, of which ``n_t`` treated and ``n_c = n - n_t`` control, with ``r_t``
treated and ``r_c`` control responders among them:

* Qini curve (Radcliffe 2007): ``Q(n) = r_t - r_c * n_t / n_c`` (``r_t`` where ``n_c = 0``).
* uplift curve: ``U(n) = (r_t / n_t - r_c / n_c) * n``, a ratio with a zero denominator
  counting 0.

A normalised area compares the area under a model's curve with the area under the perfect
curve (the best possible ranking of the same rows), both above the random line from the origin
to the curve's last point::

    score = (area(curve) - area(random)) / (area(perfect curve) - area(random))

Areas are trapezoidal. 1 is the perfect ranking, 0 a random one, negative worse than random.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Curve = tuple[np.ndarray, np.ndarray]


def descending_order(uplift: np.ndarray) -> np.ndarray:
    """Row indices by predicted uplift, highest first; tied rows in reverse row order (the
    reversed stable ascending sort that ``sklift`` uses, which decides who makes a top k)."""
    return np.argsort(uplift, kind="mergesort")[::-1]


def _checked(y_true: np.ndarray, uplift: np.ndarray, treatment: np.ndarray) -> list[np.ndarray]:
    """The three inputs as arrays, after checking equal lengths and binary ``y`` and ``t``."""
    arrays = [np.asarray(y_true), np.asarray(uplift), np.asarray(treatment)]
    if len({len(a) for a in arrays}) != 1:
        raise ValueError(f"inputs of different lengths: {[len(a) for a in arrays]}")
    for name, a in (("y_true", arrays[0]), ("treatment", arrays[2])):
        if not np.array_equal(np.unique(a), [0, 1]):
            raise ValueError(f"{name} must hold both 0 and 1 and nothing else, got {np.unique(a)}")
    return arrays


def _cumulative_counts(
    y: np.ndarray, uplift: np.ndarray, t: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``n, n_t, n_c, r_t, r_c`` (see module doc) after the last row of each distinct score."""
    order = descending_order(uplift)
    y, uplift, t = y[order], uplift[order], t[order]
    last_of_score = np.r_[np.where(np.diff(uplift))[0], uplift.size - 1]
    n = last_of_score + 1
    n_t = np.cumsum(t, dtype=np.float64)[last_of_score]
    r_t = np.cumsum(np.where(t == 1, y, 0), dtype=np.float64)[last_of_score]
    r_c = np.cumsum(np.where(t == 0, y, 0), dtype=np.float64)[last_of_score]
    return n, n_t, n - n_t, r_t, r_c


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` elementwise, 0 where ``den`` is 0."""
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den != 0)


def _from_origin(n: np.ndarray, values: np.ndarray) -> Curve:
    return np.r_[0, n], np.r_[0, values]


def qini_curve(y_true: np.ndarray, uplift: np.ndarray, treatment: np.ndarray) -> Curve:
    """Qini curve: ``(n, Q(n))`` at each distinct score, from the origin (module doc)."""
    y, score, t = _checked(y_true, uplift, treatment)
    n, n_t, n_c, r_t, r_c = _cumulative_counts(y, score, t)
    return _from_origin(n, r_t - r_c * _ratio(n_t, n_c))


def uplift_curve(y_true: np.ndarray, uplift: np.ndarray, treatment: np.ndarray) -> Curve:
    """Uplift curve: ``(n, U(n))`` at each distinct score, from the origin (module doc)."""
    y, score, t = _checked(y_true, uplift, treatment)
    n, n_t, n_c, r_t, r_c = _cumulative_counts(y, score, t)
    return _from_origin(n, (_ratio(r_t, n_t) - _ratio(r_c, n_c)) * n)


def perfect_qini_curve(y_true: np.ndarray, treatment: np.ndarray) -> Curve:
    """The Qini curve of the best ranking: treated responders first, control responders last
    (score ``y * t - y * (1 - t)``), so it includes the campaign's negative effects."""
    y, t = np.asarray(y_true), np.asarray(treatment)
    return qini_curve(y, y * t - y * (1 - t), t)


def perfect_uplift_curve(y_true: np.ndarray, treatment: np.ndarray) -> Curve:
    """The uplift curve of the best ranking: score ``2 * 1[y == t] + s``, with ``s = y`` if
    control responders outnumber treated non-responders, else ``s = t``."""
    y, t = np.asarray(y_true), np.asarray(treatment)
    control_responders = np.sum((y == 1) & (t == 0))
    treated_non_responders = np.sum((y == 0) & (t == 1))
    tie_break = y if control_responders > treated_non_responders else t
    return uplift_curve(y, 2 * (y == t) + tie_break, t)


def _area(x: np.ndarray, y: np.ndarray) -> float:
    """Trapezoidal area under the points ``(x, y)``, ``x`` ascending."""
    return float((np.diff(x) * (y[1:] + y[:-1]) / 2.0).sum())


def _normalised_area(curve: Curve, perfect: Curve) -> float:
    """Area above the random line, as a share of the perfect curve's (module doc)."""
    (x, y), (x_best, y_best) = curve, perfect
    random = _area(np.array([0, x_best[-1]]), np.array([0, y_best[-1]]))
    best = _area(x_best, y_best) - random
    if best == 0:
        raise ValueError("the perfect curve has no area above the random line: no score")
    return (_area(x, y) - random) / best


def qini_auc_score(y_true: np.ndarray, uplift: np.ndarray, treatment: np.ndarray) -> float:
    """Qini coefficient: the normalised area under the Qini curve (module doc)."""
    y, score, t = _checked(y_true, uplift, treatment)
    return _normalised_area(qini_curve(y, score, t), perfect_qini_curve(y, t))


def uplift_auc_score(y_true: np.ndarray, uplift: np.ndarray, treatment: np.ndarray) -> float:
    """AUUC: the normalised area under the uplift curve (module doc)."""
    y, score, t = _checked(y_true, uplift, treatment)
    return _normalised_area(uplift_curve(y, score, t), perfect_uplift_curve(y, t))


def _mean(values: np.ndarray) -> float:
    """Mean, NaN for no values."""
    return float(values.mean()) if values.size else float("nan")


def uplift_at_k(
    y_true: np.ndarray,
    uplift: np.ndarray,
    treatment: np.ndarray,
    *,
    strategy: Literal["overall", "by_group"],
    k: float | int,
) -> float:
    """Treated minus control response rate among the top-ranked rows (`descending_order`).

    ``k``: a share in (0, 1) or a number of rows in [1, len - 1]. ``strategy="overall"``: the
    top ``int(k * len)`` rows (or ``k`` rows) of both groups together; ``"by_group"``: the top
    ``int(k * size)`` rows (or ``k`` rows) of each group separately. NaN where a group has no
    rows in its top.
    """
    y, score, t = _checked(y_true, uplift, treatment)
    if strategy not in ("overall", "by_group"):
        raise ValueError(f"strategy must be 'overall' or 'by_group', got {strategy!r}")
    share = isinstance(k, float | np.floating)
    if isinstance(k, bool) or not (share or isinstance(k, int | np.integer)):
        raise ValueError(f"k must be a float share or an int number of rows, got {k!r}")
    if (share and not 0 < k < 1) or (not share and not 0 < k < len(y)):
        raise ValueError(f"k={k} must be in (0, 1) as a share or in [1, {len(y) - 1}] as rows")
    order = descending_order(score)
    y, t = y[order], t[order]
    if strategy == "overall":
        top = int(len(y) * k) if share else k
        return _mean(y[:top][t[:top] == 1]) - _mean(y[:top][t[:top] == 0])
    rates = []
    for group in (1, 0):
        y_group = y[t == group]
        top = int(len(y_group) * k) if share else k
        if top > len(y_group):
            raise ValueError(f"k={k} is more than the {len(y_group)} rows of group t={group}")
        rates.append(_mean(y_group[:top]))
    return rates[0] - rates[1]
