"""Loading Online Retail files and the training/serving parity of `encode_history` (and of
its batched serving fast path, `encode_batch`)."""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from models.next_purchase.encoding import (
    EncodedHistory,
    EncoderConfig,
    ItemTimeline,
    Vocab,
    encode_batch,
    encode_history,
)
from models.next_purchase.examples import build_examples
from models.next_purchase.loading import load_orders, load_transactions
from streams.state.products import is_product

OLD = ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice"]
OLD += ["CustomerID", "Country"]
NEW = ["Invoice", "StockCode", "Description", "Quantity", "InvoiceDate", "Price"]
NEW += ["Customer ID", "Country"]

# invoice, code, qty, date, customer
ROWS = [
    ("536365", "85123A", "6", "2010-12-01 08:26:00", "17850"),
    ("536365", "71053", "6", "2010-12-01 08:26:00", "17850"),
    ("536365", "71053", "2", "2010-12-01 08:26:00", "17850"),  # same product twice: one item
    ("536365", "POST", "1", "2010-12-01 08:26:00", "17850"),  # postage
    ("536366", "22633", "6", "2010-12-01 08:28:00", ""),  # guest
    ("536367", "84879", "32", "not a date", "13047"),  # bad date
    ("536368", "", "3", "2010-12-01 09:00:00", "13047"),  # missing stock code
    ("536369", "22745", "many", "2010-12-01 09:01:00", "13047"),  # bad quantity
    ("C536379", "85123A", "-1", "2010-12-02 09:41:00", "17850"),  # cancellation
    ("A563185", "B", "1", "2011-08-12 14:50:00", "13047"),  # adjust bad debt
    ("536370", "22728", "-5", "2010-12-02 10:00:00", "13047"),  # negative, not a cancellation
    ("536371", "gift_0001_20", "1", "2010-12-03 10:00:00", "13047"),  # voucher
    ("536371", "BANK CHARGES", "1", "2010-12-03 10:00:00", "13047"),
    ("536371", "AMAZONFEE", "1", "2010-12-03 10:00:00", "13047"),
    ("536371", "DOT", "1", "2010-12-03 10:00:00", "13047"),
    ("536371", "M", "1", "2010-12-03 10:00:00", "13047"),
    ("536371", "C2", "1", "2010-12-03 10:00:00", "13047"),
    ("536371", "15056bl", "1", "2010-12-03 10:00:00", "13047"),  # lower-case product code
    ("536371", "DCGSSBOY", "1", "2010-12-03 10:00:00", "13047"),  # a marketplace gift set
    ("536372", "85123A", "2", "2010-12-05 10:00:00", "17850"),
    ("536364", "22423", "1", "2010-11-30 10:00:00", "17850"),  # earlier invoice, later row
]


def _frame(columns: list[str], rows=ROWS) -> pd.DataFrame:
    inv, code, qty, date, cust = (list(c) for c in zip(*rows, strict=True))
    return pd.DataFrame(
        dict(
            zip(
                columns,
                [
                    inv,
                    code,
                    ["x"] * len(rows),
                    qty,
                    date,
                    ["1.0"] * len(rows),
                    cust,
                    ["UK"] * len(rows),
                ],
                strict=True,
            )
        )
    )


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def _check(orders: dict, report) -> None:
    assert report.rows == len(ROWS)
    assert (report.bad_date, report.missing_stock_code, report.bad_quantity) == (1, 1, 1)
    assert (report.guest, report.cancellation, report.non_positive) == (1, 1, 2)
    assert report.non_product == 7
    assert report.kept == 7
    assert sum(vars(report).values()) - report.rows == report.rows
    assert set(orders) == {"17850", "13047"}
    assert orders["17850"] == [
        (_epoch("2010-11-30 10:00:00"), ["22423"]),
        (_epoch("2010-12-01 08:26:00"), ["85123A", "71053"]),
        (_epoch("2010-12-05 10:00:00"), ["85123A"]),
    ]
    assert orders["13047"] == [(_epoch("2010-12-03 10:00:00"), ["15056BL", "DCGSSBOY"])]


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
@pytest.mark.parametrize("columns", [OLD, NEW], ids=["Online Retail", "Online Retail II"])
def test_csv_both_namings(tmp_path, columns, suffix):
    path = tmp_path / f"retail{suffix}"
    _frame(columns).to_csv(path, index=False)
    _check(*load_orders(path))


