"""Customer order sequences from UCI Online Retail files, and the one encoding the model reads.

Loading (`load_orders`) accepts any file of the Online Retail family: csv, csv.gz or xlsx (every
sheet is read, so the two-year "Online Retail II" workbook works), with either column naming
(``InvoiceNo, UnitPrice, CustomerID`` or ``Invoice, Price, Customer ID``). Row handling, in the
order the checks run (a row is counted under the first rule it meets, see `LoadReport`):

* bad rows: an unparseable ``InvoiceDate``, an empty ``StockCode`` or an unparseable
  ``Quantity`` are skipped and counted, never fatal.
* guest lines (no customer id) are dropped: they cannot be linked into a sequence.
* cancellations (invoice number starting with ``C``) are dropped, and the original order stays
  in the sequence: the customer did choose those items, most cancellation lines have no matching
  original in the file, and the live worker records orders as they are placed.
  Adjustments (invoice starting with ``A``, "adjust bad debt") and any other line with a
  quantity <= 0 are dropped as well: they are not purchases.
* non-product codes are dropped. A product's stock code starts with five digits (``85123A``)
  or with ``DCGS`` (gift sets sold on the shop's marketplaces); everything else is postage
  (POST, DOT, C2), fees (AMAZONFEE, BANK CHARGES, CRUK), manual lines and discounts (M, D, S, B),
  PADS, samples, tests, and gift vouchers (``gift_0001_20``). A rule on the code's shape rather
  than a list of names keeps working on files with codes nobody listed.
* stock codes are stripped and upper-cased (``85123a`` and ``85123A`` are one product); customer
  ids lose a spreadsheet's ``.0``.

Kept lines are grouped into orders by (customer, invoice). An order is ``(epoch seconds of its
first line, [distinct product ids in line order])`` and a customer's orders are in time order:
exactly the shape the streaming worker keeps (the last 50 orders per customer). `encode_history`
turns such a list into model input; the training and evaluation sets are built by calling it on
each prefix of the sequences loaded here, so training and serving share one code path.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from streams.products import PRODUCT_CODE, normalize_product, order_products, orders_to_keep
from streams.products import is_product as is_product  # noqa: PLC0414 - serving uses it from here

Order = tuple[float, list[str]]
"""(epoch seconds, [product_id, ...]), the worker's per-order state."""

_COLUMNS = {
    "InvoiceNo": "invoice",
    "Invoice": "invoice",
    "StockCode": "stock_code",
    "Quantity": "quantity",
    "InvoiceDate": "invoice_date",
    "UnitPrice": "price",
    "Price": "price",
    "CustomerID": "customer",
    "Customer ID": "customer",
}
_REQUIRED = ("invoice", "stock_code", "quantity", "invoice_date", "customer")
RECENT_DAYS = 30
_DAY = 86400.0


@dataclass
class LoadReport:
    """Row counts per rule; every row of the file lands in exactly one field."""

    rows: int = 0
    bad_date: int = 0
    missing_stock_code: int = 0
    bad_quantity: int = 0
    guest: int = 0
    cancellation: int = 0
    non_positive: int = 0
    non_product: int = 0
    kept: int = 0


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_raw(path: Path) -> pd.DataFrame:
    if path.suffix.lower() in (".xlsx", ".xls"):
        sheets = pd.read_excel(path, sheet_name=None, dtype=str)
        raw = pd.concat(list(sheets.values()), ignore_index=True)
    else:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    raw = raw.rename(columns=lambda c: _COLUMNS.get(str(c).strip(), str(c).strip()))
    missing = [c for c in _REQUIRED if c not in raw.columns]
    if missing:
        raise ValueError(f"{path}: not an Online Retail file, missing columns {missing}")
    return raw


def _parse_dates(text: pd.Series) -> pd.Series:
    dates = pd.to_datetime(text, errors="coerce")
    retry = dates.isna() & text.notna()
    if retry.any():  # a file mixing formats: parse the leftovers one by one
        dates[retry] = pd.to_datetime(text[retry], errors="coerce", format="mixed")
    return dates


def load_transactions(path: str | Path) -> tuple[pd.DataFrame, LoadReport]:
    """Kept purchase lines: customer, invoice, product, quantity, seconds (epoch, times as UTC)."""
    raw = _read_raw(Path(path))
    report = LoadReport(rows=len(raw))
    invoice = raw["invoice"].fillna("").astype(str).str.strip()
    code = raw["stock_code"].fillna("").astype(str).map(normalize_product)
    customer = (
        raw["customer"].fillna("").astype(str).str.strip().str.replace(r"\.0$", "", regex=True)
    )
    quantity = pd.to_numeric(raw["quantity"], errors="coerce")
    time = _parse_dates(raw["invoice_date"])

    rules = [
        ("bad_date", time.isna()),
        ("missing_stock_code", code.eq("") | code.eq("NAN")),
        ("bad_quantity", quantity.isna()),
        ("guest", customer.eq("") | customer.str.lower().eq("nan")),
        ("cancellation", invoice.str.upper().str.startswith("C")),
        ("non_positive", invoice.str.upper().str.startswith("A") | (quantity <= 0)),
        ("non_product", ~code.str.match(PRODUCT_CODE)),
    ]
    keep = pd.Series(True, index=raw.index)
    for name, hit in rules:
        hit = hit.fillna(True) & keep
        setattr(report, name, int(hit.sum()))
        keep &= ~hit
    report.kept = int(keep.sum())
    lines = pd.DataFrame(
        {
            "customer": customer[keep],
            "invoice": invoice[keep],
            "product": code[keep],
            "quantity": quantity[keep],
            "seconds": time[keep].astype("datetime64[ns]").astype("int64") / 1e9,
        }
    )
    return lines.reset_index(drop=True), report


