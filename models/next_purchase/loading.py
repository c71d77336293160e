"""Customer order histories from UCI Online Retail files.

Loading (`load_orders`) accepts any file of the Online Retail family: csv, csv.gz or xlsx (every
sheet is read, so the two-year "Online Retail II" workbook works), with either column naming
(``InvoiceNo, UnitPrice, CustomerID`` or ``Invoice, Price, Customer ID``), matched ignoring case,
spaces, ``_`` and ``-`` (``Customer Id``, ``customer_id``, ``Invoice-No`` all work). The price
column is optional. In a workbook, a sheet with none of these columns (a notes sheet) is skipped,
and a sheet with some but not all the required ones is an error naming the sheet.

Dates: ISO dates with a UTC offset (``2010-12-01T08:26:00Z``, ``... 08:26:00+01:00``) are
converted to UTC, dates without one are read as UTC. Slash dates are month first
(``12/1/2010 8:26``, the UCI export) unless the file shows day first. Evidence is counted over
the file's distinct slash-date strings: day first where only that reading is valid (first field
13-31, second at most 12: ``13/12/2010``), month first where only that one is (``12/13/2010``).
A reading with evidence and at least 10 times the other's is used for every slash date of the
file (``01/12/2010`` is 1 December when day first dominates), and the dates that contradict it
(a typo) are bad dates on their own. With no evidence at all, month first. When neither reading
dominates, the file cannot be read without guessing: all its slash dates are bad dates.

Row handling, in the order the checks run (a row is counted under the first rule it meets, see
`LoadReport`):

* bad rows: an unparseable ``InvoiceDate``, an empty ``StockCode`` or an unparseable
  ``Quantity`` are skipped and counted, never fatal.
* guest lines (no customer id) are dropped: they cannot be linked into a sequence.
* bad prices: a customer's line with a negative ``UnitPrice`` is skipped and counted
  (``bad_price``). Prices are read leniently: currency symbols, letters and spaces are ignored
  (``£2.55``); with both ``,`` and ``.`` the comma separates thousands (``1,234.5``), with only a
  comma it is the decimal mark (``2,55``). The price is not used, so an unparseable price (or
  none, or no price column) does not drop the line. A zero price is kept: a free item is still a
  purchase. Guest lines are counted as guests whatever their price (the UCI file's only negative
  prices are two guest "adjust bad debt" lines).
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

A row repeated exactly is kept twice (the UCI file has 5,268 such rows; nothing tells a line
entered twice from the same item scanned twice): `load_transactions` returns both lines, so
their quantities add up where units are counted, and the order lists the product once.

Kept lines are grouped into orders by (customer, invoice). An order is ``(epoch seconds of its
first line, [distinct product ids in line order])`` and a customer's orders are in time order:
exactly the shape the streaming worker keeps (the last 50 orders per customer).
`models.next_purchase.encoding.encode_history` turns such a list into model input; the training
and evaluation sets are built by calling it on each prefix of the sequences loaded here
(`models.next_purchase.examples.build_examples`), so training and serving share one code path.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pandas.tseries.api import guess_datetime_format

from models.next_purchase.encoding import Order
from streams.state.products import PRODUCT_CODE, normalize_product

_COLUMNS = {
    "invoiceno": "invoice",
    "invoice": "invoice",
    "stockcode": "stock_code",
    "quantity": "quantity",
    "invoicedate": "invoice_date",
    "unitprice": "price",
    "price": "price",
    "customerid": "customer",
}
"""Column name, lower case without spaces, ``_`` or ``-`` -> the loader's field."""
_REQUIRED = ("invoice", "stock_code", "quantity", "invoice_date", "customer")
_DOMINANCE = 10
"""A slash-date reading is used when it has this many times the other's evidence."""
_SLASH_DATE = r"^\s*(\d{1,2})/(\d{1,2})/\d"
"""A date written ``first/second/year...``: month/day or day/month."""


@dataclass
class LoadReport:
    """Row counts per rule; every row of the file lands in exactly one field."""

    rows: int = 0
    bad_date: int = 0
    missing_stock_code: int = 0
    bad_quantity: int = 0
    guest: int = 0
    bad_price: int = 0
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


def _field_names(columns: pd.Index, path: Path) -> dict[str, str]:
    """File column -> loader field, names matched ignoring case, spaces, ``_`` and ``-``."""
    column_of: dict[str, str] = {}
    for column in columns:
        name = _COLUMNS.get(re.sub(r"[\s_-]", "", str(column)).lower())
        if name in column_of:
            raise ValueError(
                f"{path}: columns {column_of[name]!r} and {column!r} both read as {name}"
            )
        if name is not None:
            column_of[name] = column
    return {column: name for name, column in column_of.items()}


WORKBOOK_SUFFIXES = (".xlsx", ".xls")


def read_sheets(path: Path) -> dict[str, pd.DataFrame]:
    """Every sheet of a workbook, in order, cells as text (empty cells NaN).

    Read with calamine (Rust): on a 1.08-million-row workbook shaped like Online Retail II it
    takes 15 s where openpyxl took 58 s, with the same lines loaded (BENCHMARKS.md).
    """
    return pd.read_excel(path, sheet_name=None, dtype=str, engine="calamine")


