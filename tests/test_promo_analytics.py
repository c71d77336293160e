"""``nextbest report``'s analytics: products, countries, RFM and churn-risk bands, weeks.

A small log whose every expected figure is computed here from the fixture's definitions (plain
loops and the interval formulas), not read back from the code under test.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from agents.tools import report as report_command
from models.promotion import analytics
from streams.promotion.features import FEATURE_NAMES, FEATURE_SET, context_features

DAY = 86400.0
WEEK1 = 1321228800.0  # 2011-11-14T00:00:00Z, a Monday
WEEK2 = WEEK1 + 7 * DAY
Z95 = 1.959964

#: customer -> (country, orders, days since the last order, total spent); 0 orders: new
CUSTOMERS = {
    "c1": ("France", 3, 10.0, 300.0),  # R3 F2 M2 (average order 100)
    "c2": ("United Kingdom", 0, None, 0.0),  # new
    "c3": ("United Kingdom", 6, 60.0, 3000.0),  # R2 F3 M3 (average 500)
    "c4": (None, 1, 200.0, 50.0),  # R1 F1 M1, no country in the profile
}
#: (id, customer, arm, sent, coupon product, cart products, time, order products or None; the
#: decision's window still open: "open")
DECISIONS = [
    ("d1", "c1", "holdout", False, None, ["A", "B"], WEEK1 + DAY, {"A": 20.0, "C": 10.0}),
    ("d2", "c2", "learned", True, None, ["A"], WEEK1 + 2 * DAY, {"A": 40.0}),
    ("d3", "c3", "learned", True, "B", ["A", "C"], WEEK2 + DAY, None),
    ("d4", "c4", "holdout", False, None, ["C"], WEEK2 + 2 * DAY, {"C": 15.0}),
    ("d5", "c2", "learned", False, None, ["D"], WEEK2 + 3 * DAY, None),
    ("d6", "c3", "learned", True, None, ["B"], WEEK1 + 3 * DAY, {"B": 50.0, "A": 5.0}),
    ("d7", "c1", "holdout", False, None, ["A"], WEEK2 + 4 * DAY, "open"),
    ("d8", "c4", "holdout", False, None, ["B"], WEEK1 + 4 * DAY, None),
    ("d9", "c1", "holdout", False, None, ["D"], WEEK2 + 5 * DAY, {"D": 8.0}),
]
MARGIN = 0.4
DISCOUNT = 0.1  # of the order's value, when an offer was sent


def iso(ts: float) -> str:
    return pd.Timestamp(ts, unit="s", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")


def outcome(decision: tuple) -> tuple[float, float, float]:
    """(revenue, discount cost, profit) of a decision of the fixture."""
    _, _, _, sent, _, _, _, order = decision
    if not isinstance(order, dict):
        return 0.0, 0.0, 0.0
    revenue = sum(order.values())
    discount = round(DISCOUNT * revenue, 2) if sent else 0.0
    return revenue, discount, round(MARGIN * (revenue + discount) - discount, 2)


def features(customer: str, ts: float) -> list[float]:
    _, orders, days, spent = CUSTOMERS[customer]
    rfm = {"frequency": orders, "monetary": spent, "first": None, "last": None}
    if orders:
        rfm.update(first=ts - 400 * DAY, last=ts - days * DAY)
    return context_features({"rfm": rfm}, 50.0, ts)


def expected_rfm(customer: str) -> str:
    _, orders, days, spent = CUSTOMERS[customer]
    if not orders:
        return "new"
    r = 3 if days <= 30 else 2 if days <= 90 else 1
    f = 1 if orders == 1 else 2 if orders < 5 else 3
    average = spent / orders
    m = 1 if average < 100 else 2 if average < 400 else 3
    return f"R{r}F{f}M{m}"


def log() -> tuple[list[dict], list[dict]]:
    decisions, rewards = [], []
    for d in DECISIONS:
        decision_id, customer, arm, sent, coupon, cart, ts, order = d
        decisions.append(
            {
                "record": "decision",
                "decision_id": decision_id,
                "merchant_id": "shop",
                "customer_key": f"shop:c:{customer}",
                "arm": arm,
                "sent": sent,
                "product_id": coupon,
                "event_time": iso(ts),
                "feature_set": FEATURE_SET,
                "features": features(customer, ts),
                "cart_products": cart,
                "country": CUSTOMERS[customer][0],
            }
        )
        if order == "open":
            continue
        revenue, discount, profit = outcome(d)
        rewards.append(
            {
                "record": "reward",
                "decision_id": decision_id,
                "arm": arm,
                "purchased": order is not None,
                "revenue": revenue,
                "discount_cost": discount,
                "profit": profit,
                "order_products": (
                    [{"product_id": p, "value": v} for p, v in order.items()] if order else None
                ),
            }
        )
    return decisions, rewards


CLOSED = [d for d in DECISIONS if d[7] != "open"]


def test_frame_has_the_closed_decisions_with_their_segments():
    frame = analytics.decision_frame(*log()).set_index("decision_id")
    assert list(frame.index) == [d[0] for d in CLOSED]
    for decision_id, customer, *_ in CLOSED:
        row = frame.loc[decision_id]
        assert row["rfm_band"] == expected_rfm(customer)
        assert row["country"] == (CUSTOMERS[customer][0] or "unknown")
        assert row["churn_band"] == "unknown"  # the feature set has no churn risk
    assert frame.loc["d1", "week"] == "2011-11-14" and frame.loc["d3", "week"] == "2011-11-21"
    assert not analytics.has_churn_risk(frame.reset_index())


def test_products_offered():
    offered = analytics.products_offered(analytics.decision_frame(*log()))
    expected: dict[str, list[int]] = {}  # product -> offers, coupons, converted, bought
    for _, _, _, sent, coupon, cart, _, order in CLOSED:
        if not sent:
            continue
        for product in set(cart) | ({coupon} if coupon else set()):
            counts = expected.setdefault(product, [0, 0, 0, 0])
            counts[0] += 1
            counts[1] += product == coupon
            counts[2] += order is not None
            counts[3] += bool(order) and product in order
    ranked = sorted(expected, key=lambda p: (-expected[p][0], p))
    assert list(offered["product_id"]) == ranked
    for _, row in offered.iterrows():
        offers, coupons, converted, bought = expected[row["product_id"]]
        assert (row["offers"], row["coupons"], row["converted"], row["bought"]) == (
            offers,
            coupons,
            converted,
            bought,
        )
        assert row["conversion"] == pytest.approx(converted / offers)
    assert analytics.products_offered(analytics.decision_frame(*log()), top=1).shape[0] == 1


def test_products_bought_after_an_offer_and_in_the_holdout():
    bought = analytics.products_bought(analytics.decision_frame(*log())).set_index("product_id")
    sent = [d for d in CLOSED if d[3]]
    holdout = [d for d in CLOSED if d[2] == "holdout"]
    for product in "ABCD":
        for kind, group in (("after_offer", sent), ("holdout", holdout)):
            orders = [d[7][product] for d in group if d[7] and product in d[7]]
            assert bought.loc[product, f"orders_{kind}"] == len(orders)
            assert bought.loc[product, f"value_{kind}"] == pytest.approx(sum(orders))
            assert bought.loc[product, f"per_1000_{kind}"] == pytest.approx(
                1000 * len(orders) / len(group)
            )
    assert list(bought.index[:2]) == ["A", "B"]  # 2 orders after an offer, then 1 (value 50)


def welch(a: list[float], b: list[float]) -> tuple[float, float]:
    diff = float(np.mean(a) - np.mean(b))
    se = math.sqrt(np.var(a, ddof=1) / len(a) + np.var(b, ddof=1) / len(b))
    return diff, Z95 * se


def test_weekly_lift_over_the_holdout_of_the_same_week():
    weekly = analytics.weekly_lift(analytics.decision_frame(*log()))
    assert list(weekly["week"]) == ["2011-11-14"] * 2 + ["2011-11-21"] * 2
    assert list(weekly["arm"]) == ["holdout", "learned"] * 2
    for week, start in (("2011-11-14", WEEK1), ("2011-11-21", WEEK2)):
        in_week = [d for d in CLOSED if start <= d[6] < start + 7 * DAY]
        arms = {arm: [d for d in in_week if d[2] == arm] for arm in ("holdout", "learned")}
        converted = {arm: [float(d[7] is not None) for d in ds] for arm, ds in arms.items()}
        profit = {arm: [outcome(d)[2] for d in ds] for arm, ds in arms.items()}
        rows = weekly[weekly["week"] == week].set_index("arm")
        for arm, ds in arms.items():
            assert rows.loc[arm, "decisions"] == len(ds)
            assert rows.loc[arm, "offers_sent"] == sum(d[3] for d in ds)
            assert rows.loc[arm, "customers"] == len({d[1] for d in ds})
            assert rows.loc[arm, "conversion"] == pytest.approx(np.mean(converted[arm]))
            assert rows.loc[arm, "profit"] == pytest.approx(np.mean(profit[arm]))
        for metric, values in (("conversion_lift", converted), ("profit_lift", profit)):
            diff, half = welch(values["learned"], values["holdout"])
            assert rows.loc["learned", metric] == pytest.approx(diff)
            assert rows.loc["learned", f"{metric}_high"] == pytest.approx(diff + half)
            assert rows.loc["learned", f"{metric}_low"] == pytest.approx(diff - half)
            assert math.isnan(rows.loc["holdout", metric])


def test_results_by_country_fold_small_groups_into_other():
    frame = analytics.decision_frame(*log())
    table = analytics.results_by(frame, "country")
    countries = [CUSTOMERS[d[1]][0] or "unknown" for d in CLOSED]
    sizes = {c: countries.count(c) for c in set(countries)}
    assert list(dict.fromkeys(table["country"])) == sorted(sizes, key=lambda c: (-sizes[c], c))
    uk = table[table["country"] == "United Kingdom"].set_index("arm")
    uk_decisions = [d for d in CLOSED if CUSTOMERS[d[1]][0] == "United Kingdom"]
    assert list(uk.index) == ["learned"] and uk.loc["learned", "decisions"] == len(uk_decisions)
    assert math.isnan(uk.loc["learned", "profit_lift"])  # no holdout decision in the group
    folded = analytics.results_by(frame, "country", top=1)
    biggest = max(sizes, key=lambda c: (sizes[c], c))
    assert list(dict.fromkeys(folded["country"])) == [biggest, "other"]
    assert folded["decisions"].sum() == len(CLOSED)


def test_rfm_band_reads_the_logged_features_and_unknown_feature_sets():
    assert analytics.rfm_band(features("c3", WEEK1), FEATURE_SET) == "R2F3M3"
    assert analytics.rfm_band(features("c3", WEEK1), "promo-features/0") == "unknown"
    assert analytics.rfm_band([], FEATURE_SET) == "unknown"


def test_churn_band_from_a_churn_feature_when_the_set_has_one(monkeypatch):
    names = (*FEATURE_NAMES, "churn_risk")
    monkeypatch.setattr(analytics, "FEATURE_NAMES", names)
    monkeypatch.setattr(analytics, "CHURN_FEATURE", "churn_risk")
    base = [0.0] * len(FEATURE_NAMES)
    bands = [analytics.churn_band([*base, risk], FEATURE_SET) for risk in (0.1, 0.5, 0.9)]
    assert bands == ["low", "medium", "high"]
    assert analytics.churn_band(base, FEATURE_SET) == "unknown"  # an older record without it


def test_report_command_writes_every_table_and_chart(tmp_path, capsys):
    decisions, rewards = log()
    path = tmp_path / "log.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in decisions + rewards) + "\n")
    out = tmp_path / "report"
    assert report_command.main(["--log", str(path), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "## Lift by arm per week" in text and "| 2011-11-14 | learned |" in text
    assert "## By churn-risk band: none" in text
    stems = ["arms", "products-offered", "products-bought", "by-country", "by-rfm"]
    for stem in [*stems, "weekly-lift"]:
        assert (out / f"{stem}.csv").exists()
    for png in ("arms", "products", "by-country", "by-rfm", "weekly-lift"):
        assert (out / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    by_rfm = pd.read_csv(out / "by-rfm.csv")
    bands = [expected_rfm(d[1]) for d in CLOSED]
    assert by_rfm.groupby("rfm_band")["decisions"].sum().to_dict() == {
        band: bands.count(band) for band in set(bands)
    }
    arms = pd.read_csv(out / "arms.csv").set_index("arm")
    assert arms.loc["holdout", "decisions"] == sum(d[2] == "holdout" for d in DECISIONS)
    assert report_command.main(["--log", str(path), "--merchant", "other"]) == 1


def test_report_of_a_log_whose_windows_are_all_open(tmp_path, capsys):
    decisions, _ = log()
    path = tmp_path / "log.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in decisions) + "\n")
    assert report_command.main(["--log", str(path), "--out", str(tmp_path / "out")]) == 0
    assert "no decision has closed its attribution window yet" in capsys.readouterr().out
    assert (tmp_path / "out" / "arms.csv").exists()
    assert not (tmp_path / "out" / "by-country.csv").exists()
