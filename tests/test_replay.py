"""Replay of UCI Online Retail files: reading rows, building events, ordering, validity."""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import os
import time
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from pathlib import Path

import orjson
import pytest

from agents.runtime.settings import Settings
from agents.tools.replay import (
    DEFAULT_MERCHANT,
    MAX_SESSION_S,
    EventBuilder,
    InvoiceLine,
    ReadStats,
    ReplayEvent,
    invoices,
    is_product,
    read_rows,
    replay_events,
    synthetic_profile,
)
from schemas.validation import parse_event, parse_time

DATA_FILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "online_retail.csv.gz"
MAX_BYTES = Settings().max_event_bytes
HEADER_I = ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice",
            "CustomerID", "Country"]  # fmt: skip
HEADER_II = ["Invoice", "StockCode", "Description", "Quantity", "InvoiceDate", "Price",
             "Customer ID", "Country"]  # fmt: skip
GOOD_ROWS = [
    ["536365", "85123A", "WHITE HANGING HEART T-LIGHT HOLDER", "6", "2010-12-01 08:26:00",
     "2.55", "17850.0", "United Kingdom"],
    ["536365", "71053", "WHITE METAL LANTERN", "6", "2010-12-01 08:26:00", "3.39", "17850",
     "United Kingdom"],
    ["536366", "22633", "HAND WARMER UNION JACK", "6", "2010-12-01 08:28:00", "1.85", "",
     "United Kingdom"],
]  # fmt: skip
BAD_ROWS = [
    ["536367", "84879", "BIRD", "many", "2010-12-01 08:34:00", "1.69", "13047", "UK"],
    ["536367", "84880", "BIRD", "1", "not a date", "1.69", "13047", "UK"],
    ["536367", "84881", "BIRD", "1", "2010-12-01 08:34:00", "", "13047", "UK"],
    ["", "84882", "NO INVOICE", "1", "2010-12-01 08:34:00", "1.0", "13047", "UK"],
    ["536367", "  ", "NO STOCK CODE", "1", "2010-12-01 08:34:00", "1.0", "13047", "UK"],
    ["536367", "84883"],  # truncated line
]


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", newline="") as handle:
            handle.write(buffer.getvalue())
    else:
        path.write_text(buffer.getvalue(), newline="")
    return path


def row(
    invoice: str,
    stock_code: str,
    quantity: int,
    price: float,
    customer: str | None = "17850",
    moment: datetime = datetime(2010, 12, 1, 8, 26),
    description: str = "ITEM",
    country: str = "United Kingdom",
) -> InvoiceLine:
    return InvoiceLine(invoice, stock_code, description, quantity, moment, price, customer, country)


def check(events: list[ReplayEvent]) -> None:
    """Every event passes the worker's validator on its topic."""
    for event in events:
        raw = orjson.dumps(event.value)
        parsed = parse_event(raw, event.topic_kind, MAX_BYTES)
        assert parsed["event_type"] == event.value["event_type"]


# --- read_rows ------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [HEADER_I, HEADER_II], ids=["uci-I", "uci-II"])
@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_read_rows_both_namings_csv_and_gz(tmp_path, header, suffix):
    path = write_csv(tmp_path / f"retail{suffix}", header, GOOD_ROWS[:1] + BAD_ROWS + GOOD_ROWS[1:])
    stats = ReadStats()
    rows = list(read_rows(path, stats))
    assert (stats.rows, stats.skipped) == (len(GOOD_ROWS) + len(BAD_ROWS), len(BAD_ROWS))
    assert rows == [
        InvoiceLine("536365", "85123A", "WHITE HANGING HEART T-LIGHT HOLDER", 6,
            datetime(2010, 12, 1, 8, 26), 2.55, "17850", "United Kingdom"),
        InvoiceLine("536365", "71053", "WHITE METAL LANTERN", 6, datetime(2010, 12, 1, 8, 26), 3.39,
            "17850", "United Kingdom"),
        InvoiceLine("536366", "22633", "HAND WARMER UNION JACK", 6,
            datetime(2010, 12, 1, 8, 28), 1.85, None, "United Kingdom"),
    ]  # fmt: skip


def test_read_rows_without_stats_and_float_quantities(tmp_path):
    path = write_csv(tmp_path / "r.csv", HEADER_I, [GOOD_ROWS[0][:3] + ["6.0"] + GOOD_ROWS[0][4:]])
    assert [r.quantity for r in read_rows(path)] == [6]