@pytest.mark.parametrize(
    "columns",
    [
        ["invoice no", "STOCKCODE", "description", " Quantity ", "Invoice Date", "unit price"]
        + ["Customer Id", "country"],
        ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice"]
        + ["customerid", "Country"],
        ["Invoice-No", "stock_code", "description", "QUANTITY", "invoice_date", "unit_price"]
        + ["customer_id", "country"],
        ["invoice_no", "stock_code", "description", "QUANTITY", "invoice_date", "Unit-Price"]
        + ["Customer - ID", "country"],
    ],
    ids=["case and spaces", "customerid", "underscores and hyphens", "mixed"],
)
def test_column_names_ignore_case_spaces_underscores_and_hyphens(tmp_path, columns):
    path = tmp_path / "retail.csv"
    _frame(columns).to_csv(path, index=False)
    _check(*load_orders(path))


def test_xlsx_every_sheet_and_float_customer_ids(tmp_path):
    frame = _frame(NEW)
    frame["Customer ID"] = [f"{c}.0" if c else "" for c in frame["Customer ID"]]
    path = tmp_path / "online_retail_II.xlsx"
    with pd.ExcelWriter(path) as xl:
        frame.iloc[:10].to_excel(xl, sheet_name="Year 2009-2010", index=False)
        frame.iloc[10:].to_excel(xl, sheet_name="Year 2010-2011", index=False)
    _check(*load_orders(path))


def test_xlsx_notes_sheet_skipped_and_incomplete_sheet_refused(tmp_path):
    """A sheet with no column of the family is skipped; one missing a required column (here
    the customer id, which would turn every line into a guest) is an error naming it."""
    path = tmp_path / "retail.xlsx"
    notes = pd.DataFrame({"Notes": ["exported 2011-12-09"]})
    with pd.ExcelWriter(path) as xl:
        notes.to_excel(xl, sheet_name="About", index=False)
        _frame(NEW).to_excel(xl, sheet_name="Year 2010-2011", index=False)
    _check(*load_orders(path))
    with pd.ExcelWriter(path) as xl:
        _frame(NEW).iloc[:10].to_excel(xl, sheet_name="Year 2009-2010", index=False)
        part = _frame(NEW).iloc[10:].drop(columns=["Customer ID", "Quantity"])
        part.to_excel(xl, sheet_name="Year 2010-2011", index=False)
    with pytest.raises(
        ValueError, match=r"sheet 'Year 2010-2011' is missing columns \['quantity', 'customer'\]"
    ):
        load_transactions(path)
    with pd.ExcelWriter(path) as xl:
        notes.to_excel(xl, sheet_name="About", index=False)
    with pytest.raises(ValueError, match="not an Online Retail file, missing columns"):
        load_transactions(path)


def test_price_column_is_optional(tmp_path):
    path = tmp_path / "retail.csv"
    _frame(OLD).drop(columns="UnitPrice").to_csv(path, index=False)
    _check(*load_orders(path))


def test_not_an_online_retail_file(tmp_path):
    path = tmp_path / "other.csv"
    pd.DataFrame({"a": [1]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="missing columns"):
        load_transactions(path)
    _frame(OLD).drop(columns="CustomerID").to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"missing columns \['customer'\]"):
        load_transactions(path)
    _frame(OLD).assign(Invoice="1").to_csv(path, index=False)  # two invoice columns
    with pytest.raises(ValueError, match="'InvoiceNo' and 'Invoice' both read as invoice"):
        load_transactions(path)


