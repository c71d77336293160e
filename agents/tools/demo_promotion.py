"""The promotion policy in ``nextbest demo``: the demo's shop, the tail's decision lines and the
summary (per arm: conversion and profit per customer with 95% intervals, decisions by action,
discount spent against budget, what the bandit learned, the threshold rules' counterfactual)
with a PNG of the profit over time per arm and a JSON summary.

The tail's expected incremental profit is the objective (``streams.promotion.objective``) at the
posterior mean of the demo's copy of the bandit: the prior plus every learnable reward read from
the rewards topic so far, which is what the worker's bandit learns (the policy itself chose with a
Thompson draw, so its own estimate may differ by a draw's noise).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import matplotlib
import numpy as np
import yaml

from agents.tools.demo_engagement import demo_engagement
from models.promotion.report import Z95, Interval, build_report
from streams.merchants.catalog import DEFAULT_MERCHANTS
from streams.promotion.actions import NONE, Action
from streams.promotion.bandit import BanditConfig, LinearThompson, redeem_share
from streams.promotion.experiments import HOLDOUT
from streams.promotion.objective import DeepDiscount, Economics, ObjectiveConfig, incremental_profit
from streams.promotion.rewards import learnable

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)

DEMO_MERCHANT = "uci-gift-shop"


def write_merchants(path: Path, data_file: Path, budget: float, offer_ttl_hours: float) -> Path:
    """The demo's merchants file: the packaged one, with a ``budget`` on every promotion of the
    demo's shop and offers valid ``offer_ttl_hours`` (the attribution window)."""
    config = yaml.safe_load(DEFAULT_MERCHANTS.read_text())
    shop = config["merchants"][DEMO_MERCHANT]
    shop["offer_ttl_hours"] = offer_ttl_hours
    demo_engagement(shop)
    for promotion in shop["promotions"]:
        promotion["budget"] = budget
    shop.setdefault("training", {})["data"] = str(data_file.resolve())
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class BanditMirror:
    """The demo's copy of the bandit (see the module doc)."""

    def __init__(self, objective: ObjectiveConfig) -> None:
        self.objective = objective
        self.model = LinearThompson(BanditConfig(), objective)

    def learn(self, reward: dict) -> None:
        if learnable(reward):
            self.model.update(
                reward["decision_id"],
                reward["features"],
                reward["action"],
                reward["purchased"],
                reward["redeemed"],
            )

    def expected_incremental(self, record: dict) -> dict[str, float]:
        """Expected incremental profit of each allowed action of the record at the posterior
        mean (``none`` is 0)."""
        actions = [
            Action(o["action"], o["action_kind"], record["cart_value"], o["basket"], o["discount"])
            for o in record["options"]
        ]
        p = self.model.purchase_probability(np.array(record["features"]), actions)
        share = np.array(
            [1.0 if a.id == NONE else redeem_share(self.model.arms[a.id]) for a in actions]
        )
        depth, cost = record.get("deep_discount_depth"), record.get("deep_discount_cost")
        values = incremental_profit(
            p[None, :],
            share,
            Economics.of(actions),
            record["margin_rate"],
            record["horizon_margin"],
            self.objective,
            record["repurchase_probability"],
            DeepDiscount(depth, cost) if depth is not None and cost is not None else None,
        )[0]
        return {a.id: float(v) for a, v in zip(actions, values, strict=True)}


def decision_line(record: dict, expected: dict[str, float]) -> str:
    """The tail's line for a decision record: arm, action, propensity, expected incremental
    profit (for no offer: the best offer's), sent or not."""
    who = record["customer_key"].split(":", 2)[-1]
    action = record["action"]
    value = f"E[Δprofit] £{expected[action]:+.2f}"
    others = {a: v for a, v in expected.items() if a != NONE}
    if action == NONE and others:
        best = max(others, key=others.__getitem__)
        value = f"best offer {best} E[Δprofit] £{others[best]:+.2f}"
    return (
        f"  decide  {who:>14}  cart £{record['cart_value']:>9,.2f}  {record['arm']:<8} "
        f"{action:<34} p={record['propensity']:.2f}  "
        f"{'sent' if record['sent'] else 'not sent'}, {value}"
    )


# -- the summary: pure functions over decision and reward records -------------------------------


def decisions_by_action(decisions: list[dict]) -> dict[str, Counter[str]]:
    """Per arm, how many decisions took each action."""
    by_arm: dict[str, Counter[str]] = defaultdict(Counter)
    for record in decisions:
        by_arm[record["arm"]][record["action"]] += 1
    return dict(sorted(by_arm.items()))