def test_read_rows_missing_column_names_both_spellings(tmp_path):
    header = [h for h in HEADER_II if h != "Price"]
    path = write_csv(tmp_path / "r.csv", header, [["1"] * len(header)])
    with pytest.raises(ValueError, match="no UnitPrice or Price column"):
        list(read_rows(path))


def test_read_rows_xlsx_every_sheet_but_notes(tmp_path):
    """An Online Retail II workbook: one sheet per year, read in order; a notes sheet with none
    of the family's columns is skipped."""
    import pandas as pd

    moment = datetime(2010, 12, 1, 8, 26)
    frame = pd.DataFrame(
        {
            "Invoice": ["536365", "536365", "C536379", "536370", "536371"],
            "StockCode": ["85123A", "POST", "D", "22728", "22727"],
            "Description": ["HEART", None, "Discount", "ALARM", "CLOCK"],
            "Quantity": [6, 1, -1, "lots", 2],
            "InvoiceDate": [moment, moment, moment + timedelta(hours=1), moment, moment],
            "Price": [2.55, 18.0, 27.5, 3.75, 4.25],
            "Customer ID": [17850.0, 17850.0, float("nan"), 12583.0, 12583.0],
            "Country": ["United Kingdom", "United Kingdom", "United Kingdom", "France", "France"],
        }
    )
    path = tmp_path / "online_retail_II.xlsx"
    with pd.ExcelWriter(path) as workbook:
        pd.DataFrame({"Notes": ["exported 2011-12-09"]}).to_excel(
            workbook, sheet_name="About", index=False
        )
        frame.iloc[:3].to_excel(workbook, sheet_name="Year 2009-2010", index=False)
        frame.iloc[3:].to_excel(workbook, sheet_name="Year 2010-2011", index=False)
    stats = ReadStats()
    rows = list(read_rows(path, stats))
    assert (stats.rows, stats.skipped) == (5, 1)
    assert rows == [
        InvoiceLine("536365", "85123A", "HEART", 6, moment, 2.55, "17850", "United Kingdom"),
        InvoiceLine("536365", "POST", "", 1, moment, 18.0, "17850", "United Kingdom"),
        InvoiceLine("C536379", "D", "Discount", -1, moment + timedelta(hours=1), 27.5, None,
            "United Kingdom"),
        InvoiceLine("536371", "22727", "CLOCK", 2, moment, 4.25, "12583", "France"),
    ]  # fmt: skip

    # each sheet its own column naming; a sheet missing a column is named in the error
    old_names = {"Invoice": "InvoiceNo", "Price": "UnitPrice", "Customer ID": "CustomerID"}
    with pd.ExcelWriter(path) as workbook:
        frame.iloc[:3].rename(columns=old_names).to_excel(workbook, sheet_name="I", index=False)
        frame.iloc[3:].to_excel(workbook, sheet_name="II", index=False)
    assert list(read_rows(path)) == rows
    with pd.ExcelWriter(path) as workbook:
        frame.iloc[:3].to_excel(workbook, sheet_name="Year 2009-2010", index=False)
        frame.iloc[3:].drop(columns="Country").to_excel(
            workbook, sheet_name="Year 2010-2011", index=False
        )
    with pytest.raises(ValueError, match=r"sheet 'Year 2010-2011': no Country column"):
        list(read_rows(path))


def test_invoices_group_an_invoice_interrupted_by_another_and_is_product():
    rows = [
        row("1", "A", 1, 1.0),
        row("1", "B", 1, 1.0),
        row("C2", "A", -1, 1.0),  # as C542805 sits inside 542806 in the real file
        row("1", "C", 1, 1),
    ]
    assert [[r.stock_code for r in group] for group in invoices(rows)] == [["A", "B", "C"], ["A"]]
    assert list(invoices([])) == []
    assert is_product("85123A") and is_product("DCGS0076") and is_product(" 22423 ")
    assert not any(
        map(
            is_product,
            [
                "POST",
                "DOT",
                "M",
                "BANK CHARGES",
                "gift_0001_20",
                "GIFT_1",
                "C2",
                "AMAZONFEE",
                "PADS",
                "CRUK",
            ],
        )
    )


def test_invoices_close_an_invoice_once_the_file_is_an_hour_past_it():
    def file_rows():
        yield row("1", "A", 1, 1.0)
        yield row("2", "B", 1, 1.0, moment=datetime(2010, 12, 1, 9, 30))
        raise AssertionError("read past the row that closes invoice 1")

    assert [r.stock_code for r in next(invoices(file_rows()))] == ["A"]


