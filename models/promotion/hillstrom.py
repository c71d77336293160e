"""Offline validation of :mod:`models.promotion.uplift` on the Hillstrom e-mail experiment.

MineThatData (Hillstrom, 2008): 64,000 customers randomly split into thirds -- men's e-mail,
women's e-mail, no e-mail (control). For each seed the data are split into train and held-out
test, stratified by arm x outcome. A learner (class transformation, T- or X-learner on LightGBM)
is chosen per seed and target by Qini on a validation part of the train split (for spend, which
has no binary Qini, by incremental spend per e-mail at k), refitted on the whole train split and
scored on test. Every learner's test figures are kept as well, the published anchor (class
transformation) among them.

Metrics per treatment arm against the control, on held-out rows of those two arms:

* Qini coefficient and AUUC: :func:`~models.promotion.uplift_metrics.qini_auc_score` /
  :func:`~models.promotion.uplift_metrics.uplift_auc_score` (normalised by the perfect curve;
  binary outcomes only, so not given for spend).
* uplift@k: :func:`~models.promotion.uplift_metrics.uplift_at_k` with ``strategy="overall"``;
  for spend, the same estimator computed by :func:`incremental_per_email` (uplift_at_k takes
  binary outcomes only).

Policy comparison, in incremental outcome per e-mail sent. A policy e-mails a set S of
customers. On held-out data S is applied to both randomised groups: treated rows in S are the
customers it would e-mail who did get one, control rows in S are customers it would e-mail who
did not. Assignment is independent of S, so

    incremental per e-mail(S) = mean(Y | arm = treatment, in S) - mean(Y | arm = control, in S)

estimates the average effect among the e-mailed, i.e. the extra visits (conversions, spend) per
e-mail. Policies: ``model`` -- S is the top k of held-out rows by predicted uplift (the same
number as uplift@k "overall"); ``everyone`` -- S is all rows (the average treatment effect);
``random`` -- S is a uniformly random k of the rows, averaged over ``random_draws`` draws (its
2.5-97.5 % range is reported as the noise of a k-sized selection). ``capture`` is the share of
the send-to-everyone incremental total that the model gets from k of the e-mails,
``k * model / everyone``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import lightgbm
import matplotlib
import numpy as np
import pandas as pd
import sklearn
from sklearn.model_selection import train_test_split

from models.promotion.uplift import LEARNERS, UpliftModel
from models.promotion.uplift_metrics import (
    descending_order,
    qini_auc_score,
    qini_curve,
    uplift_at_k,
    uplift_auc_score,
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)

ARMS = {"No E-Mail": "control", "Mens E-Mail": "mens", "Womens E-Mail": "womens"}
TARGETS = ("visit", "conversion", "spend")
COLUMNS = (
    "recency",
    "history_segment",
    "history",
    "mens",
    "womens",
    "zip_code",
    "newbie",
    "channel",
    "segment",
    "visit",
    "conversion",
    "spend",
)
NUMERIC = ("recency", "history", "mens", "womens", "newbie")
CATEGORIES = {
    "zip_code": ("Urban", "Surburban", "Rural"),
    "channel": ("Phone", "Web", "Multichannel"),
}
DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "hillstrom.csv.gz"


@dataclass(frozen=True)
class Config:
    """Run settings; the defaults are the reported configuration."""

    data: Path = DEFAULT_DATA
    out: Path = Path("var/uplift-hillstrom")
    seeds: int = 5
    test_size: float = 0.3
    val_size: float = 0.25
    k: float = 0.3
    targets: tuple[str, ...] = TARGETS
    learners: tuple[str, ...] = LEARNERS
    random_draws: int = 200
    save_model: bool = True


def load_hillstrom(path: str | Path) -> pd.DataFrame:
    """Read the Hillstrom CSV (optionally gzipped), check it and add the ``arm`` column."""
    df = pd.read_csv(path)
    missing = set(COLUMNS) - set(df.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    unknown = set(df["segment"]) - set(ARMS)
    if unknown:
        raise ValueError(f"{path}: unknown segments {sorted(unknown)}")
    for col, cats in CATEGORIES.items():
        if not set(df[col]) <= set(cats):
            raise ValueError(f"{path}: unexpected {col} values {sorted(set(df[col]) - set(cats))}")
    return df.assign(arm=df["segment"].map(ARMS))


def features(df: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """Numeric feature matrix: numeric columns plus fixed one-hot columns for categoricals.

    ``history_segment`` is a binning of ``history`` and is left out.
    """
    cols = [df[c].astype(float).to_numpy() for c in NUMERIC]
    names = list(NUMERIC)
    for col, cats in CATEGORIES.items():
        for cat in cats:
            cols.append((df[col] == cat).to_numpy(dtype=float))
            names.append(f"{col}={cat}")
    return np.column_stack(cols), names


def incremental_per_email(y: np.ndarray, score: np.ndarray, treated: np.ndarray, k: float) -> float:
    """Treated minus control mean outcome among the top ``k`` rows by ``score`` (see module doc).

    Ranked as by ``uplift_at_k(strategy="overall")``, so the two agree on binary outcomes.
    """
    order = descending_order(score)[: int(len(y) * k)]
    top_y, top_t = y[order], treated[order]
    return float(top_y[top_t].mean() - top_y[~top_t].mean())


def evaluate_arm(
    y: np.ndarray, score: np.ndarray, treated: np.ndarray, cfg: Config, rng: np.random.Generator
) -> dict[str, float | None]:
    """Ranking metrics and policy comparison for one treatment arm on held-out rows."""
    binary = bool(np.isin(y, (0.0, 1.0)).all())
    t = treated.astype(int)
    model = incremental_per_email(y, score, treated, cfg.k)
    everyone = float(y[treated].mean() - y[~treated].mean())
    random = np.array(
        [
            incremental_per_email(y, rng.random(len(y)), treated, cfg.k)
            for _ in range(cfg.random_draws)
        ]
    )
    return {
        "qini": qini_auc_score(y, score, t) if binary else None,
        "auuc": uplift_auc_score(y, score, t) if binary else None,
        "uplift_at_k": uplift_at_k(y, score, t, strategy="overall", k=cfg.k) if binary else model,
        "policy_model": model,
        "policy_everyone": everyone,
        "policy_random": float(random.mean()),
        "policy_random_lo": float(np.quantile(random, 0.025)),
        "policy_random_hi": float(np.quantile(random, 0.975)),
        "capture": cfg.k * model / everyone if everyone else None,
    }


def best_email_policy(
    y: np.ndarray, arm: np.ndarray, uplift: np.ndarray, arms: list[str], k: float
) -> dict[str, float]:
    """Multi-arm policies on all held-out rows: each customer gets the e-mail of highest
    predicted uplift. Same estimator as the per-arm one, per chosen e-mail ``a``:
    ``sum_a share_a * (mean(Y | got a, chosen a) - mean(Y | control, chosen a))``.

    ``policy_model``: the top ``k`` by best predicted uplift; ``policy_everyone``: every
    customer; ``policy_single``: every customer gets the one e-mail with the larger held-out
    average effect (the best campaign without a model, chosen with hindsight). Groups without
    both treated and control rows (only on tiny data) are left out of the average.
    """
    choice = np.asarray(arms)[uplift.argmax(axis=1)]
    top = np.zeros(len(y), dtype=bool)
    top[descending_order(uplift.max(axis=1))[: int(len(y) * k)]] = True

    def value(sent: np.ndarray, chosen: np.ndarray) -> float:
        total, n = 0.0, 0
        for a in arms:
            s = sent & (chosen == a)
            treated, control = s & (arm == a), s & (arm == "control")
            if treated.any() and control.any():
                total += s.sum() * (y[treated].mean() - y[control].mean())
                n += s.sum()
        return float(total / n)

    everyone = np.ones(len(y), dtype=bool)
    single = max(arms, key=lambda a: value(everyone, np.full(len(y), a)))
    return {
        "policy_model": value(top, choice),
        "policy_everyone": value(everyone, choice),
        "policy_single": value(everyone, np.full(len(y), single)),
    }


def _selection_score(
    model: UpliftModel, x: np.ndarray, arm: np.ndarray, y: np.ndarray, k: float
) -> float:
    """Mean over arms of Qini (binary outcome) or incremental outcome per e-mail at k."""
    uplift = model.predict_uplift(x)
    scores = []
    for j, a in enumerate(model.treatment_arms):
        rows = np.isin(arm, ("control", a))
        treated = arm[rows] == a
        if model.binary:
            scores.append(qini_auc_score(y[rows], uplift[rows, j], treated.astype(int)))
        else:
            scores.append(incremental_per_email(y[rows], uplift[rows, j], treated, k))
    return float(np.mean(scores))


def _learners_for(y: np.ndarray, learners: tuple[str, ...]) -> tuple[str, ...]:
    binary = bool(np.isin(y, (0.0, 1.0)).all())
    return tuple(lr for lr in learners if binary or lr != "class_transformation")


def run_seed(x: np.ndarray, arm: np.ndarray, y: np.ndarray, seed: int, cfg: Config) -> dict:
    """Select, fit and evaluate on one stratified split; returns per-learner test metrics."""
    strata = np.char.add(arm.astype(str), (y > 0).astype(int).astype(str))
    train, test = train_test_split(
        np.arange(len(y)), test_size=cfg.test_size, random_state=seed, stratify=strata
    )
    fit_idx, val_idx = train_test_split(
        train, test_size=cfg.val_size, random_state=seed, stratify=strata[train]
    )
    learners = _learners_for(y, cfg.learners)
    validation = {
        lr: _selection_score(
            UpliftModel(lr, seed=seed).fit(x[fit_idx], arm[fit_idx], y[fit_idx]),
            x[val_idx],
            arm[val_idx],
            y[val_idx],
            cfg.k,
        )
        for lr in learners
    }
    selected = max(validation, key=validation.get)
    rng = np.random.default_rng(seed)
    test_metrics: dict[str, dict] = {}
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for lr in learners:
        model = UpliftModel(lr, seed=seed).fit(x[train], arm[train], y[train])
        uplift = model.predict_uplift(x[test])
        test_metrics[lr] = {}
        for j, a in enumerate(model.treatment_arms):
            rows = np.isin(arm[test], ("control", a))
            ys, score, treated = y[test][rows], uplift[rows, j], arm[test][rows] == a
            test_metrics[lr][a] = evaluate_arm(ys, score, treated, cfg, rng)
            if lr == selected and model.binary:
                n_all, q = qini_curve(ys, score, treated.astype(int))
                curves[a] = (n_all / len(ys), q / len(ys))
        test_metrics[lr]["best_email"] = best_email_policy(
            y[test], arm[test], uplift, model.treatment_arms, cfg.k
        )
    return {
        "seed": seed,
        "validation": validation,
        "selected": selected,
        "test": test_metrics,
        "curves": curves,
    }


def _summary(per_seed: list[dict], arms: list[str]) -> dict:
    """Mean and std over seeds for the selected learner and for each fixed learner."""
    out: dict[str, dict] = {}
    variants = ["selected", *per_seed[0]["test"]]
    for variant in variants:
        out[variant] = {}
        for a in [*arms, "best_email"]:
            rows = [
                s["test"][s["selected"] if variant == "selected" else variant][a] for s in per_seed
            ]
            out[variant][a] = {}
            for key in rows[0]:
                vals = [r[key] for r in rows]
                if any(v is None for v in vals):
                    out[variant][a][key] = None
                    continue
                out[variant][a][key] = {
                    "mean": float(np.mean(vals)),
                    "std": float(np.std(vals)),
                    "values": vals,
                }
            baselines = [
                b for b in ("policy_everyone", "policy_random", "policy_single") if b in rows[0]
            ]
            out[variant][a]["seeds_beating_baselines"] = sum(
                bool(r["policy_model"] > max(r[b] for b in baselines)) for r in rows
            )
    return out


def _plot(curves: dict[str, list[dict]], path: Path, k: float) -> None:
    """Qini curves (selected learner, every seed) per binary target and treatment arm."""
    targets = [t for t in curves if curves[t]]
    arms = sorted(curves[targets[0]][0])
    fig, axes = plt.subplots(
        len(targets), len(arms), figsize=(5.5 * len(arms), 4 * len(targets)), squeeze=False
    )
    for i, target in enumerate(targets):
        for j, a in enumerate(arms):
            ax = axes[i][j]
            for s, seed_curves in enumerate(curves[target]):
                frac, q = seed_curves[a]
                ax.plot(frac, q, lw=1, label=f"model, seed {s}")
                ax.plot(
                    [0, 1],
                    [0, q[-1]],
                    color="grey",
                    lw=0.8,
                    ls="--",
                    label="random" if s == 0 else None,
                )
            ax.axvline(k, color="k", lw=0.6, ls=":")
            ax.set_title(f"{a} e-mail vs control — {target}")
            ax.set_xlabel("fraction of held-out customers targeted")
            ax.set_ylabel("incremental responders per customer (Qini)")
            ax.legend(fontsize=7)
    fig.suptitle("Held-out Qini curves of the validation-selected learner (dotted: k)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(stat: dict | None, digits: int = 4) -> str:
    return "n/a" if stat is None else f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _range(lo: dict, hi: dict) -> str:
    return f"[{lo['mean']:.4f}, {hi['mean']:.4f}]"


def _table(summary: dict, arms: list[str], k: float) -> str:
    """Plain-text tables of the selected learner's ranking metrics and policy figures."""
    pct = f"{k:.0%}"
    lines = [
        f"{'target':<11}{'arm':<8}{'learner':<21}{'Qini':>18}{'AUUC':>18}{'uplift@' + pct:>19}"
    ]
    for target, by_variant in summary.items():
        for variant, by_arm in by_variant.items():
            for a in arms:
                m = by_arm[a]
                lines.append(
                    f"{target:<11}{a:<8}{variant:<21}{_fmt(m['qini']):>18}"
                    f"{_fmt(m['auuc']):>18}{_fmt(m['uplift_at_k']):>19}"
                )
    lines += [
        "",
        f"incremental outcome per e-mail (selected learner; model = top {pct})",
        f"{'target':<11}{'arm':<8}{'model top ' + pct:>20}{'everyone':>20}"
        f"{'random ' + pct:>20}{'random 95% range':>20}{'capture':>14}{'seeds won':>11}",
    ]
    for target, by_variant in summary.items():
        for a in arms:
            m = by_variant["selected"][a]
            lines.append(
                f"{target:<11}{a:<8}{_fmt(m['policy_model']):>20}"
                f"{_fmt(m['policy_everyone']):>20}{_fmt(m['policy_random']):>20}"
                f"{_range(m['policy_random_lo'], m['policy_random_hi']):>20}"
                f"{_fmt(m['capture'], 2):>14}"
                f"{m['seeds_beating_baselines']:>8}/{len(m['policy_model']['values'])}"
            )
    lines += [
        "",
        "best e-mail per customer (selected learner), incremental outcome per e-mail",
        f"{'target':<11}{'model top ' + pct:>20}{'model everyone':>20}"
        f"{'best single e-mail':>20}{'seeds won':>11}",
    ]
    for target, by_variant in summary.items():
        m = by_variant["selected"]["best_email"]
        lines.append(
            f"{target:<11}{_fmt(m['policy_model']):>20}{_fmt(m['policy_everyone']):>20}"
            f"{_fmt(m['policy_single']):>20}"
            f"{m['seeds_beating_baselines']:>8}/{len(m['policy_model']['values'])}"
        )
    return "\n".join(lines)