def orders_from_lines(lines: pd.DataFrame) -> dict[str, list[Order]]:
    """Group kept lines into per-customer, time-ordered orders (ties broken by invoice)."""
    frame = lines.assign(row=np.arange(len(lines)))
    first = frame.groupby(["customer", "invoice"], sort=False)["seconds"].transform("min")
    frame = frame.assign(seconds=first).sort_values(["customer", "seconds", "invoice", "row"])
    orders: dict[str, list[Order]] = {}
    for (cust, _inv), group in frame.groupby(["customer", "invoice"], sort=False):
        products = list(dict.fromkeys(group["product"].tolist()))
        orders.setdefault(str(cust), []).append((float(group["seconds"].iat[0]), products))
    for seq in orders.values():
        seq.sort(key=lambda order: order[0])  # stable: same-second invoices keep invoice order
    return orders


def load_orders(path: str | Path) -> tuple[dict[str, list[Order]], LoadReport]:
    lines, report = load_transactions(path)
    return orders_from_lines(lines), report


def epoch_seconds(date: str) -> float:
    """``2011-10-01`` (or any ISO date-time, read as UTC, like the file's times) in epoch s."""
    stamp = pd.Timestamp(date)
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert(None)
    return stamp.value / 1e9


def split_at(orders: dict[str, list[Order]], cutoff: float) -> tuple[dict, dict]:
    """Per customer: orders strictly before ``cutoff`` (epoch s), and those at or after it."""
    before: dict[str, list[Order]] = {}
    after: dict[str, list[Order]] = {}
    for cust, seq in orders.items():
        pre = [o for o in seq if o[0] < cutoff]
        post = [o for o in seq if o[0] >= cutoff]
        if pre:
            before[cust] = pre
        if post:
            after[cust] = post
    return before, after


@dataclass
class Vocab:
    """The catalogue the model scores: products seen in training, most popular first.

    Index 0 is reserved for padding. Per item, from the training orders: ``popularity``, the
    number of orders holding it; ``recent``, the same over the last `RECENT_DAYS` of the data;
    ``repeat_rate``, how often a customer who bought it buys it again in a later order
    (smoothed towards the catalogue-wide rate).
    """

    items: list[str]
    popularity: list[int]
    recent: list[int]
    repeat_rate: list[float]
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.index = {item: i for i, item in enumerate(self.items)}

    def __len__(self) -> int:
        return len(self.items)

    def get(self, product_id: str) -> int | None:
        return self.index.get(normalize_product(product_id))

    @classmethod
    def build(cls, orders: dict[str, list[Order]]) -> Vocab:
        end = max(t for seq in orders.values() for t, _ in seq)
        counts: dict[str, int] = {}
        recent: dict[str, int] = {}
        trials: dict[str, int] = {}  # later orders of customers who had bought the item
        repeats: dict[str, int] = {}  # ... that hold it again
        for seq in orders.values():
            first: dict[str, int] = {}
            for j, (t, products) in enumerate(seq):
                for p in set(products):
                    counts[p] = counts.get(p, 0) + 1
                    if end - t < RECENT_DAYS * _DAY:
                        recent[p] = recent.get(p, 0) + 1
                    if p in first:
                        repeats[p] = repeats.get(p, 0) + 1
                    else:
                        first[p] = j
            for p, j in first.items():
                trials[p] = trials.get(p, 0) + len(seq) - 1 - j
        prior = sum(repeats.values()) / max(sum(trials.values()), 1)
        ranked = sorted(counts, key=lambda p: (-counts[p], p))
        rate = [(repeats.get(p, 0) + 10 * prior) / (trials.get(p, 0) + 10) for p in ranked]
        return cls(
            ["<pad>", *ranked],
            [0, *(counts[p] for p in ranked)],
            [0, *(recent.get(p, 0) for p in ranked)],
            [prior, *rate],
        )


@dataclass
class EncoderConfig:
    max_orders: int = 50  # the worker keeps the last 50 orders per customer


ORDER_FEATURES = 4
REPEAT_FEATURES = 12