# --- invoice_events -------------------------------------------------------------------------

END = datetime(2010, 12, 1, 8, 26)


def test_invoice_events_session_shape():
    rows = [
        row("536365", "85123A", 6, 2.55),
        row("536365", "POST", 1, 18.0),
        row("536365", "71053", 2, 3.39),
        row("536365", "22222", 0, 1.0),  # quantity <= 0 outside a cancellation: skipped
    ]
    events = EventBuilder("shop").invoice_events(rows)
    check(events)
    shape = [(e.topic_kind, e.value["event_type"], e.value["customer_id"]) for e in events]
    assert shape == [
        ("profiles", "profile", "17850"),
        ("clickstream", "product_view", None),  # anonymous browsing before the first add
        ("cart", "cart_add", "17850"),
        ("clickstream", "product_view", "17850"),
        ("cart", "cart_add", "17850"),
        ("cart", "checkout", "17850"),
        ("orders", "order", "17850"),
    ]
    end = END.timestamp()
    assert [e.ts - end for e in events] == [-MAX_SESSION_S - 1, -150, -120, -90, -60, -20, 0]
    assert [e.ts for e in events] == sorted(e.ts for e in events)
    assert all(e.value["session_id"] == "web-536365" for e in events[1:])
    assert events[0].value["session_id"] is None
    assert [e.value["event_id"] for e in events] == [
        "profile-17850", "536365-0-view", "536365-0-add", "536365-1-view", "536365-1-add",
        "536365-checkout", "536365-order",
    ]  # fmt: skip
    assert events[1].key == "shop:s:web-536365"
    assert all(e.key == "shop:c:17850" for e in events if e is not events[1])
    views = [e.value["product_id"] for e in events if e.value["event_type"] == "product_view"]
    adds = [
        e.value["lines"][0]["product_id"] for e in events if e.value["event_type"] == "cart_add"
    ]
    assert views == adds == ["85123A", "71053"]  # POST is never viewed or added
    assert [e.value["cart_value"] for e in events if e.topic_kind == "cart"] == [
        15.3, 22.08, 22.08,
    ]  # fmt: skip
    placed = events[-1].value
    assert placed["event_time"] == "2010-12-01T08:26:00Z"
    assert placed["order_id"] == "536365"
    assert [line["product_id"] for line in placed["lines"]] == ["85123A", "POST", "71053"]
    assert placed["total"] == 40.08  # postage billed on the order
    assert placed["lines"][0] == {
        "product_id": "85123A", "quantity": 6, "unit_price": 2.55,
        "description": "ITEM",
    }  # fmt: skip


def test_cancellation_becomes_order_cancel():
    rows = [row("C536379", "D", -1, 27.5), row("C536379", "22556", -12, 1.65)]
    events = EventBuilder("shop").invoice_events(rows)
    check(events)
    assert [e.value["event_type"] for e in events] == ["profile", "order_cancel"]
    cancel = events[1].value
    assert cancel["event_id"] == "C536379-cancel" and cancel["order_id"] == "C536379"
    assert [line["quantity"] for line in cancel["lines"]] == [-1, -12]
    assert cancel["total"] == -47.3
    assert events[1].ts == END.timestamp()


def test_guest_invoice_is_anonymous_throughout():
    rows = [row("536366", "22633", 6, 1.85, customer=None), row("536366", "POST", 1, 5.0, None)]
    events = EventBuilder("shop").invoice_events(rows)
    check(events)
    assert [e.value["event_type"] for e in events] == [
        "product_view", "cart_add", "checkout", "order",
    ]  # fmt: skip
    assert all(e.value["customer_id"] is None for e in events)
    assert all(e.value["session_id"] == "web-536366" for e in events)
    assert all(e.key == "shop:s:web-536366" for e in events)
    guest_cancel = EventBuilder("shop").invoice_events([row("C9", "D", -1, 1.0, customer=None)])
    check(guest_cancel)
    assert [(e.value["customer_id"], e.value["session_id"]) for e in guest_cancel] == [
        (None, "web-C9")
    ]