def _load_dates(tmp_path, dates: list[str]) -> tuple[list[float], int]:
    """Seconds of the kept lines (one per date, in file order) and the bad_date count."""
    rows = [(str(i), "85123A", "1", date, "1") for i, date in enumerate(dates)]
    path = tmp_path / "dates.csv"
    _frame(OLD, rows).to_csv(path, index=False)
    lines, report = load_transactions(path)
    return lines["seconds"].tolist(), report.bad_date


@pytest.mark.parametrize(
    "dates",
    [
        ["2010-12-01T08:26:00Z", "2010-12-01 09:26:00+01:00", "2010-12-01T03:26:00-05:00"],
        ["2010-12-01 08:26:00", "2010-12-01T08:26:00Z", "2010-12-01 09:26:00+01:00"],
    ],
    ids=["all aware", "mixed with naive"],
)
def test_dates_with_an_offset_are_converted_to_utc(tmp_path, dates):
    seconds, bad = _load_dates(tmp_path, [*dates, "2010-12-01 25:00:00+01:00"])
    assert bad == 1
    assert seconds == [_epoch("2010-12-01 08:26:00")] * 3


def test_day_first_slash_dates(tmp_path):
    """One slash date that can only be day first makes them all day first."""
    dates = ["01/12/2010 08:26", "13/12/2010 09:00", "2/12/2010", "2010-12-14 10:00:00"]
    seconds, bad = _load_dates(tmp_path, [*dates, "13/13/2010 09:00"])  # last: no date at all
    assert bad == 1
    assert seconds == [
        _epoch("2010-12-01 08:26:00"),
        _epoch("2010-12-13 09:00:00"),
        _epoch("2010-12-02 00:00:00"),
        _epoch("2010-12-14 10:00:00"),
    ]
    # without such a date, slash dates stay month first (the UCI export's 12/1/2010 8:26)
    seconds, bad = _load_dates(tmp_path, ["01/12/2010 08:26", "12/13/2010 9:00"])
    assert bad == 0
    assert seconds == [_epoch("2010-01-12 08:26:00"), _epoch("2010-12-13 09:00:00")]


def test_slash_dates_both_ways_are_bad_dates(tmp_path):
    """13/12 and 12/13 in one file, neither 10 times the other: no slash date of it can be
    read without guessing."""
    dates = ["13/12/2010 09:00", "12/13/2010 09:00", "01/12/2010 08:26", "2010-12-01 08:26:00"]
    seconds, bad = _load_dates(tmp_path, dates)
    assert bad == 3
    assert seconds == [_epoch("2010-12-01 08:26:00")]
    day_first = [f"{13 + i}/12/2010 09:00" for i in range(9)]  # 9 against 1: not 10 times
    seconds, bad = _load_dates(tmp_path, [*day_first, "12/13/2010 09:00", "2010-12-01 08:26:00"])
    assert bad == 10
    assert seconds == [_epoch("2010-12-01 08:26:00")]


@pytest.mark.parametrize("day_first", [True, False], ids=["day first", "month first"])
def test_one_contradicting_slash_date_is_the_only_bad_one(tmp_path, day_first):
    """A reading with 10 times the other's evidence wins; the typo that contradicts it is a bad
    date (not read the other way round), every other slash date is read the winning way."""
    good = [f"{13 + i % 18}/12/2010 {9 + i // 18}:{i:02d}" for i in range(30)]
    typo, ambiguous = "12/13/2010 09:00", "01/12/2010 08:26"
    if not day_first:
        good = ["/".join([b, a, *rest]) for a, b, *rest in (d.split("/") for d in good)]
        typo = "13/12/2010 09:00"
    seconds, bad = _load_dates(tmp_path, [*good, typo, ambiguous])
    assert bad == 1
    assert len(seconds) == 31
    assert seconds[0] == _epoch("2010-12-13 09:00:00")
    assert seconds[-1] == _epoch("2010-12-01 08:26:00" if day_first else "2010-01-12 08:26:00")