@dataclass
class EncodedHistory:
    """Model input for one customer. Empty (``n_orders == 0``) means cold start.

    order_items / order_lengths: known item ids per order, flattened (orders with no known item
    are left out); order_feats: (n_orders, ORDER_FEATURES); repeat_items: distinct known items;
    repeat_feats: (len(repeat_items), REPEAT_FEATURES).
    """

    order_items: np.ndarray
    order_lengths: np.ndarray
    order_feats: np.ndarray
    repeat_items: np.ndarray
    repeat_feats: np.ndarray

    @property
    def n_orders(self) -> int:
        return len(self.order_lengths)


def encode_history(orders: list[Order], vocab: Vocab, config: EncoderConfig) -> EncodedHistory:
    """Encode a customer's time-ordered orders (the worker's state shape) for the model.

    Only the last ``config.max_orders`` orders count; unknown products are ignored. Times enter
    only as differences, measured back from the most recent order, so no clock is needed.
    Per order: log days since the previous order, log days before the last order, log basket
    size, share of the order's products the vocabulary knows. Per distinct item: how often
    and how recently the customer bought it (in orders and in days), its buying interval, and
    from the vocabulary its popularity (all time and recent) and repeat rate: the
    repeat-purchase features the baselines live on, and more.
    """
    orders = [(seconds, order_products(products)) for seconds, products in orders]
    orders = orders[len(orders) - orders_to_keep([len(products) for _, products in orders]) :]
    kept = []
    for seconds, products in orders[-config.max_orders :]:
        ids = [vocab.get(p) for p in products]
        known = list(dict.fromkeys(i for i in ids if i is not None))
        if known:
            kept.append((float(seconds), known, len(known) / max(len(products), 1)))
    if not kept:
        empty_i = np.zeros(0, dtype=np.int64)
        return EncodedHistory(
            empty_i,
            empty_i,
            np.zeros((0, ORDER_FEATURES), np.float32),
            empty_i,
            np.zeros((0, REPEAT_FEATURES), np.float32),
        )

    last_t = kept[-1][0]
    n = len(kept)
    order_feats = np.zeros((n, ORDER_FEATURES), np.float32)
    first_seen: dict[int, int] = {}
    seen_at: dict[int, list[int]] = {}
    for j, (t, ids, known_share) in enumerate(kept):
        gap = (t - kept[j - 1][0]) / _DAY if j else 0.0
        order_feats[j] = (
            math.log1p(max(gap, 0.0)),
            math.log1p(max(last_t - t, 0.0) / _DAY),
            math.log1p(len(ids)),
            known_share,
        )
        for i in ids:
            first_seen.setdefault(i, j)
            seen_at.setdefault(i, []).append(j)

    items = np.fromiter(seen_at, dtype=np.int64, count=len(seen_at))
    repeat_feats = np.zeros((len(items), REPEAT_FEATURES), np.float32)
    log_n = math.log1p(n)
    for r, i in enumerate(items.tolist()):
        js = seen_at[i]
        count = len(js)
        last_j = js[-1]
        days_since = (last_t - kept[last_j][0]) / _DAY
        days_first = (last_t - kept[js[0]][0]) / _DAY
        interval = days_first / (count - 1) if count > 1 else 0.0
        repeat_feats[r] = (
            math.log1p(count),
            count / n,
            float(last_j == n - 1),
            math.log1p(n - 1 - last_j),
            math.log1p(max(days_since, 0.0)),
            math.log1p(max(days_first, 0.0)),
            math.log1p(interval),
            float(count > 1) * min(max((days_since - interval) / (interval + 7.0), -3.0), 3.0),
            log_n,
            math.log1p(vocab.popularity[i]) / 10.0,
            math.log1p(vocab.recent[i]) / 5.0,
            math.log(vocab.repeat_rate[i]),
        )
    flat = np.fromiter((i for _, ids, _ in kept for i in ids), dtype=np.int64)
    lengths = np.array([len(ids) for _, ids, _ in kept], dtype=np.int64)
    return EncodedHistory(flat, lengths, order_feats, items, repeat_feats)


@dataclass
class Example:
    history: EncodedHistory
    target: np.ndarray  # known item ids of the next order
    customer: str
    seconds: float  # when the target order was placed


def build_examples(
    orders: dict[str, list[Order]], vocab: Vocab, config: EncoderConfig
) -> list[Example]:
    """One example per order that has an earlier order: predict it from what came before.

    The input is `encode_history` of the worker-shaped prefix, so training sees exactly what
    serving sees. Targets with no known product are skipped.
    """
    examples = []
    for cust, seq in orders.items():
        for t in range(1, len(seq)):
            target = [i for i in (vocab.get(p) for p in seq[t][1]) if i is not None]
            if not target:
                continue
            history = encode_history(seq[max(0, t - config.max_orders) : t], vocab, config)
            if history.n_orders:
                examples.append(Example(history, np.array(sorted(set(target))), cust, seq[t][0]))
    return examples
