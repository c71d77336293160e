"""Amazon Personalize interactions files as next-purchase training data.

A Personalize interactions dataset is a CSV with ``USER_ID``, ``ITEM_ID``, ``TIMESTAMP`` (Unix
epoch seconds) and usually ``EVENT_TYPE`` (plus optional columns, ignored here). `load_interactions`
turns it into the same per-customer order histories as `models.next_purchase.loading.load_orders`:
``{customer: [(epoch seconds, [product_id, ...]), ...]}`` in time order, product ids normalized
the same way, so `Vocab.build`, `build_examples` and `models.next_purchase.train.fit` take it
unchanged.

- Purchases only: rows whose ``EVENT_TYPE`` is one of ``event_types`` (case-insensitive;
  default ``purchase``, ``order``, ``buy``); without an ``EVENT_TYPE`` column every row counts.
- An order is a customer's purchases at one timestamp; with ``order_window_s`` > 0,
  purchases at most that many seconds after the previous one join the same order.
- Rows with a missing id or a non-numeric timestamp are skipped and counted, never fatal.
- Every item is a product, unless ``product_pattern`` is given (the merchant's rule,
  `streams.state.products.product_rule`): items it does not match are counted as ``non_product``.

``nextbest train --interactions FILE`` trains the next-purchase model on such a file.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from models.next_purchase.encoding import Order
from streams.state.products import normalize_product, product_rule

REQUIRED = ("USER_ID", "ITEM_ID", "TIMESTAMP")
EVERY_ITEM = "."  # the product rule under which every (non-empty) item id is a product
PURCHASE_TYPES = ("purchase", "order", "buy")


@dataclass
class InteractionsReport:
    """Row counts per rule; every row lands in exactly one field."""

    rows: int = 0
    missing_id: int = 0
    bad_timestamp: int = 0
    other_event_type: int = 0
    non_product: int = 0
    kept: int = 0
    customers: int = 0
    orders: int = 0


def load_interactions(
    path: str | Path,
    event_types: tuple[str, ...] = PURCHASE_TYPES,
    order_window_s: float = 0.0,
    product_pattern: str | None = None,
) -> tuple[dict[str, list[Order]], InteractionsReport]:
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    raw = raw.rename(columns=lambda c: str(c).strip().upper())
    missing = [c for c in REQUIRED if c not in raw.columns]
    if missing:
        raise ValueError(f"{path}: not a Personalize interactions file, missing {missing}")
    report = InteractionsReport(rows=len(raw))
    user = raw["USER_ID"].str.strip()
    item = raw["ITEM_ID"].map(normalize_product)
    seconds = pd.to_numeric(raw["TIMESTAMP"].str.strip(), errors="coerce")
    no_id = user.eq("") | item.eq("")
    bad_time = ~no_id & seconds.isna()
    keep = ~no_id & ~bad_time
    if "EVENT_TYPE" in raw.columns:
        wanted = {t.lower() for t in event_types}
        other = keep & ~raw["EVENT_TYPE"].str.strip().str.lower().isin(wanted)
        keep &= ~other
        report.other_event_type = int(other.sum())
    if product_pattern is not None:
        rule = product_rule(product_pattern)
        non_product = keep & ~item.str.match(rule).astype(bool)
        keep &= ~non_product
        report.non_product = int(non_product.sum())
    report.missing_id, report.bad_timestamp = int(no_id.sum()), int(bad_time.sum())
    report.kept = int(keep.sum())
    frame = pd.DataFrame({"user": user[keep], "item": item[keep], "t": seconds[keep]})
    frame = frame.sort_values(["user", "t"], kind="stable")
    orders: dict[str, list[Order]] = {}
    for customer, group in frame.groupby("user", sort=True):
        sequence: list[Order] = []
        last = None
        for t, product in zip(group["t"].tolist(), group["item"].tolist(), strict=True):
            if last is not None and t - last <= order_window_s:
                if product not in sequence[-1][1]:
                    sequence[-1][1].append(product)
            else:
                sequence.append((float(t), [product]))
            last = t
        orders[str(customer)] = sequence
    report.customers = len(orders)
    report.orders = sum(len(s) for s in orders.values())
    return orders, report


def main(argv: list[str]) -> int:
    """``nextbest import-interactions FILE``: load and report (what training would see)."""
    p = argparse.ArgumentParser(prog="nextbest import-interactions", description=__doc__)
    p.add_argument("file", type=Path)
    p.add_argument("--event-types", default=",".join(PURCHASE_TYPES))
    p.add_argument("--order-window-s", type=float, default=0.0)
    p.add_argument("--product-pattern", default=None, help="only items matching this regex")
    args = p.parse_args(argv)
    try:
        product_rule(args.product_pattern)
    except ValueError as exc:
        p.error(f"--product-pattern: {exc}")
    orders, report = load_interactions(
        args.file, tuple(args.event_types.split(",")), args.order_window_s, args.product_pattern
    )
    print(", ".join(f"{k}={v}" for k, v in asdict(report).items()))
    return 0 if orders else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
