"""``nextbest report``: the promotion policy's results from the decision log, as tables on
stdout, CSV files and PNG charts in an output directory.

    nextbest report --log var/demo/promotion-log.jsonl --out var/report

Per experiment arm (``models.promotion.report``: per customer, ``arms.csv``, ``arms.png``), then
(``models.promotion.analytics``: per closed decision) the top products offered and bought after
an offer (``products-offered.csv``, ``products-bought.csv``, ``products.png``), results and
lift over the holdout by country (``by-country``), RFM band (``by-rfm``), churn-risk band
(``by-churn``, when the decisions logged a churn-risk feature) and week (``weekly-lift``),
each as ``.csv`` and ``.png``. ``--merchant`` keeps one merchant's decisions.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

from models.promotion import analytics
from models.promotion.log import read_log
from models.promotion.report import ArmReport, build_report, format_table, plot
from streams.promotion.experiments import HOLDOUT

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)

#: the grouped results: (file stem, column, title, groups kept (rest: other), by size)
GROUPINGS = (
    ("by-country", "country", "country", 10, True),
    ("by-rfm", "rfm_band", "RFM band", 12, False),
    ("by-churn", "churn_band", "churn-risk band", None, False),
)
COLORS = ("#888888", "#4878a8", "#d08040", "#60a060", "#a05090")


def markdown(frame: pd.DataFrame, columns: dict[str, str], digits: int = 2) -> str:
    """A Markdown table of ``frame``'s ``columns`` (column -> header); an interval column
    (one with ``_low``/``_high`` companions) as ``value [low, high]``."""
    lines = ["| " + " | ".join(columns.values()) + " |"]
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) for c in columns]
    lines.append("|" + "|".join("---:" if n else "---" for n in numeric) + "|")
    for _, row in frame.iterrows():
        cells = []
        for column in columns:
            value = row[column]
            if f"{column}_low" in frame.columns:
                cells.append(
                    analytics.interval_text(row, column, 3 if "conversion" in column else digits)
                )
            elif isinstance(value, float | np.floating):
                cells.append("-" if np.isnan(value) else f"{value:,.{digits}f}")
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


RESULT_HEADERS = {
    "arm": "arm",
    "customers": "customers",
    "decisions": "decisions",
    "offers_sent": "offers sent",
    "conversion": "conversion",
    "revenue": "revenue / decision",
    "profit": "profit / decision",
    "conversion_lift": "conversion lift",
    "profit_lift": "profit lift / decision",
}


def plot_products(offered: pd.DataFrame, bought: pd.DataFrame, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.4 * max(len(offered), len(bought), 4) + 1.5))
    panels = (
        (axes[0], offered, "offers", "products offers were sent on (offers)"),
        (axes[1], bought, "orders_after_offer", "products bought after an offer (orders)"),
    )
    for ax, table, column, title in panels:
        if table.empty:
            ax.set_axis_off()
            continue
        y = np.arange(len(table))[::-1]
        ax.barh(y, table[column], color=COLORS[1])
        ax.set_yticks(y, table["product_id"])
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_results(table: pd.DataFrame, column: str, title: str, path: Path) -> None:
    """Conversion and profit per decision per group and arm, with their 95% intervals."""
    groups = list(dict.fromkeys(table[column]))
    arms = sorted(set(table["arm"]), key=lambda a: (a != HOLDOUT, a))
    width = 0.8 / len(arms)
    size = (min(16.0, max(8.0, 0.6 * len(groups) * len(arms))), 8.0)
    fig, axes = plt.subplots(2, 1, figsize=size)
    for ax, metric in zip(axes, ("conversion", "profit"), strict=True):
        x = np.arange(len(groups))
        for i, arm in enumerate(arms):
            rows = table[table["arm"] == arm].set_index(column).reindex(groups)
            mid = rows[metric].to_numpy(dtype=float)
            err = np.vstack([mid - rows[f"{metric}_low"], rows[f"{metric}_high"] - mid])
            ax.bar(
                x + (i - (len(arms) - 1) / 2) * width,
                mid,
                width,
                yerr=np.nan_to_num(err),
                capsize=3,
                color=COLORS[i % len(COLORS)],
                label=arm,
            )
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(x, groups, rotation=30, ha="right")
        ax.set_title(f"{metric} per decision by {title} (95% CI)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_weekly_lift(table: pd.DataFrame, path: Path) -> None:
    """Each arm's conversion and profit lift per decision over the holdout, week by week."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    treated = table[table["arm"] != HOLDOUT]
    for ax, metric in zip(axes, ("conversion_lift", "profit_lift"), strict=True):
        for i, (arm, rows) in enumerate(treated.groupby("arm")):
            color = COLORS[(i + 1) % len(COLORS)]
            ax.plot(rows["week"], rows[metric], marker="o", color=color, label=arm)
            ax.fill_between(
                rows["week"], rows[f"{metric}_low"], rows[f"{metric}_high"], color=color, alpha=0.2
            )
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_title(f"{metric.replace('_', ' ')} per decision vs holdout (95% CI)")
        ax.tick_params(axis="x", rotation=30)
        if not treated.empty:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def arm_table(reports: list[ArmReport]) -> pd.DataFrame:
    """The per-arm report as columns, an interval as ``x``, ``x_low``, ``x_high``."""
    rows = []
    for report in reports:
        row: dict[str, object] = {"arm": report.arm}
        for name, value in asdict(report).items():
            if isinstance(value, dict) or value is None:
                interval = value or {"value": np.nan, "low": np.nan, "high": np.nan}
                row.update({name: interval["value"], f"{name}_low": interval["low"]})
                row[f"{name}_high"] = interval["high"]
            else:
                row[name] = value
        rows.append(row)
    return pd.DataFrame(rows)