def closed(decisions: list[dict], rewards: list[dict]) -> list[dict]:
    """The decisions whose attribution window closed (they have a reward)."""
    rewarded = {r["decision_id"] for r in rewards}
    return [d for d in decisions if d["decision_id"] in rewarded]


def proportion_interval(successes: int, n: int) -> Interval:
    """A share with its Wilson 95% interval (sound at 0 and 1, where the normal one is not)."""
    if n == 0:
        return Interval(math.nan, math.nan, math.nan)
    share = successes / n
    z2 = Z95 * Z95
    centre = (share + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(share * (1 - share) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return Interval(share, centre - half, centre + half)


def customer_conversion(rewards: list[dict]) -> dict[str, Interval]:
    """Per arm: the share of decided customers who ordered within an attribution window (any of
    their rewards purchased), with its Wilson 95% interval."""
    bought: dict[str, dict[str, bool]] = defaultdict(dict)
    for reward in rewards:
        customers = bought[reward["arm"]]
        key = reward["customer_key"]
        customers[key] = customers.get(key, False) or bool(reward["purchased"])
    return {
        arm: proportion_interval(sum(customers.values()), len(customers))
        for arm, customers in sorted(bought.items())
    }


@dataclass(frozen=True)
class Budget:
    promotion: str
    budget: float | None
    discount: float  # on attributed orders (reward records)
    held: float  # most the offers still in their window may cost (sent, no reward yet)


def budgets(
    promotions: dict[str, float | None], decisions: list[dict], rewards: list[dict]
) -> list[Budget]:
    """Per promotion offered (id -> budget): the discount the rewards booked and what the sent
    offers still open may cost (their ``max_discount``, reserved in the budget's ledgers)."""
    spent: Counter[str] = Counter()
    held: Counter[str] = Counter()
    rewarded = {r["decision_id"] for r in rewards}
    for reward in rewards:
        if reward["promotion_id"]:
            spent[reward["promotion_id"]] += reward["discount_cost"]
    for record in decisions:
        if record["sent"] and record["decision_id"] not in rewarded:
            held[record["promotion_id"]] += record["max_discount"] or 0.0
    return [
        Budget(pid, budget, round(spent[pid], 2), round(held[pid], 2))
        for pid, budget in promotions.items()
        if pid in spent or pid in held
    ]


@dataclass(frozen=True)
class Learned:
    action: str
    rewards: int  # rewards learned with this action
    bought: float  # share of them bought
    redeemed: float | None  # share of purchases redeeming the offer (None: none, no offer)
    p_buy: float  # posterior-mean P(buy) at the average context of everything learned
    uplift: float  # p_buy minus no offer's


def learned_per_action(model: LinearThompson) -> list[Learned]:
    """What the bandit learned, per action it learned from (most played first)."""
    arms = sorted(
        ((arm_id, arm) for arm_id, arm in model.arms.items() if arm.n), key=lambda a: -a[1].n
    )
    if not arms:
        return []
    n = sum(arm.n for _, arm in arms)
    design_mean = sum(arm.gram[0] for _, arm in arms) / n  # [1, the mean features]
    actions = [Action(NONE, NONE, 0.0, 0.0), *(Action(a, "", 0.0, 0.0) for a, _ in arms)]
    p = model.purchase_probability(design_mean[1:], actions)
    rows = []
    for i, (arm_id, arm) in enumerate(arms, 1):
        bought, redeemed = arm.counts["bought"], arm.counts["redeemed"]
        rows.append(
            Learned(
                arm_id,
                arm.n,
                bought / arm.n,
                (redeemed / bought if bought else None) if arm_id != NONE else None,
                float(p[i]),
                float(p[i] - p[0]),
            )
        )
    return rows


def cumulative_profit(rewards: list[dict]) -> dict[str, tuple[list[datetime], list[float]]]:
    """Per arm: the rewards' profit summed in order of their decisions' event time."""
    series: dict[str, tuple[list[datetime], list[float]]] = {}
    for reward in sorted(rewards, key=lambda r: r["event_time"]):
        times, totals = series.setdefault(reward["arm"], ([], []))
        times.append(datetime.fromisoformat(reward["event_time"]))
        totals.append((totals[-1] if totals else 0.0) + reward["profit"])
    return dict(sorted(series.items(), key=lambda item: (item[0] != HOLDOUT, item[0])))


def plot_profit(rewards: list[dict], path: Path) -> None:
    """Cumulative profit per arm, and per decided customer of the arm, over event time."""
    fig, (total, per_customer) = plt.subplots(1, 2, figsize=(12, 4.5))
    customers = {
        arm: len({r["customer_key"] for r in rewards if r["arm"] == arm})
        for arm in {r["arm"] for r in rewards}
    }
    for arm, (times, totals) in cumulative_profit(rewards).items():
        total.step(times, totals, where="post", label=arm)
        per = np.array(totals) / max(customers[arm], 1)
        per_customer.step(times, per, where="post", label=f"{arm} ({customers[arm]} customers)")
    total.set_title("cumulative profit per arm (£)")
    per_customer.set_title("cumulative profit per customer of the arm (£)")
    for ax in (total, per_customer):
        ax.axhline(0, color="black", linewidth=0.8)
        ax.legend()
        ax.tick_params(axis="x", labelrotation=30)
    fig.suptitle("nextbest demo: promotion rewards by decision time (responses simulated)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def money(value: float | None) -> str:
    return "-" if value is None else f"£{value:,.2f}"


def interval(value: Interval, digits: int = 2, unit: str = "") -> str:
    low, mid, high = (f"{unit}{v:.{digits}f}" for v in (value.low, value.value, value.high))
    return f"{mid} [{low}, {high}]"


def summary_lines(
    decisions: list[dict],
    rewards: list[dict],
    budget_rows: list[Budget],
    learned: list[Learned],
    counterfactuals: dict,
    outcomes: Counter[str],
) -> tuple[list[str], dict]:
    """The summary's promotion lines, and the same figures for the JSON summary."""
    lines = [
        f"  decisions          {len(decisions):,}, {len(rewards):,} with their attribution "
        f"window closed ({len(decisions) - len(closed(decisions, rewards)):,} still open)"
    ]
    by_action = decisions_by_action(decisions)
    for arm, counts in by_action.items():
        shown = ", ".join(f"{a} {n:,}" for a, n in counts.most_common())
        lines.append(f"    {arm:<16} {shown}")
    lines.append(
        "  responses          simulated (customer-response simulator): "
        + (", ".join(f"{k} {v:,}" for k, v in sorted(outcomes.items())) or "none")
    )
    conversion = customer_conversion(rewards)
    reports = build_report(closed(decisions, rewards), rewards)
    lines.append(
        "  holdout vs treated (closed windows; per customer, 95% CI: the holdout is a tenth of"
        " the customers and order values are heavy-tailed, so the intervals are wide)"
    )
    for report in reports:
        c = conversion.get(report.arm)
        lines.append(
            f"    {report.arm:<16} {report.customers:,} customers, conversion "
            f"{interval(c, 3) if c else '-'}, profit/customer {interval(report.profit, 2, '£')}"
            + (
                f", vs holdout {interval(report.incremental_profit, 2, '£')}"
                if report.incremental_profit is not None
                else ""
            )
        )
    lines.append(
        "  discount vs budget "
        + (
            "; ".join(
                f"{b.promotion} {money(b.discount)} of {money(b.budget)}"
                + (f" (+ {money(b.held)} held for open offers)" if b.held else "")
                for b in budget_rows
            )
            or "no offer made"
        )
    )
    lines.append(
        "  bandit learned     per action: rewards, bought, redeemed, posterior P(buy) at the "
        "mean cart (uplift)"
    )
    for row in learned:
        redeemed = "-" if row.redeemed is None else f"{row.redeemed:.0%}"
        lines.append(
            f"    {row.action:<34} {row.rewards:>5,}  {row.bought:6.1%}  {redeemed:>5}  "
            f"{row.p_buy:.3f} ({row.uplift:+.3f})"
        )
    for arm, cf in counterfactuals.items():
        lines.append(
            f"  rules, what-if     {arm}: on its {cf.carts:,} visits with an order in the data, "
            f"expected profit {money(cf.policy)} as decided vs {money(cf.rules)} with the "
            f"threshold rules, {money(cf.no_offer)} with no offer (same simulated responses)"
        )
    figures = {
        "decisions": len(decisions),
        "rewards": len(rewards),
        "decisions_by_action": {arm: dict(c) for arm, c in by_action.items()},
        "responses": dict(outcomes),
        "arms": [asdict(r) for r in reports],
        "conversion_per_customer": {arm: asdict(c) for arm, c in conversion.items()},
        "budgets": [asdict(b) for b in budget_rows],
        "bandit": [asdict(row) for row in learned],
        "counterfactual": {arm: asdict(cf) for arm, cf in counterfactuals.items()},
    }
    return lines, figures