def _read_raw(path: Path) -> pd.DataFrame:
    """The file's rows with columns renamed to loader fields; every sheet of a workbook."""
    if path.suffix.lower() in WORKBOOK_SUFFIXES:
        frames = []
        for sheet_name, sheet in read_sheets(path).items():
            names = _field_names(sheet.columns, path)
            if not names:
                continue  # no column of the family at all: a notes or summary sheet
            missing = [c for c in _REQUIRED if c not in names.values()]
            if missing:
                raise ValueError(f"{path}: sheet {sheet_name!r} is missing columns {missing}")
            frames.append(sheet.rename(columns=names))
        raw = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    else:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        raw = raw.rename(columns=_field_names(raw.columns, path))
    missing = [c for c in _REQUIRED if c not in raw.columns]
    if missing:
        raise ValueError(f"{path}: not an Online Retail file, missing columns {missing}")
    return raw


def _parse_dates(text: pd.Series) -> pd.Series:
    """Naive UTC times of date strings, NaT where unparseable (see the module docstring)."""
    dates = pd.to_datetime(text, errors="coerce", format="ISO8601", utc=True)
    rest = dates.isna() & text.notna()
    if rest.any():  # not ISO (slash dates, or a file mixing formats): each distinct one once
        other = text[rest]
        distinct = pd.Series(other.unique())
        dates[rest] = _parse_non_iso(distinct).iloc[pd.Index(distinct).get_indexer(other)].array
    return dates.dt.tz_convert(None)


def _parse_non_iso(text: pd.Series) -> pd.Series:
    """`_parse_dates` of distinct non-ISO strings: slash dates month or day first, by the file."""
    fields = text.str.extract(_SLASH_DATE).apply(pd.to_numeric)
    first, second = fields[0], fields[1]
    slash = first.notna()
    day_only = int((first.between(13, 31) & second.le(12)).sum())  # only readable day first
    month_only = int((second.between(13, 31) & first.le(12)).sum())  # ... or month first
    dates = _parse_like_first(text.where(~slash), day_first=False)
    if day_only and day_only >= _DOMINANCE * month_only:
        day_first = True
    elif not day_only or month_only >= _DOMINANCE * day_only:
        day_first = False
    else:  # neither reading dominates: all slash dates stay NaT
        return dates
    month = second if day_first else first
    readable = slash & month.le(12)  # a month over 12 contradicts the reading: stays NaT
    dates[readable] = _parse_like_first(text[readable], day_first=day_first)
    return dates


def _parse_like_first(text: pd.Series, day_first: bool) -> pd.Series:
    """UTC times of date strings: in the format of the first one (fast), and those not in it
    one by one."""
    dates = pd.Series(pd.NaT, index=text.index, dtype="datetime64[us, UTC]")
    known = text.dropna()
    layout = guess_datetime_format(known.iat[0], dayfirst=day_first) if len(known) else None
    if layout is not None:
        dates[:] = pd.to_datetime(text, errors="coerce", format=layout, utc=True)
    retry = dates.isna() & text.notna()
    if retry.any():
        dates[retry] = pd.to_datetime(
            text[retry], errors="coerce", format="mixed", dayfirst=day_first, utc=True
        )
    return dates


def _parse_prices(text: pd.Series) -> pd.Series:
    """Lenient prices (see the module docstring), NaN where unparseable."""
    digits = text.fillna("").astype(str).str.replace(r"[^\d,.+-]", "", regex=True)
    thousands = digits.str.contains(",", regex=False) & digits.str.contains(".", regex=False)
    digits = digits.where(~thousands, digits.str.replace(",", "", regex=False))
    return pd.to_numeric(digits.str.replace(",", ".", regex=False), errors="coerce")


def load_transactions(
    path: str | Path, product_pattern: str | None = None
) -> tuple[pd.DataFrame, LoadReport]:
    """Kept purchase lines: customer, invoice, product, quantity, seconds (epoch, times as UTC),
    spend (quantity x price; 0 without a price column).

    ``product_pattern``: a merchant's own product rule (`streams.state.products.product_rule`) in
    place of the UCI stock-code rule.
    """
    raw = _read_raw(Path(path))
    report = LoadReport(rows=len(raw))
    invoice = raw["invoice"].fillna("").astype(str).str.strip()
    code = raw["stock_code"].fillna("").astype(str).map(normalize_product)
    customer = (
        raw["customer"].fillna("").astype(str).str.strip().str.replace(r"\.0$", "", regex=True)
    )
    quantity = pd.to_numeric(raw["quantity"], errors="coerce")
    negative_price = pd.Series(False, index=raw.index)
    if "price" in raw.columns:
        negative_price = _parse_prices(raw["price"]) < 0  # NaN (unparseable): not negative
    time = _parse_dates(raw["invoice_date"])

    rules = [
        ("bad_date", time.isna()),
        ("missing_stock_code", code.eq("") | code.eq("NAN")),
        ("bad_quantity", quantity.isna()),
        ("guest", customer.eq("") | customer.str.lower().eq("nan")),
        ("bad_price", negative_price),
        ("cancellation", invoice.str.upper().str.startswith("C")),
        ("non_positive", invoice.str.upper().str.startswith("A") | (quantity <= 0)),
        ("non_product", ~code.str.match(product_pattern or PRODUCT_CODE, case=False)),
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
            "spend": (quantity * _parse_prices(raw["price"]))[keep].fillna(0.0)
            if "price" in raw.columns
            else 0.0,
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


def load_orders(
    path: str | Path, product_pattern: str | None = None
) -> tuple[dict[str, list[Order]], LoadReport]:
    lines, report = load_transactions(path, product_pattern)
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
