"""Campaign analytics over the decision log: products, countries, segments and weeks.

Pure computations behind ``nextbest report`` (the command is ``agents.tools.report``), on the
decision and reward records of ``models.promotion.log.read_log``. The unit is the decision whose
attribution window has closed (a reward in the log): a decision still open has no outcome yet
and is left out of every table here (the per-arm table of ``models.promotion.report`` counts
it as not converted). Per decision: ``converted`` (an order was attributed to it), its
revenue, discount cost and profit (the reward's).

- ``decision_frame``: one row per closed decision, with its week, country, RFM band and
  churn-risk band;
- ``products_offered``: the products offers were made on (a product coupon's product, and the
  products of the cart an offer was sent for), with how many of those offers converted and in
  how many the product itself was bought;
- ``products_bought``: the products of the orders attributed to a sent offer, against those
  attributed to holdout decisions (nothing sent), per 1,000 decisions of each;
- ``results_by``: per group (country, RFM band, churn-risk band, week) and arm: customers,
  decisions, offers sent, conversion, revenue and profit per decision, and an arm's lift over
  the holdout of the same group (conversion and profit per decision), with normal 95%
  intervals (Welch's for the differences, as ``models.promotion.report``).

Segments come from the decision's logged features (``streams.promotion.features``; only
records of the current ``FEATURE_SET`` are read, older ones are ``unknown``):

- RFM band ``R<r>F<f>M<m>`` (each 1..3, higher is better) from the customer's history before
  the decision, with fixed thresholds (`RfmBands`): recency (days since the last order) at most
  30 -> 3, at most 90 -> 2, else 1; frequency (orders) 1 -> 1, 2..4 -> 2, 5+ -> 3; monetary
  (average order value, in the merchant's currency) under 100 -> 1, under 400 -> 2, else 3.
  A customer without orders is ``new``.
- churn-risk band ``low`` (< 1/3), ``medium`` (< 2/3), ``high``, from the first feature whose
  name starts with ``churn`` when the feature set has one; ``unknown`` when it has none.

The country is the decision record's (the customer's profile), ``unknown`` when absent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from models.promotion.report import Interval, difference_interval, mean_interval
from streams.promotion.experiments import HOLDOUT
from streams.promotion.features import FEATURE_NAMES, FEATURE_SET

UNKNOWN = "unknown"
OTHER = "other"
NEW_CUSTOMER = "new"
_LOG_YEAR = math.log1p(365.0)
_LOG_100 = math.log1p(100.0)
#: the first feature of the current set whose name says churn (None: the set has none)
CHURN_FEATURE = next((name for name in FEATURE_NAMES if name.startswith("churn")), None)


@dataclass(frozen=True)
class RfmBands:
    """Upper limits of the RFM scores (see the module doc)."""

    recency_days: tuple[float, float] = (30.0, 90.0)  # <= first: R3, <= second: R2, else R1
    orders: tuple[int, int] = (2, 5)  # < first: F1, < second: F2, else F3
    order_value: tuple[float, float] = (100.0, 400.0)  # < first: M1, < second: M2, else M3


def _feature(features: list[float], feature_set: str, name: str) -> float | None:
    if feature_set != FEATURE_SET or name not in FEATURE_NAMES:
        return None
    index = FEATURE_NAMES.index(name)
    return float(features[index]) if index < len(features) else None


def rfm_band(features: list[float], feature_set: str, bands: RfmBands = RfmBands()) -> str:
    """``R<r>F<f>M<m>``, ``new`` or ``unknown`` from a decision's features (the transforms of
    ``streams.promotion.features`` inverted)."""
    values = [
        _feature(features, feature_set, name)
        for name in ("has_orders", "recency", "frequency", "monetary")
    ]
    if any(v is None for v in values):
        return UNKNOWN
    has_orders, recency, frequency, monetary = values
    if not has_orders:
        return NEW_CUSTOMER
    days = math.expm1(recency * _LOG_YEAR)
    orders = round(math.expm1(frequency * _LOG_100))
    order_value = math.expm1(monetary * 10.0)
    r = 3 if days <= bands.recency_days[0] else 2 if days <= bands.recency_days[1] else 1
    f = 1 if orders < bands.orders[0] else 2 if orders < bands.orders[1] else 3
    m = 1 if order_value < bands.order_value[0] else 2 if order_value < bands.order_value[1] else 3
    return f"R{r}F{f}M{m}"


def churn_band(features: list[float], feature_set: str) -> str:
    """``low`` / ``medium`` / ``high`` churn risk, ``unknown`` without the feature."""
    risk = _feature(features, feature_set, CHURN_FEATURE) if CHURN_FEATURE else None
    if risk is None:
        return UNKNOWN
    return "low" if risk < 1 / 3 else "medium" if risk < 2 / 3 else "high"


def week_of(event_time: str) -> str:
    """The Monday (UTC) of the ISO week of an event time, ``YYYY-MM-DD``."""
    moment = pd.Timestamp(event_time).tz_convert("UTC")
    return (moment - pd.Timedelta(days=moment.weekday())).strftime("%Y-%m-%d")


def decision_frame(
    decisions: list[dict],
    rewards: list[dict],
    merchant: str | None = None,
    bands: RfmBands = RfmBands(),
) -> pd.DataFrame:
    """One row per decision with a reward (of ``merchant``, all when None)."""
    by_id = {r["decision_id"]: r for r in rewards}
    rows = []
    for d in decisions:
        reward = by_id.get(d["decision_id"])
        if reward is None or (merchant is not None and d["merchant_id"] != merchant):
            continue
        features, feature_set = d.get("features") or [], d.get("feature_set", "")
        rows.append(
            {
                "decision_id": d["decision_id"],
                "merchant_id": d["merchant_id"],
                "customer_key": d["customer_key"],
                "arm": d["arm"],
                "sent": bool(d["sent"]),
                "product_id": d.get("product_id"),
                "cart_products": d.get("cart_products") or [],
                "week": week_of(d["event_time"]),
                "country": d.get("country") or UNKNOWN,
                "rfm_band": rfm_band(features, feature_set, bands),
                "churn_band": churn_band(features, feature_set),
                "converted": bool(reward["purchased"]),
                "revenue": float(reward["revenue"]),
                "discount_cost": float(reward["discount_cost"]),
                "profit": float(reward["profit"]),
                "order_products": {
                    line["product_id"]: float(line["value"])
                    for line in reward.get("order_products") or []
                },
            }
        )
    columns = [
        "decision_id",
        "merchant_id",
        "customer_key",
        "arm",
        "sent",
        "product_id",
        "cart_products",
        "week",
        "country",
        "rfm_band",
        "churn_band",
        "converted",
        "revenue",
        "discount_cost",
        "profit",
        "order_products",
    ]
    return pd.DataFrame(rows, columns=columns)


def products_offered(frame: pd.DataFrame, top: int = 10) -> pd.DataFrame:
    """The ``top`` products offers were sent on: ``offers`` (decisions that sent an offer on the
    product: its coupon, or the product in the cart), ``coupons`` (of which product coupons for
    it), ``converted`` (of which an order followed in the window), ``bought`` (of which the
    order held the product), ``conversion`` (converted / offers). Most offers first."""
    rows = []
    for d in frame[frame["sent"]].itertuples():
        offered = dict.fromkeys(d.cart_products, False)
        if d.product_id:
            offered[d.product_id] = True
        for product, coupon in offered.items():
            rows.append((product, coupon, d.converted, product in d.order_products))
    table = pd.DataFrame(rows, columns=["product_id", "coupon", "converted", "bought"])
    table = (
        table.groupby("product_id")
        .agg(
            offers=("coupon", "size"),
            coupons=("coupon", "sum"),
            converted=("converted", "sum"),
            bought=("bought", "sum"),
        )
        .reset_index()
    )
    table["conversion"] = table["converted"] / table["offers"]
    table = table.sort_values(["offers", "product_id"], ascending=[False, True]).head(top)
    return table.astype({"offers": int, "coupons": int, "converted": int, "bought": int})


def products_bought(frame: pd.DataFrame, top: int = 10) -> pd.DataFrame:
    """The ``top`` products of orders attributed to a sent offer: ``orders_after_offer`` (orders
    holding the product) and their ``value_after_offer`` (its line value), the same for orders
    attributed to holdout decisions, and each per 1,000 decisions of its kind (sent offers;
    holdout decisions). Most orders after an offer first."""
    kinds = {"after_offer": frame["sent"], "holdout": frame["arm"] == HOLDOUT}
    parts = []
    for kind, mask in kinds.items():
        rows = [
            (product, value)
            for products in frame.loc[mask & frame["converted"], "order_products"]
            for product, value in products.items()
        ]
        part = pd.DataFrame(rows, columns=["product_id", "value"]).groupby("product_id")["value"]
        parts.append(
            part.agg(["size", "sum"]).rename(
                columns={"size": f"orders_{kind}", "sum": f"value_{kind}"}
            )
        )
    table = pd.concat(parts, axis=1).fillna(0.0).reset_index()
    for kind, mask in kinds.items():
        decisions = int(mask.sum())
        table[f"orders_{kind}"] = table[f"orders_{kind}"].astype(int)
        table[f"per_1000_{kind}"] = (
            table[f"orders_{kind}"] * 1000.0 / decisions if decisions else float("nan")
        )
    table = table.sort_values(
        ["orders_after_offer", "value_after_offer", "product_id"], ascending=[False, False, True]
    )
    return table[
        [
            "product_id",
            "orders_after_offer",
            "value_after_offer",
            "per_1000_after_offer",
            "orders_holdout",
            "value_holdout",
            "per_1000_holdout",
        ]
    ].head(top)


RESULT_COLUMNS = [
    "arm",
    "customers",
    "decisions",
    "offers_sent",
    *(f"{m}{s}" for m in ("conversion", "revenue", "profit") for s in ("", "_low", "_high")),
    *(f"{m}_lift{s}" for m in ("conversion", "profit") for s in ("", "_low", "_high")),
]


def _interval_columns(name: str, interval: Interval | None) -> dict[str, float]:
    if interval is None:
        return dict.fromkeys((name, f"{name}_low", f"{name}_high"), float("nan"))
    return {name: interval.value, f"{name}_low": interval.low, f"{name}_high": interval.high}


def results_by(
    frame: pd.DataFrame, column: str, top: int | None = None, by_size: bool = True
) -> pd.DataFrame:
    """Per value of ``column`` and arm (holdout first): customers, decisions, offers sent,
    conversion, revenue and profit per decision, and the arm's conversion and profit lift over
    the holdout of the same group, each with its 95% interval (``_low``, ``_high``; NaN where
    there is too little data). ``top``: the groups with most decisions, the rest as ``other``
    (last). Groups by decisions (``by_size``) or by their label."""
    groups = frame[column]
    sizes = groups.value_counts()
    if top is not None and len(sizes) > top:
        kept = set(sizes.index[:top])
        groups = groups.where(groups.isin(kept), OTHER)
        sizes = groups.value_counts()
    if by_size:
        order = sorted(sizes.index, key=lambda g: (g == OTHER, -sizes[g], g))
    else:
        order = sorted(sizes.index, key=lambda g: (g == OTHER, g))
    rows = []
    for group in order:
        in_group = frame[groups == group]
        holdout = in_group[in_group["arm"] == HOLDOUT]
        arms = sorted(in_group["arm"].unique(), key=lambda a: (a != HOLDOUT, a))
        for arm in arms:
            rows_of_arm = in_group[in_group["arm"] == arm]
            converted = rows_of_arm["converted"].to_numpy(dtype=float)
            profit = rows_of_arm["profit"].to_numpy(dtype=float)
            lifts: dict[str, Interval | None] = {"conversion_lift": None, "profit_lift": None}
            if arm != HOLDOUT and len(holdout) > 1 and len(rows_of_arm) > 1:
                lifts = {
                    "conversion_lift": difference_interval(
                        converted, holdout["converted"].to_numpy(dtype=float)
                    ),
                    "profit_lift": difference_interval(
                        profit, holdout["profit"].to_numpy(dtype=float)
                    ),
                }
            row = {
                column: group,
                "arm": arm,
                "customers": rows_of_arm["customer_key"].nunique(),
                "decisions": len(rows_of_arm),
                "offers_sent": int(rows_of_arm["sent"].sum()),
                **_interval_columns("conversion", mean_interval(converted)),
                **_interval_columns("revenue", mean_interval(rows_of_arm["revenue"].to_numpy())),
                **_interval_columns("profit", mean_interval(profit)),
            }
            for name, interval in lifts.items():
                row.update(_interval_columns(name, interval))
            rows.append(row)
    return pd.DataFrame(rows, columns=[column, *RESULT_COLUMNS])


def weekly_lift(frame: pd.DataFrame) -> pd.DataFrame:
    """``results_by`` week (the Monday of each decision's week), oldest first."""
    return results_by(frame, "week", by_size=False)


def has_churn_risk(frame: pd.DataFrame) -> bool:
    """Whether any decision of the frame logged a churn-risk feature."""
    return bool((frame["churn_band"] != UNKNOWN).any())


def interval_text(row: pd.Series, name: str, digits: int = 2) -> str:
    """``value [low, high]`` of a result row's interval columns; ``-`` when there is none,
    the value alone when its interval is undefined (one decision)."""
    value = row[name]
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    low, high = row[f"{name}_low"], row[f"{name}_high"]
    if np.isnan(low) or np.isnan(high):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"