def write(table: pd.DataFrame, out: Path, stem: str) -> Path:
    path = out / f"{stem}.csv"
    table.to_csv(path, index=False)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nextbest report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--log", type=Path, nargs="+", required=True, help="JSON Lines log file(s)")
    parser.add_argument("--out", type=Path, default=Path("var/report"), help="CSV and PNG files")
    parser.add_argument("--png", type=Path, help="the per-arm chart (default: OUT/arms.png)")
    parser.add_argument("--merchant", help="one merchant's decisions (default: all)")
    parser.add_argument("--top", type=int, default=10, help="products per table (default 10)")
    args = parser.parse_args(argv)
    decisions, rewards = read_log(args.log)
    if args.merchant is not None:
        decisions = [d for d in decisions if d["merchant_id"] == args.merchant]
    if not decisions:
        print("no decision records in the log")
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    reports = build_report(decisions, rewards)
    print(f"{len(decisions)} decisions, {len(rewards)} rewards (95% CI in brackets)\n")
    print("## Per arm (per customer; a decision without a reward yet counts as not converted)\n")
    print(format_table(reports))
    arms_png = args.png or args.out / "arms.png"
    arms_png.parent.mkdir(parents=True, exist_ok=True)
    plot(reports, arms_png)
    arms = arm_table(reports)
    written += [write(arms, args.out, "arms"), arms_png]

    frame = analytics.decision_frame(decisions, rewards)
    print(
        f"\n{len(frame)} decisions with a closed window (a reward) in the tables below; "
        f"{len(decisions) - len(frame)} still open left out\n"
    )
    if frame.empty:
        print("no decision has closed its attribution window yet: no more tables")
        print("\nwrote " + ", ".join(str(p) for p in written))
        return 0
    offered = analytics.products_offered(frame, args.top)
    bought = analytics.products_bought(frame, args.top)
    print("## Top products offers were sent on (coupon product, or in the cart)\n")
    print(
        markdown(
            offered,
            {
                "product_id": "product",
                "offers": "offers",
                "coupons": "of which coupons",
                "converted": "converted",
                "bought": "product bought",
                "conversion": "conversion",
            },
            3,
        )
    )
    print("\n## Top products bought after an offer (attributed orders; holdout: nothing sent)\n")
    print(
        markdown(
            bought,
            {
                "product_id": "product",
                "orders_after_offer": "orders after offer",
                "value_after_offer": "value",
                "per_1000_after_offer": "per 1,000 offers",
                "orders_holdout": "orders in holdout",
                "value_holdout": "value",
                "per_1000_holdout": "per 1,000 holdout decisions",
            },
        )
    )
    plot_products(offered, bought, args.out / "products.png")
    written += [
        write(offered, args.out, "products-offered"),
        write(bought, args.out, "products-bought"),
        args.out / "products.png",
    ]

    for stem, column, title, top, by_size in GROUPINGS:
        if column == "churn_band" and not analytics.has_churn_risk(frame):
            print("\n## By churn-risk band: none (the decisions' feature set logs no churn risk)")
            continue
        table = analytics.results_by(frame, column, top, by_size)
        print(f"\n## By {title} (per decision; lift: the arm minus the holdout of the group)\n")
        print(markdown(table, {column: title, **RESULT_HEADERS}))
        plot_results(table, column, title, args.out / f"{stem}.png")
        written += [write(table, args.out, stem), args.out / f"{stem}.png"]

    weekly = analytics.weekly_lift(frame)
    print("\n## Lift by arm per week (per decision, over the holdout of the same week)\n")
    print(markdown(weekly, {"week": "week of", **RESULT_HEADERS}))
    plot_weekly_lift(weekly, args.out / "weekly-lift.png")
    written += [write(weekly, args.out, "weekly-lift"), args.out / "weekly-lift.png"]
    print("\nwrote " + ", ".join(str(p) for p in written))
    return 0
