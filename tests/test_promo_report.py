"""``nextbest report``: per-arm figures with confidence intervals from a decision log."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agents.tools import report as report_command
from models.promotion import report as promo_report
from models.promotion.report import build_report, difference_interval, mean_interval


def log(profits: dict[str, list[float]], discount: float = 2.0) -> tuple[list[dict], list[dict]]:
    decisions, rewards = [], []
    for arm, values in profits.items():
        for i, profit in enumerate(values):
            decision_id = f"{arm}-{i}"
            customer = f"shop:c:{arm}{i // 2}"  # two decisions per customer
            sent = arm != "holdout"
            decisions.append(
                {
                    "record": "decision",
                    "decision_id": decision_id,
                    "merchant_id": "shop",
                    "arm": arm,
                    "customer_key": customer,
                    "sent": sent,
                    "event_time": "2011-11-14T09:00:00Z",
                }
            )
            if i % 10 == 9:
                continue  # a window still open: no reward yet
            rewards.append(
                {
                    "record": "reward",
                    "decision_id": decision_id,
                    "arm": arm,
                    "purchased": profit > 0,
                    "revenue": max(profit, 0) * 2.5,
                    "discount_cost": discount if sent and profit > 0 else 0.0,
                    "profit": profit,
                }
            )
    return decisions, rewards


def test_arms_with_intervals_and_incremental_profit_over_the_holdout():
    rng = np.random.default_rng(0)
    profits = {
        "holdout": list(rng.choice([0.0, 40.0], size=400, p=[0.7, 0.3])),
        "learned": list(rng.choice([0.0, 40.0], size=400, p=[0.6, 0.4])),
    }
    decisions, rewards = log(profits)
    reports = {r.arm: r for r in build_report(decisions, rewards)}
    assert list(reports) == ["holdout", "learned"]
    learned, holdout = reports["learned"], reports["holdout"]
    assert (learned.customers, learned.decisions, learned.offers_sent) == (200, 400, 400)
    assert holdout.offers_sent == 0 and holdout.incremental_profit is None
    per_customer = {}
    for d, p in zip(decisions[400:], profits["learned"], strict=True):
        if int(d["decision_id"].split("-")[1]) % 10 != 9:
            per_customer[d["customer_key"]] = per_customer.get(d["customer_key"], 0.0) + p
        else:
            per_customer.setdefault(d["customer_key"], 0.0)
    assert learned.profit.value == pytest.approx(np.mean(list(per_customer.values())))
    inc = learned.incremental_profit
    assert inc.value == pytest.approx(learned.profit.value - holdout.profit.value)
    assert inc.low < inc.value < inc.high
    assert learned.conversion.value == pytest.approx(
        sum(r["purchased"] for r in rewards if r["arm"] == "learned") / 400
    )
    table = promo_report.format_table(list(reports.values()))
    assert "| learned | 200 | 400 | 400 |" in table


def test_intervals():
    values = np.array([1.0, 2.0, 3.0, 4.0])
    m = mean_interval(values)
    assert m.value == 2.5 and m.high - m.value == pytest.approx(1.959964 * values.std(ddof=1) / 2)
    d = difference_interval(values, values - 1)
    assert d.value == pytest.approx(1.0) and d.low < 1.0 < d.high


def test_report_command_writes_table_and_png(tmp_path, capsys):
    decisions, rewards = log({"holdout": [0.0, 10.0] * 20, "learned": [0.0, 12.0] * 20})
    path = tmp_path / "log.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in decisions + rewards) + "\n")
    png = tmp_path / "report.png"
    out_dir = tmp_path / "report"
    assert report_command.main(["--log", str(path), "--png", str(png), "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert "incremental profit / customer" in out and "| learned |" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert report_command.main(["--log", str(empty), "--out", str(out_dir)]) == 1