def test_bad_prices(tmp_path):
    """Only a negative price is a bad row, counted after guests and before the cancellation
    rule; prices are read leniently and an unparseable one keeps its line (the price is not
    used); a zero price is a purchase (a free item)."""
    # invoice, code, qty, date, customer, price
    rows = [
        ("1", "85123A", "1", "2010-12-01 08:26:00", "7", "2.55"),
        ("1", "71053", "1", "2010-12-01 08:26:00", "7", "0"),  # free: kept
        ("1", "22633", "1", "2010-12-01 08:26:00", "7", "-2.55"),
        ("1", "22634", "1", "2010-12-01 08:26:00", "7", "£2.55"),
        ("1", "22635", "1", "2010-12-01 08:26:00", "7", ""),
        ("1", "22636", "1", "2010-12-01 08:26:00", "7", "1,234.5"),
        ("1", "22637", "1", "2010-12-01 08:26:00", "7", "2,55"),
        ("1", "22638", "1", "2010-12-01 08:26:00", "7", "abc"),
        ("1", "22639", "1", "2010-12-01 08:26:00", "7", "-3.0"),
        ("1", "22640", "1", "2010-12-01 08:26:00", "7", "- £1,234.50 GBP"),
        ("A2", "B", "1", "2010-12-01 08:26:00", "", "-11062.06"),  # guest first
        ("C3", "85123A", "-1", "2010-12-02 08:26:00", "7", "-2.55"),  # bad price first
        ("C3", "85123A", "-1", "2010-12-02 08:26:00", "7", "2.55"),
    ]
    frame = _frame(OLD, [row[:5] for row in rows]).assign(UnitPrice=[row[5] for row in rows])
    path = tmp_path / "prices.csv"
    frame.to_csv(path, index=False)
    lines, report = load_transactions(path)
    assert (report.guest, report.bad_price, report.cancellation) == (1, 4, 1)
    assert report.kept == 7
    assert lines["product"].tolist() == [
        "85123A",
        "71053",
        "22634",
        "22635",
        "22636",
        "22637",
        "22638",
    ]


def test_an_exact_duplicate_row_is_the_same_line_twice(tmp_path):
    """Both lines are kept (their quantities add up); the order lists the product once."""
    rows = [("1", "85123A", "6", "2010-12-01 08:26:00", "7")] * 2
    rows += [("1", "71053", "2", "2010-12-01 08:26:00", "7")]
    path = tmp_path / "duplicates.csv"
    _frame(OLD, rows).to_csv(path, index=False)
    lines, report = load_transactions(path)
    assert report.kept == 3
    assert lines.groupby("product")["quantity"].sum().to_dict() == {"85123A": 12, "71053": 2}
    orders, _ = load_orders(path)
    assert orders == {"7": [(_epoch("2010-12-01 08:26:00"), ["85123A", "71053"])]}


def test_other_date_format(tmp_path):
    rows = [("1", "85123A", "1", "12/1/2010 8:26", "1"), ("2", "85123A", "1", "bad", "1")]
    path = tmp_path / "r.csv"
    _frame(OLD, rows).to_csv(path, index=False)
    orders, report = load_orders(path)
    assert report.bad_date == 1
    assert orders == {"1": [(_epoch("2010-12-01 08:26:00"), ["85123A"])]}


def _many_orders_file(tmp_path) -> tuple:
    """Two customers; one with more orders than the worker keeps, and POST-only invoices."""
    rng = np.random.default_rng(0)
    products = [f"{20000 + i}" for i in range(12)] + ["84029e"]
    rows = []
    for n, cust in ((60, "1"), (8, "2")):
        for j in range(n):
            date = pd.Timestamp("2011-01-01") + pd.Timedelta(hours=int(j * 37 + int(cust)))
            basket = rng.choice(products, size=rng.integers(1, 5), replace=False)
            for code in basket:
                rows.append((f"{cust}{j:03d}", code, "1", str(date), cust))
            if j % 7 == 3:  # a postage-only invoice: not an order in training data
                rows.append(
                    (f"P{cust}{j:03d}", "POST", "1", str(date + pd.Timedelta(1, "h")), cust)
                )
    path = tmp_path / "many.csv"
    _frame(OLD, rows).to_csv(path, index=False)
    return path, rows