def run(cfg: Config) -> dict:
    """Validate every target over all seeds; write JSON, Qini PNG and (optionally) a model."""
    df = load_hillstrom(cfg.data)
    x, names = features(df)
    arm = df["arm"].to_numpy().astype(str)
    arms = sorted(set(arm) - {"control"})
    cfg.out.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "data_sha256": hashlib.sha256(Path(cfg.data).read_bytes()).hexdigest(),
        "versions": {"lightgbm": lightgbm.__version__, "scikit-learn": sklearn.__version__},
        "features": names,
        "arms": arms,
        "per_seed": {},
        "summary": {},
        "selected_counts": {},
    }
    curves: dict[str, list[dict]] = {}
    for target in cfg.targets:
        y = df[target].to_numpy(dtype=float)
        per_seed = [run_seed(x, arm, y, seed, cfg) for seed in range(cfg.seeds)]
        curves[target] = [s.pop("curves") for s in per_seed if s["curves"]]
        results["per_seed"][target] = per_seed
        results["summary"][target] = _summary(per_seed, arms)
        results["selected_counts"][target] = dict(Counter(s["selected"] for s in per_seed))
    if any(curves.values()):
        _plot(curves, cfg.out / "qini.png", cfg.k)
        results["qini_png"] = str(cfg.out / "qini.png")
    if cfg.save_model and "visit" in cfg.targets:
        counts = results["selected_counts"]["visit"]
        best = max(counts, key=counts.get)
        y = df["visit"].to_numpy(dtype=float)
        model = UpliftModel(best, seed=0).fit(x, arm, y, feature_names=names)
        model.save(cfg.out / "uplift_visit.joblib")
        results["model"] = {
            "path": str(cfg.out / "uplift_visit.joblib"),
            "learner": best,
            "data_sha256": model.data_sha256,
        }
    return results


