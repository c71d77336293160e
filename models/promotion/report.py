"""``nextbest report``'s per-arm part: conversion, revenue, discount cost and incremental profit
per arm (the command, with the analytics by product, country, segment and week, is
``agents.tools.report``).

Reads the decision log (``models.promotion.log``: decision and reward records as JSON Lines) and
compares the experiment's arms with the holdout. The unit is the customer (arms are assigned
per customer): each customer's decisions and rewards are summed, and per arm the table gives
customers, decisions, offers sent, conversion (decisions whose window saw an attributed
order), and per customer: revenue, discount cost, profit and incremental profit over the
holdout, with normal 95% confidence intervals (Welch's for the difference of means). A
decision without a reward yet (window still open) counts in the decisions but adds nothing.
The same figures are drawn as a PNG: conversion, revenue, discount cost, profit and
incremental profit per arm with their intervals. Prometheus carries the running sums per arm
(``agents.runtime.promotion_metrics``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np

from streams.promotion.experiments import HOLDOUT

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)

Z95 = 1.959964


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float


@dataclass(frozen=True)
class ArmReport:
    arm: str
    customers: int
    decisions: int
    offers_sent: int
    conversion: Interval  # per decision
    revenue: Interval  # per customer
    discount_cost: Interval
    profit: Interval
    incremental_profit: Interval | None  # per customer, over the holdout


def mean_interval(values: np.ndarray) -> Interval:
    n = len(values)
    mean = float(values.mean()) if n else float("nan")
    half = Z95 * float(values.std(ddof=1)) / math.sqrt(n) if n > 1 else float("nan")
    return Interval(mean, mean - half, mean + half)


def difference_interval(a: np.ndarray, b: np.ndarray) -> Interval:
    """Mean of ``a`` minus mean of ``b`` with a Welch normal 95% interval."""
    diff = float(a.mean() - b.mean())
    se = (
        math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
        if min(len(a), len(b)) > 1
        else math.nan
    )
    return Interval(diff, diff - Z95 * se, diff + Z95 * se)


def build_report(decisions: list[dict], rewards: list[dict]) -> list[ArmReport]:
    by_id = {r["decision_id"]: r for r in rewards}
    customers: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # decisions, offers sent
    converted: dict[str, list[float]] = defaultdict(list)
    for d in decisions:
        arm = d["arm"]
        counts[arm][0] += 1
        counts[arm][1] += int(d["sent"])
        reward = by_id.get(d["decision_id"])
        sums = customers[arm].setdefault(d["customer_key"], np.zeros(3))
        converted[arm].append(float(bool(reward and reward["purchased"])))
        if reward is not None:
            sums += (reward["revenue"], reward["discount_cost"], reward["profit"])
    holdout = np.array(list(customers[HOLDOUT].values())) if HOLDOUT in customers else None
    reports = []
    for arm in sorted(customers, key=lambda a: (a != HOLDOUT, a)):
        per_customer = np.array(list(customers[arm].values()))
        incremental = None
        if holdout is not None and arm != HOLDOUT and len(holdout) > 1:
            incremental = difference_interval(per_customer[:, 2], holdout[:, 2])
        reports.append(
            ArmReport(
                arm=arm,
                customers=len(per_customer),
                decisions=counts[arm][0],
                offers_sent=counts[arm][1],
                conversion=mean_interval(np.array(converted[arm])),
                revenue=mean_interval(per_customer[:, 0]),
                discount_cost=mean_interval(per_customer[:, 1]),
                profit=mean_interval(per_customer[:, 2]),
                incremental_profit=incremental,
            )
        )
    return reports


def _cell(interval: Interval | None, digits: int = 2) -> str:
    if interval is None:
        return "-"
    return f"{interval.value:.{digits}f} [{interval.low:.{digits}f}, {interval.high:.{digits}f}]"


def format_table(reports: list[ArmReport]) -> str:
    header = (
        "| arm | customers | decisions | offers sent | conversion | revenue / customer | "
        "discount cost / customer | profit / customer | incremental profit / customer |"
    )
    lines = [header, "|---|---:|---:|---:|---|---|---|---|---|"]
    for r in reports:
        lines.append(
            f"| {r.arm} | {r.customers} | {r.decisions} | {r.offers_sent} | "
            f"{_cell(r.conversion, 3)} | {_cell(r.revenue)} | {_cell(r.discount_cost)} | "
            f"{_cell(r.profit)} | {_cell(r.incremental_profit)} |"
        )
    return "\n".join(lines)


def plot(reports: list[ArmReport], path: Path) -> None:
    panels = (
        ("conversion per decision", [r.conversion for r in reports]),
        ("revenue per customer", [r.revenue for r in reports]),
        ("discount cost per customer", [r.discount_cost for r in reports]),
        ("profit per customer", [r.profit for r in reports]),
        ("incremental profit per customer vs holdout", [r.incremental_profit for r in reports]),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    names = [r.arm for r in reports]
    for ax, (title, values) in zip(axes, panels, strict=True):
        shown = [(n, v) for n, v in zip(names, values, strict=True) if v is not None]
        if not shown:
            ax.set_axis_off()
            continue
        x = np.arange(len(shown))
        mid = np.array([v.value for _, v in shown])
        err = np.array([[v.value - v.low for _, v in shown], [v.high - v.value for _, v in shown]])
        ax.bar(x, mid, yerr=err, capsize=4, color="#4878a8")
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(x, [n for n, _ in shown])
        ax.set_title(title)
    fig.suptitle("Promotion policy per experiment arm (95% CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