def test_encode_history_parity_with_worker_state(tmp_path):
    """Training examples equal encode_history of the worker's last-50-orders state, scored at
    the moment of the order with that moment's catalogue statistics."""
    path, rows = _many_orders_file(tmp_path)
    orders, _ = load_orders(path)
    vocab = Vocab.build(orders)
    timeline = vocab.timeline(orders)
    config = EncoderConfig()
    examples = {(e.customer, e.seconds): e for e in build_examples(orders, vocab, config)}
    assert len(examples) == 59 + 7

    # What the streaming worker sees: raw product ids, one event per product order.
    events: dict[str, dict[str, tuple[float, list[str]]]] = {}
    for inv, code, _, date, cust in rows:
        if not is_product(code):
            continue  # the worker drops non-product lines with the loader's rule
        events.setdefault(cust, {}).setdefault(inv, (_epoch(date), []))[1].append(code)
    compared = 0
    for cust, invoices in events.items():
        state: deque = deque(maxlen=50)
        for seconds, products in sorted(invoices.values()):
            if state:
                want = encode_history(
                    list(state), vocab, config, now=seconds, stats=timeline.at(seconds)
                )
                got = examples[(cust, seconds)].history
                fields = (
                    "order_items",
                    "order_lengths",
                    "order_feats",
                    "repeat_items",
                    "catalogue",
                )
                for field in fields:
                    np.testing.assert_array_equal(getattr(got, field), getattr(want, field))
                np.testing.assert_allclose(got.repeat_feats, want.repeat_feats, rtol=1e-6)
                np.testing.assert_array_equal(got.catalogue, want.catalogue)
                compared += 1
            state.append((seconds, products))
    assert compared == len(examples)
    longest = max(e.history.n_orders for e in examples.values())
    assert longest == config.max_orders


def test_encode_history_features():
    vocab = Vocab(
        ["<pad>", "20001A", "20002B", "20003C"], [0, 5, 3, 1], [0, 1, 1, 0], [0.2, 0.3, 0.2, 0.1]
    )
    day = 86400.0
    # 99999 is a product the vocabulary does not know; POST is not a product at all
    orders = [
        (0.0, ["20001A", "99999", "POST"]),
        (10 * day, ["20002b", "20001A"]),
        (30 * day, ["20001A"]),
    ]
    enc = encode_history(orders, vocab, EncoderConfig(max_orders=50))
    assert enc.order_items.tolist() == [1, 2, 1, 1] and enc.order_lengths.tolist() == [1, 2, 1]
    np.testing.assert_allclose(enc.order_feats[:, 0], np.log1p([0, 10, 20]), rtol=1e-6)
    np.testing.assert_allclose(enc.order_feats[:, 3], [0.5, 1.0, 1.0])
    counts = dict(zip(enc.repeat_items.tolist(), enc.repeat_feats[:, 0], strict=True))
    assert counts == pytest.approx({1: np.log1p(3), 2: np.log1p(1)})
    assert encode_history(orders, vocab, EncoderConfig(max_orders=1)).n_orders == 1
    assert encode_history([(0.0, ["99999", "POST"])], vocab, EncoderConfig()).n_orders == 0