def test_one_profile_per_customer():
    builder = EventBuilder("shop")
    first = builder.invoice_events([row("1", "A", 1, 1.0)])
    second = builder.invoice_events([row("2", "A", 1, 1.0, moment=END + timedelta(days=1))])
    other = builder.invoice_events([row("3", "A", 1, 1.0, customer="12583", country="France")])
    kinds = [[e.value["event_type"] for e in events] for events in (first, second, other)]
    assert kinds[0][0] == "profile" and "profile" not in kinds[1] and kinds[2][0] == "profile"
    assert other[0].value["time_zone"] == "Europe/Paris"
    assert other[0].value["country"] == "France"
    assert other[0].value["event_id"] == "profile-12583"


def test_postage_only_invoice_has_an_order_but_no_cart():
    events = EventBuilder("shop").invoice_events([row("536999", "POST", 1, 15.0, customer=None)])
    check(events)
    assert [e.value["event_type"] for e in events] == ["order"]


def test_invoice_with_nothing_billed_has_no_session():
    events = EventBuilder("shop").invoice_events([row("537000", "A", 0, 1.0, customer=None)])
    assert events == []


def test_big_invoice_session_lasts_at_most_an_hour():
    rows = [row("581483", f"{20000 + i}", 1, 1.0) for i in range(500)]
    events = EventBuilder("shop").invoice_events(rows)
    check(events)
    session = [e for e in events if e.topic_kind != "profiles"]
    assert len(session) == 2 * 500 + 2
    assert END.timestamp() - session[0].ts <= MAX_SESSION_S
    assert events[0].ts < session[0].ts  # the profile comes first
    assert session[-1].value["event_type"] == "order" and session[-1].ts == END.timestamp()


def test_big_invoice_checks_out_after_its_last_cart_add():
    rows = [row("581483", f"{20000 + i}", 1, 1.0) for i in range(500)]
    events = EventBuilder("shop").invoice_events(rows)
    checkout = next(e for e in events if e.value["event_type"] == "checkout")
    assert all(e.ts <= checkout.ts for e in events if e.topic_kind == "clickstream")
    assert all(e.ts <= checkout.ts for e in events if e.value["event_type"] == "cart_add")


def test_bad_debt_adjustment_rows_produce_valid_events():
    rows = [row("A563186", "B", 1, -11062.06, customer=None, description="Adjust bad debt")]
    check(EventBuilder("shop").invoice_events(rows))