def main(argv: list[str]) -> int:
    """CLI: ``nextbest uplift-validate [--data PATH] [--out DIR] [--seeds N] ...``."""
    p = argparse.ArgumentParser(prog="nextbest uplift-validate", description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=Config.data, help="hillstrom.csv(.gz)")
    p.add_argument("--out", type=Path, default=Config.out, help="output directory")
    p.add_argument("--seeds", type=int, default=Config.seeds)
    p.add_argument("--k", type=float, default=Config.k, help="targeted fraction")
    p.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    p.add_argument("--learners", nargs="+", choices=LEARNERS, default=list(LEARNERS))
    p.add_argument("--no-save-model", action="store_true")
    args = p.parse_args(argv)
    cfg = Config(
        data=args.data,
        out=args.out,
        seeds=args.seeds,
        k=args.k,
        targets=tuple(args.targets),
        learners=tuple(args.learners),
        save_model=not args.no_save_model,
    )
    results = run(cfg)
    results["table"] = _table(results["summary"], results["arms"], cfg.k)
    (cfg.out / "results.json").write_text(json.dumps(results, indent=2))
    print(results["table"])
    print(f"\nselected learner per seed: {results['selected_counts']}")
    print(
        f"wrote {cfg.out / 'results.json'}"
        + (f", {results['qini_png']}" if "qini_png" in results else "")
    )
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