def test_encode_history_measures_time_back_from_now():
    vocab = Vocab(["<pad>", "20001", "20002"], [0, 5, 3], [0, 1, 1], [0.2, 0.3, 0.2], [0, 1, 0])
    day = 86400.0
    orders = [(0.0, ["20001"]), (10 * day, ["20002", "20001"])]
    config = EncoderConfig()
    at_last = encode_history(orders, vocab, config)
    later = encode_history(orders, vocab, config, now=40 * day)
    for enc in (at_last, encode_history(orders, vocab, config, now=5 * day)):  # clamped
        np.testing.assert_allclose(enc.order_feats[:, 1], np.log1p([10, 0]), rtol=1e-6)
    np.testing.assert_allclose(later.order_feats[:, 1], np.log1p([40, 30]), rtol=1e-6)
    np.testing.assert_array_equal(
        later.order_feats[:, [0, 2, 3]], at_last.order_feats[:, [0, 2, 3]]
    )
    days_since = dict(zip(later.repeat_items.tolist(), later.repeat_feats[:, 4], strict=True))
    assert days_since == pytest.approx({1: np.log1p(30), 2: np.log1p(30)})
    assert later.repeat_feats[0, 9] == pytest.approx(np.log1p(30))  # days since the last order
    assert at_last.repeat_feats[0, 9] == 0.0
    np.testing.assert_array_equal(later.catalogue, vocab.stats.features())
    catalogue = vocab.stats.features()[later.repeat_items]
    np.testing.assert_array_equal(later.repeat_feats[:, 11:], catalogue)


def test_item_timeline_sees_only_earlier_days():
    day = 86400.0
    orders = {
        "a": [(0.5 * day, ["20001", "20002"]), (3.2 * day, ["20001"]), (40.1 * day, ["20002"])],
        "b": [(3.7 * day, ["20002"]), (4.0 * day, ["20001", "20002"])],
    }
    vocab = Vocab.build(orders)
    one, two = vocab.index["20001"], vocab.index["20002"]
    timeline = vocab.timeline(orders)
    assert isinstance(timeline, ItemTimeline)
    first = timeline.at(0.9 * day)  # nothing before day 0
    assert first.popularity.sum() == 0
    on_day_3 = timeline.at(3.9 * day)  # only the day-0 order: day 3 is "today"
    assert on_day_3.popularity[[one, two]].tolist() == [1, 1]
    day_5 = timeline.at(5 * day)
    assert day_5.popularity[[one, two]].tolist() == [3, 3]
    assert day_5.week[[one, two]].tolist() == [3, 3]
    # a's day-3 order re-buys 20001 (1 repeat in 1 trial for 20001, 0 in 1 for 20002);
    # b's day-4 order re-buys 20002 (1 in 1): 2 repeats in 3 trials overall
    prior = 2 / 3
    assert day_5.repeat_rate[one] == pytest.approx((1 + 10 * prior) / (1 + 10))
    assert day_5.repeat_rate[two] == pytest.approx((1 + 10 * prior) / (2 + 10))
    quiet = timeline.at(40.5 * day)  # the last 30 days before day 40 have no order
    assert quiet.week.sum() == quiet.recent.sum() == 0
    # serving, at any time after the data, sees the statistics at the end of the data
    end = timeline.final()
    assert timeline.at(400 * day) is end
    assert end.week[[one, two]].tolist() == [0, 1] and end.popularity[two] == 4
    for name in ("popularity", "recent", "week"):
        np.testing.assert_array_equal(getattr(vocab.stats, name), getattr(end, name))
    np.testing.assert_allclose(vocab.stats.repeat_rate, end.repeat_rate, rtol=1e-6)


def test_examples_scored_between_orders(tmp_path):
    """With an rng, each example is scored at a moment in the gap before its target order."""
    path, _ = _many_orders_file(tmp_path)
    orders, _ = load_orders(path)
    vocab = Vocab.build(orders)
    at_order = build_examples(orders, vocab, EncoderConfig())
    between = build_examples(orders, vocab, EncoderConfig(), rng=np.random.default_rng(0))
    assert [(e.customer, e.seconds) for e in between] == [(e.customer, e.seconds) for e in at_order]
    idle = np.array([e.history.order_feats[-1, 1] for e in between])  # log days, last order->now
    gap = np.array([e.history.order_feats[-1, 1] for e in at_order])  # ... -> the target order
    assert (idle >= 0).all() and (idle <= gap + 1e-6).all()
    assert (idle < gap - 1e-3).mean() > 0.9
    for a, b in zip(at_order, between, strict=True):
        np.testing.assert_array_equal(a.target, b.target)
        np.testing.assert_array_equal(a.history.order_items, b.history.order_items)


