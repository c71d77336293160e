"""Offline evaluation of the churn-risk score (``nextbest evaluate-churn``): docs/churn.md.

Protocol, on an Online Retail file (orders with their totals; cancellations left out):

* Two cutoffs: ``--fit-cutoff`` (default 2011-06-01) and ``--cutoff`` (default 2011-09-01), each
  followed by a ``--horizon-days`` window (default 90) that ends before the next cutoff starts
  and before the data does (2011-12-09).
* At a cutoff, the customers scored are those with an order in the ``--active-days`` (default
  180) before it; features are computed from their orders before the cutoff, as of the cutoff
  (`streams.state.churn.features`: the same function the worker runs); the label is 1 when the
  customer places no order in the horizon.
* The prior interval (median of repeat customers' mean gaps) and the logistic weights of the
  order-based features are fitted at the fit cutoff only (scikit-learn, L2, C=1); the weights of
  features that grow with time are kept >= 0 (so the score never falls while a customer stays
  silent). The figures are reported at the later cutoff, for the shipped score
  (`streams.state.churn.score`, whose constants are the fit's, rounded) and for a recency-only
  baseline (days since the last order).
* Metrics: ROC AUC and the share of churners among the 20% highest-scored customers (of all
  churners, how many a campaign to the top fifth reaches), with 95% bootstrap intervals over
  customers (``--bootstrap`` resamples, paired: the difference score - recency gets its own).
* The retention journey's trigger (`streams.outreach.retention.triggered`) at the reported
  cutoff, per band of orders: the share of customers it has reached by then (the trigger holds:
  the step's timer has fired, as the score never falls while a customer stays silent), its
  precision (the share of those with no order in the horizon) and recall (the share of the
  band's churners reached), with the risk threshold alone (``--threshold``) and with the
  overdue trigger too (``--overdue-intervals``).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from models.next_purchase.loading import epoch_seconds, load_transactions
from streams.merchants.options import Retention
from streams.outreach import retention
from streams.state import churn

#: the features fitted on order data (the rest have no signal in it: prior weights)
FITTED = ("overdue", "recency", "orders", "gap_trend", "spend_trend")
#: features whose value grows (or, for engagement, falls) with time alone: sign-constrained
NON_NEGATIVE = ("overdue", "recency")
TOP_SHARE = 0.2
#: (fewest, most orders, name): the order bands the retention trigger is reported by
ORDER_BANDS = ((1, 1, "1"), (2, 2, "2"), (3, 4, "3-4"), (5, 9, "5-9"), (10, None, "10+"))

Invoice = tuple[float, float]  # (time, total)


@dataclass(frozen=True)
class Cohort:
    customers: list[str]
    histories: list[churn.History]
    labels: np.ndarray  # 1: no order within the horizon


def invoices_of(path: str | Path) -> dict[str, list[Invoice]]:
    """Per customer, time-ordered (time, total) of each invoice."""
    lines, _ = load_transactions(path)
    grouped = lines.groupby(["customer", "invoice"], sort=False).agg(
        seconds=("seconds", "min"), total=("spend", "sum")
    )
    invoices: dict[str, list[Invoice]] = {}
    for (customer, _), row in zip(grouped.index, grouped.itertuples(index=False), strict=True):
        invoices.setdefault(str(customer), []).append((float(row.seconds), float(row.total)))
    for seq in invoices.values():
        seq.sort()
    return invoices


def history(before: list[Invoice]) -> churn.History:
    """What the worker's state would hold after these orders (no visits, no messages)."""
    recent = [total for _, total in before[-2:]]
    return churn.History(
        orders=len(before),
        first=before[0][0],
        last=before[-1][0],
        last_gap=before[-1][0] - before[-2][0] if len(before) >= 2 else None,
        recent_spend=sum(recent) / len(recent),
        average_spend=sum(total for _, total in before) / len(before),
    )