@pytest.fixture
def new_york_time():
    """Run the test in a non-UTC local time zone, then restore the original one."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


def test_replay_ts_matches_event_time_in_any_local_time_zone(new_york_time):
    events = EventBuilder("shop").invoice_events([row("536365", "85123A", 6, 2.55)])
    assert [e.ts for e in events] == [parse_time(e.value["event_time"]) for e in events]


# --- replay_events --------------------------------------------------------------------------


def mixed_file(tmp_path: Path) -> Path:
    rows = []
    moment = datetime(2010, 12, 1, 8, 0)
    for i, customer in zip(range(40), itertools.cycle(["17850", "", "13047", "12583"])):
        when = (moment + timedelta(minutes=3 * i)).isoformat(sep=" ")
        invoice = f"C{536400 + i}" if i % 7 == 3 else str(536400 + i)
        sign = -1 if invoice.startswith("C") else 1
        for j in range(1 + i % 5):
            rows.append([invoice, f"2{j:04d}", f"ITEM {j}", str(sign * (j + 1)), when, "1.25",
                         customer, "United Kingdom"])  # fmt: skip
        if i % 3 == 0 and sign > 0:
            rows.append([invoice, "POST", "POSTAGE", "1", when, "18", customer, "France"])
    return write_csv(tmp_path / "mixed.csv.gz", HEADER_I, rows)


def test_replay_events_are_in_event_time_order_and_valid(tmp_path):
    events = list(replay_events(mixed_file(tmp_path), "shop"))
    check(events)
    assert len(events) > 100
    assert all(a.ts <= b.ts for a, b in itertools.pairwise(events))
    ids = [e.value["event_id"] for e in events]
    assert len(ids) == len(set(ids))
    assert Counter(e.value["event_type"] for e in events)["profile"] == 3


def test_replay_events_start_end_window(tmp_path):
    path = mixed_file(tmp_path)
    start, end = datetime(2010, 12, 1, 8, 30), datetime(2010, 12, 1, 9, 0)
    orders = [e.value for e in replay_events(path, "shop", start, end) if e.topic_kind == "orders"]
    assert [o["order_id"] for o in orders] == [
        "C536410", "536411", "536412", "536413", "536414", "536415", "536416", "C536417",
        "536418", "536419",
    ]  # fmt: skip


# --- the real UCI file ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_head(tmp_path_factory) -> Path:
    """The first 3000 rows of the real file (the whole file takes seconds to read)."""
    if not DATA_FILE.exists():
        pytest.skip(f"data file not found: {DATA_FILE}")
    path = tmp_path_factory.mktemp("uci") / "head.csv"
    with gzip.open(DATA_FILE, "rt", newline="") as source, path.open("w", newline="") as target:
        writer = csv.writer(target)
        for record in itertools.islice(csv.reader(source), 3001):
            writer.writerow(record)
    return path


def test_every_replayed_event_of_the_real_file_passes_parse_event(real_head):
    stats = ReadStats()
    events = list(replay_events(real_head, stats=stats))
    assert stats.rows == 3000 and stats.skipped == 0
    counts = Counter(e.value["event_type"] for e in events)
    assert counts["order"] > 100 and counts["order_cancel"] > 0 and counts["cart_add"] > 1000
    for event in events:
        raw = orjson.dumps(event.value)
        parsed = parse_event(raw, event.topic_kind, MAX_BYTES)
        assert parsed["merchant_id"] == DEFAULT_MERCHANT
        who = parsed["customer_id"]
        assert event.key == f"{DEFAULT_MERCHANT}:" + (
            f"c:{who}" if who else f"s:{parsed['session_id']}"
        )
    assert all(a.ts <= b.ts for a, b in itertools.pairwise(events))
    ids = [e.value["event_id"] for e in events]
    assert len(ids) == len(set(ids))
    # Each known customer's profile comes before any other event of theirs.
    first_seen: dict[str, str] = {}
    by_customer = defaultdict(list)
    for event in events:
        customer = event.value["customer_id"]
        if customer:
            first_seen.setdefault(customer, event.value["event_type"])
            by_customer[customer].append(event)
    assert set(first_seen.values()) == {"profile"}
    assert all(
        sum(e.topic_kind == "profiles" for e in group) == 1 for group in by_customer.values()
    )


# --- synthetic profiles ---------------------------------------------------------------------


def test_synthetic_profile_is_deterministic_and_valid():
    customers = [str(c) for c in range(12346, 12346 + 400)]
    profiles = [synthetic_profile(c, "United Kingdom") for c in customers]
    assert profiles == [synthetic_profile(c, "United Kingdom") for c in customers]
    assert synthetic_profile("17850", "EIRE")["time_zone"] == "Europe/Dublin"
    assert synthetic_profile("17850", "Atlantis")["time_zone"] is None
    assert synthetic_profile("17850", "EIRE")["country"] == "EIRE"
    assert synthetic_profile("17850", "")["country"] is None
    for customer, profile in zip(customers, profiles, strict=True):
        channels = profile["channels"]
        consented = [c for c in ("push", "email", "sms", "in_app") if channels[c]]
        assert profile["preferred_channel"] in (consented or [None])
        assert channels["email"] in (None, f"customer-{customer}@example.com")
    builder = EventBuilder("shop")
    check([builder.invoice_events([row("1", "A", 1, 1.0, customer=c)])[0] for c in customers])
    share_opted_out = sum(p["opted_out"] for p in profiles) / len(profiles)
    assert 0.01 < share_opted_out < 0.15  # about 1 in 20
    assert {p["preferred_channel"] for p in profiles} == {"push", "email", "sms", "in_app", None}


def test_abandon_share_turns_some_customer_invoices_into_abandoned_carts():
    builder = EventBuilder("shop", abandon_share=0.3)
    invoices = [f"{536365 + i}" for i in range(400)]
    abandoned = [i for i in invoices if builder.abandoned(i, "17850")]
    assert 0.2 < len(abandoned) / len(invoices) < 0.4
    events = builder.invoice_events([row(abandoned[0], "85123A", 6, 2.55)])
    types = [e.value["event_type"] for e in events]
    assert "cart_add" in types and "checkout" not in types and "order" not in types
    kept = next(i for i in invoices if i not in abandoned)
    types = [e.value["event_type"] for e in builder.invoice_events([row(kept, "85123A", 6, 2.55)])]
    assert types[-2:] == ["checkout", "order"]
    assert not builder.abandoned(abandoned[0], None)  # guests' carts are never abandoned here
    assert not EventBuilder("shop").abandoned(abandoned[0], "17850")  # off by default