def assert_same_encoding(got: EncodedHistory, want: EncodedHistory) -> None:
    """Bit for bit: same shapes, dtypes and bytes (so -0.0 is not 0.0)."""
    for name in ("order_items", "order_lengths", "order_feats", "repeat_items", "repeat_feats"):
        a, b = getattr(got, name), getattr(want, name)
        assert (a.shape, a.dtype) == (b.shape, b.dtype), name
        assert a.tobytes() == b.tobytes(), name
    assert got.catalogue is want.catalogue


def test_encode_batch_is_encode_history_bit_for_bit(tmp_path):
    """The serving fast path equals `encode_history` row by row, for the worker's clean
    histories and for every input it must clean itself: raw ids, non-products, duplicates,
    unknown products, empty and oversized orders, cold starts; any scoring times."""
    path, _ = _many_orders_file(tmp_path)
    orders, _ = load_orders(path)
    vocab = Vocab.build(orders)
    config = EncoderConfig()
    day = 86400.0
    clean = [seq[max(0, t - 50) : t] for seq in orders.values() for t in range(len(seq) + 1)]
    big = [f"{30000 + i}" for i in range(300)]  # unknown products, more than an order keeps
    known = vocab.items[1:4]
    raw = [
        [(0.0, [known[0].lower(), " " + known[1], "POST"]), (day, [known[2], known[2], "99999"])],
        [(0.0, ["POST", "gift_0001_20"]), (2 * day, [*known, *big])],
        [(0.0, []), (day, [known[0]]), (day, ["<pad>", known[1]])],
        [(float(j), [known[j % 3]]) for j in range(70)],  # more orders than the state keeps
        [(0.0, ["99999"])],
        [],
    ]
    histories = clean + raw
    rng = np.random.default_rng(1)
    times = [
        None if not h or rng.random() < 0.3 else h[-1][0] + rng.random() * 40 * day - day
        for h in histories
    ]
    for batch in (1, 5, len(histories)):
        for start in range(0, len(histories), batch):
            rows = slice(start, start + batch)
            encoded = encode_batch(histories[rows], vocab, config, times[rows])
            for row, (h, t) in enumerate(zip(histories[rows], times[rows], strict=True)):
                want = encode_history(h, vocab, config, now=t)
                assert encoded.n_orders[row] == want.n_orders
                assert_same_encoding(encoded.history(row), want)
    cold = encode_batch([[], [(0.0, ["POST"])]], vocab, config)
    assert cold.n_orders.tolist() == [0, 0] and cold.repeat_feats.shape == (0, 16)


def test_encode_batch_with_a_merchants_product_rule():
    vocab = Vocab(["<pad>", "SKU-1", "SKU-2", "85123A"], [0, 5, 3, 2], [0] * 4, [0.2] * 4)
    config = EncoderConfig(product_pattern=r"SKU-\d+$")
    assert vocab.clean_index(config.product_pattern) == {"SKU-1": 1, "SKU-2": 2}
    assert vocab.clean_index() == {"85123A": 3}
    histories = [
        [(0.0, ["SKU-1", "SKU-2"]), (86400.0, ["SKU-2"])],  # clean: read as they are
        [(0.0, ["sku-1", "85123A", "POST"]), (86400.0, ["SKU-2", "SKU-9", "SKU-2"])],
        [(0.0, ["85123A"])],  # not a product by this rule: cold start
    ]
    encoded = encode_batch(histories, vocab, config, [3 * 86400.0] * 3)
    for row, h in enumerate(histories):
        assert_same_encoding(encoded.history(row), encode_history(h, vocab, config, 3 * 86400.0))
    assert encoded.n_orders.tolist() == [2, 2, 0]