def cohort(
    invoices: dict[str, list[Invoice]], cutoff: float, horizon_days: float, active_days: float
) -> Cohort:
    end = cutoff + horizon_days * churn.DAY_S
    start = cutoff - active_days * churn.DAY_S
    customers, histories, labels = [], [], []
    for customer in sorted(invoices):
        seq = invoices[customer]
        before = [order for order in seq if order[0] < cutoff]
        if not before or before[-1][0] < start:
            continue
        customers.append(customer)
        histories.append(history(before))
        labels.append(0 if any(cutoff <= t < end for t, _ in seq) else 1)
    return Cohort(customers, histories, np.array(labels, dtype=np.int8))


def prior_interval_days(histories: list[churn.History]) -> float:
    gaps = [(h.last - h.first) / churn.DAY_S / (h.orders - 1) for h in histories if h.orders > 1]
    return float(np.median(gaps)) if gaps else churn.PRIOR_INTERVAL_DAYS


def feature_matrix(histories: list[churn.History], now: float, prior_days: float) -> np.ndarray:
    return np.array([churn.features(h, now, prior_days) for h in histories])


def fit(matrix: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, float]]:
    """Intercept and weights of the order-based features (time-growing ones kept >= 0)."""
    from sklearn.linear_model import LogisticRegression

    names = list(churn.feature_names())
    columns = [names.index(name) for name in FITTED]
    free = list(FITTED)
    while True:
        model = LogisticRegression(C=1.0, max_iter=1000)
        model.fit(matrix[:, [columns[FITTED.index(n)] for n in free]], labels)
        weights = dict(zip(free, model.coef_[0].tolist(), strict=True))
        negative = [n for n in NON_NEGATIVE if weights.get(n, 0.0) < 0]
        if not negative:
            break
        free.remove(negative[0])  # its weight is 0: refit without it
    return float(model.intercept_[0]), {name: weights.get(name, 0.0) for name in FITTED}


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC by ranks (ties share their mean rank)."""
    from scipy.stats import rankdata

    positives = labels.sum()
    negatives = len(labels) - positives
    ranks = rankdata(scores)
    return float(
        (ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives)
    )


def top_share(scores: np.ndarray, labels: np.ndarray, share: float = TOP_SHARE) -> float:
    """Of all churners, the share among the ``share`` highest-scored customers (ties broken by
    position, at random after the bootstrap's shuffle)."""
    count = max(int(round(share * len(scores))), 1)
    top = np.argsort(-scores, kind="stable")[:count]
    return float(labels[top].sum() / max(labels.sum(), 1))


def bootstrap(
    methods: dict[str, np.ndarray], labels: np.ndarray, resamples: int, seed: int
) -> dict[str, dict[str, list[float]]]:
    """95% intervals of each metric for each method and for the first minus the second."""
    rng = np.random.default_rng(seed)
    names = list(methods)
    samples: dict[str, dict[str, list[float]]] = {}
    n = len(labels)
    for _ in range(resamples):
        pick = rng.integers(0, n, n)
        values = {}
        for name, scores in methods.items():
            values[name] = {
                "auc": auc(scores[pick], labels[pick]),
                "top20": top_share(scores[pick], labels[pick]),
            }
        values[f"{names[0]} - {names[1]}"] = {
            m: values[names[0]][m] - values[names[1]][m] for m in ("auc", "top20")
        }
        for name, metric_values in values.items():
            for metric, value in metric_values.items():
                samples.setdefault(name, {}).setdefault(metric, []).append(value)
    return {
        name: {m: np.percentile(v, [2.5, 97.5]).round(4).tolist() for m, v in metrics.items()}
        for name, metrics in samples.items()
    }


def trigger_reach(test: Cohort, cutoff: float, triggers: dict[str, Retention]) -> dict[str, dict]:
    """Per order band (and ``all``): customers, churners, and for each trigger the share
    reached by the cutoff, the precision and the recall (None: nobody reached)."""
    reached = {
        name: np.array([retention.triggered(h, config, cutoff) for h in test.histories])
        for name, config in triggers.items()
    }
    orders = np.array([h.orders for h in test.histories])
    bands = {}
    for low, high, band_name in (*ORDER_BANDS, (1, None, "all")):
        members = (orders >= low) & (orders <= (high if high is not None else orders.max()))
        labels = test.labels[members].astype(bool)
        row: dict = {"customers": int(members.sum()), "churners": int(labels.sum())}
        for name, hits in reached.items():
            picked = hits[members]
            row[name] = {
                "reached": round(float(picked.mean()), 4) if picked.size else None,
                "precision": round(float(labels[picked].mean()), 4) if picked.any() else None,
                "recall": round(float(picked[labels].mean()), 4) if labels.any() else None,
            }
        bands[band_name] = row
    return bands


def evaluate(args: argparse.Namespace) -> dict:
    invoices = invoices_of(args.data)
    fit_cutoff, cutoff = epoch_seconds(args.fit_cutoff), epoch_seconds(args.cutoff)
    if fit_cutoff + args.horizon_days * churn.DAY_S > cutoff:
        raise ValueError("the fit cutoff's horizon must end before the reported cutoff")
    train = cohort(invoices, fit_cutoff, args.horizon_days, args.active_days)
    prior = prior_interval_days(train.histories)
    intercept, weights = fit(feature_matrix(train.histories, fit_cutoff, prior), train.labels)
    test = cohort(invoices, cutoff, args.horizon_days, args.active_days)
    shipped = np.array([churn.score(h, cutoff) for h in test.histories])
    recency = np.array([(cutoff - h.last) / churn.DAY_S for h in test.histories])
    methods = {"churn score": shipped, "recency only": recency}
    figures = {
        name: {"auc": round(auc(s, test.labels), 4), "top20": round(top_share(s, test.labels), 4)}
        for name, s in methods.items()
    }
    names = list(methods)
    figures[f"{names[0]} - {names[1]}"] = {
        m: round(figures[names[0]][m] - figures[names[1]][m], 4) for m in ("auc", "top20")
    }
    intervals = bootstrap(methods, test.labels, args.bootstrap, args.seed)
    threshold_only = Retention(threshold=args.threshold, overdue_intervals=None)
    triggers = {"threshold": threshold_only}
    if args.overdue_intervals is not None:
        triggers["threshold or overdue"] = Retention(
            threshold=args.threshold, overdue_intervals=args.overdue_intervals
        )
    return {
        "data": str(args.data),
        "fit_cutoff": args.fit_cutoff,
        "cutoff": args.cutoff,
        "horizon_days": args.horizon_days,
        "active_days": args.active_days,
        "fit": {
            "customers": len(train.customers),
            "churn_rate": round(float(train.labels.mean()), 4),
            "prior_interval_days": round(prior, 2),
            "intercept": round(intercept, 3),
            "weights": {k: round(v, 3) for k, v in weights.items()},
        },
        "shipped": {
            "prior_interval_days": churn.PRIOR_INTERVAL_DAYS,
            "intercept": churn.INTERCEPT,
            "weights": dict(churn.WEIGHTS),
        },
        "report": {
            "customers": len(test.customers),
            "churners": int(test.labels.sum()),
            "churn_rate": round(float(test.labels.mean()), 4),
            "figures": figures,
            "intervals": intervals,
            "bands": {
                name: {
                    "customers": int(sum(churn.band(s) == name for s in shipped)),
                    "churn_rate": round(
                        float(test.labels[[churn.band(s) == name for s in shipped]].mean()), 4
                    )
                    if any(churn.band(s) == name for s in shipped)
                    else None,
                }
                for _, name in churn.BANDS
            },
        },
        "retention_trigger": {
            "threshold": args.threshold,
            "overdue_intervals": args.overdue_intervals,
            "order_bands": trigger_reach(test, cutoff, triggers),
        },
    }


def render(result: dict) -> str:
    fit_part, report = result["fit"], result["report"]
    lines = [
        f"fit at {result['fit_cutoff']}: {fit_part['customers']} customers active in the "
        f"{result['active_days']} days before, {fit_part['churn_rate']:.1%} with no order in "
        f"{result['horizon_days']} days; prior interval {fit_part['prior_interval_days']} days; "
        f"intercept {fit_part['intercept']}, weights {fit_part['weights']}",
        f"reported at {result['cutoff']}: {report['customers']} customers, "
        f"{report['churners']} churners ({report['churn_rate']:.1%})",
        f"{'method':<26}{'AUC':>8}  {'95% CI':<18}{'top-20% share':>14}  {'95% CI':<18}",
    ]
    for name, values in report["figures"].items():
        ci = report["intervals"][name]
        lines.append(
            f"{name:<26}{values['auc']:>8.4f}  [{ci['auc'][0]:.4f}, {ci['auc'][1]:.4f}]  "
            f"{values['top20']:>12.4f}  [{ci['top20'][0]:.4f}, {ci['top20'][1]:.4f}]"
        )
    bands = []
    for name, band in report["bands"].items():
        rate = "-" if band["churn_rate"] is None else f"{band['churn_rate']:.1%}"
        bands.append(f"{name} {band['customers']} customers ({rate} churned)")
    lines.append("bands of the churn score: " + ", ".join(bands))
    lines.extend(render_trigger(result["retention_trigger"]))
    fitted, shipped = result["fit"], result["shipped"]
    drift = [
        name for name in FITTED if abs(fitted["weights"][name] - shipped["weights"][name]) > 0.005
    ]
    if (
        drift
        or abs(fitted["intercept"] - shipped["intercept"]) > 0.005
        or abs(fitted["prior_interval_days"] - shipped["prior_interval_days"]) > 0.5
    ):
        lines.append(
            f"note: the shipped constants (streams/state/churn.py) differ from this fit: {shipped}"
        )
    return "\n".join(lines)


def render_trigger(trigger: dict) -> list[str]:
    """The retention trigger's table: per order band, reached / precision / recall."""

    def share(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    k = trigger["overdue_intervals"]
    rows = trigger["order_bands"]
    names = [name for name in rows["all"] if name not in ("customers", "churners")]
    lines = [
        f"retention trigger at the cutoff (threshold {trigger['threshold']}"
        + ("" if k is None else f"; overdue: {k} expected intervals without an order")
        + "): reached / precision / recall",
        f"{'orders':<8}{'customers':>10}{'churned':>9}"
        + "".join(f"  {name:>27}" for name in names),
    ]
    for band_name, row in rows.items():
        rate = row["churners"] / row["customers"] if row["customers"] else 0.0
        cells = "".join(
            f"  {share(row[n]['reached']):>7} / {share(row[n]['precision']):>7} / "
            f"{share(row[n]['recall']):>7}"
            for n in names
        )
        lines.append(f"{band_name:<8}{row['customers']:>10}{rate:>9.1%}{cells}")
    return lines


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="nextbest evaluate-churn", description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/online_retail.csv.gz", help="order file")
    p.add_argument("--fit-cutoff", default="2011-06-01", help="weights are fitted here")
    p.add_argument("--cutoff", default="2011-09-01", help="figures are reported here")
    p.add_argument("--horizon-days", type=float, default=float(churn.HORIZON_DAYS))
    p.add_argument("--active-days", type=float, default=180.0, help="scored: ordered within")
    p.add_argument("--bootstrap", type=int, default=1000, help="resamples for the intervals")
    p.add_argument("--seed", type=int, default=0)
    threshold, k = Retention.threshold, Retention.overdue_intervals  # the catalog's defaults
    p.add_argument("--threshold", type=float, default=threshold, help="the journey's threshold")
    p.add_argument("--overdue-intervals", type=float, default=k, help="the journey's; 0: off")
    p.add_argument("--out", type=Path, help="write every figure as JSON here")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.overdue_intervals is not None and args.overdue_intervals <= 0:
        args.overdue_intervals = None
    result = evaluate(args)
    print(render(result))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
