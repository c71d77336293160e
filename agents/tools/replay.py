"""Replay a UCI Online Retail file (or any file of that family) as a live event stream.

Each invoice becomes a shopping session that ends at the invoice time:

- product lines: a ``product_view`` then a ``cart_add`` each, ``step`` seconds apart
  (``step`` = 30 s, shortened for big invoices so that a session lasts at most an hour);
  views before the first cart add are anonymous (session id only), as a visitor browses before
  logging in, so the worker's anonymous-to-customer merge runs on real traffic;
- then ``checkout`` 20 s before the invoice time and the ``order`` at the invoice time;
- non-product codes (postage, fees, manual adjustments) are billed on the order but never
  viewed or added; lines with quantity <= 0 outside cancellations, and the negative-price
  "Adjust bad debt" rows, are skipped;
- invoices starting with ``C`` become ``order_cancel`` events; guest invoices (no CustomerID)
  are anonymous sessions throughout;
- optionally (``abandon_share``, 0 by default) a share of the known customers' invoices,
  picked by a hash of the invoice number, become visits that did not convert: the views and
  cart adds happen, the checkout and the order do not. The real data only has the sessions
  that ended in a purchase; abandoned carts are what the journeys (reminders) are for;
- each known customer gets a ``profile`` event before their first event. The UCI data has no
  contact data, so consent, channels and opt-out are SYNTHETIC, derived from a hash of the
  customer id (docs/events-and-topics.md): a stand-in for the shop's real profile feed.

Events come out in event-time order (a bounded heap: sessions reach at most an hour back).
"""

from __future__ import annotations

import csv
import gzip
import heapq
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from confluent_kafka import Producer

from agents.runtime.settings import Settings
from schemas.records import SCHEMA_VERSION
from streams.state.products import is_product

DEFAULT_MERCHANT = "uci-gift-shop"
MAX_SESSION_S = 3600.0
COLUMN_NAMES = {  # canonical name -> accepted spellings (UCI Online Retail I and II)
    "invoice": ("InvoiceNo", "Invoice"),
    "stock_code": ("StockCode",),
    "description": ("Description",),
    "quantity": ("Quantity",),
    "invoice_date": ("InvoiceDate",),
    "unit_price": ("UnitPrice", "Price"),
    "customer_id": ("CustomerID", "Customer ID"),
    "country": ("Country",),
}
COUNTRY_TIME_ZONES = {
    "United Kingdom": "Europe/London",
    "EIRE": "Europe/Dublin",
    "France": "Europe/Paris",
    "Germany": "Europe/Berlin",
    "Netherlands": "Europe/Amsterdam",
    "Spain": "Europe/Madrid",
    "Belgium": "Europe/Brussels",
    "Switzerland": "Europe/Zurich",
    "Portugal": "Europe/Lisbon",
    "Australia": "Australia/Sydney",
    "Norway": "Europe/Oslo",
    "Italy": "Europe/Rome",
}


@dataclass(frozen=True)
class InvoiceLine:
    """One row of a UCI Online Retail file: a product line of an invoice."""

    invoice: str
    stock_code: str
    description: str
    quantity: int
    time: datetime
    unit_price: float
    customer_id: str | None
    country: str


@dataclass(frozen=True)
class ReplayEvent:
    ts: float
    topic_kind: str
    key: str
    value: dict


@dataclass
class ReadStats:
    rows: int = 0
    skipped: int = 0


def _open_rows(path: Path) -> Iterator[dict[str, str]]:
    """The file's rows as dicts; a workbook's sheets one after the other, each sheet's columns
    renamed to the first spelling of `COLUMN_NAMES` (sheets may spell them differently), except
    a sheet with none of the family's columns (a notes sheet)."""
    if path.suffix.lower() in (".xlsx", ".xls"):
        from models.next_purchase.loading import read_sheets  # pandas: workbooks only

        spellings = {s for names in COLUMN_NAMES.values() for s in names}
        for name, sheet in read_sheets(path).items():
            if not spellings.intersection(sheet.columns):
                continue
            try:
                found = _columns(sheet.columns)
            except ValueError as error:
                raise ValueError(f"{path}: sheet {name!r}: {error}") from None
            canonical = {column: COLUMN_NAMES[field][0] for field, column in found.items()}
            yield from sheet.rename(columns=canonical).fillna("").to_dict("records")
        return
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace", newline="") as handle:
        yield from csv.DictReader(handle)


def _columns(header: Iterable[str]) -> dict[str, str]:
    header = list(header)
    found = {}
    for name, spellings in COLUMN_NAMES.items():
        match = next((s for s in spellings if s in header), None)
        if match is None:
            raise ValueError(f"no {' or '.join(spellings)} column; the file has {header}")
        found[name] = match
    return found


def read_rows(path: Path, stats: ReadStats | None = None) -> Iterator[InvoiceLine]:
    """Rows of a UCI Online Retail file (csv, csv.gz or xlsx; either column naming).

    Rows without an invoice, stock code or parseable date, quantity or price are skipped and
    counted in ``stats``.
    """
    stats = stats or ReadStats()
    columns: dict[str, str] | None = None
    for raw in _open_rows(Path(path)):
        if columns is None:
            columns = _columns(raw.keys())
        stats.rows += 1
        try:
            customer = str(raw[columns["customer_id"]] or "").strip()
            if customer.endswith(".0"):
                customer = customer[:-2]
            row = InvoiceLine(
                invoice=str(raw[columns["invoice"]]).strip(),
                stock_code=str(raw[columns["stock_code"]]).strip(),
                description=str(raw[columns["description"]] or "").strip(),
                quantity=int(float(raw[columns["quantity"]])),
                time=datetime.fromisoformat(str(raw[columns["invoice_date"]]).strip()),
                unit_price=float(raw[columns["unit_price"]]),
                customer_id=customer or None,
                country=str(raw[columns["country"]] or "").strip(),
            )
        except (ValueError, TypeError):
            stats.skipped += 1
            continue
        if not row.invoice or not row.stock_code:
            stats.skipped += 1
            continue
        yield row


INVOICE_OPEN_S = 3600.0  # an invoice's lines may be interrupted by others for this long
MAX_OPEN_INVOICES = 1000


def invoices(rows: Iterable[InvoiceLine]) -> Iterator[list[InvoiceLine]]:
    """The rows of each invoice, one list per invoice, in order of first appearance.

    The files keep an invoice's lines together, almost: another invoice can interrupt one (in
    Online Retail, C542805's two lines sit inside 542806). So an invoice stays open until the
    file has moved ``INVOICE_OPEN_S`` past its first line (or ``MAX_OPEN_INVOICES`` newer
    invoices are open): the same grouping by invoice as the training loader's.
    """
    open_invoices: dict[str, list[InvoiceLine]] = {}
    for row in rows:
        group = open_invoices.get(row.invoice)
        if group is not None:
            group.append(row)
            continue
        while open_invoices:
            oldest = next(iter(open_invoices.values()))
            moved_past = (row.time - oldest[0].time).total_seconds() > INVOICE_OPEN_S
            if not moved_past and len(open_invoices) < MAX_OPEN_INVOICES:
                break
            yield open_invoices.pop(oldest[0].invoice)
        open_invoices[row.invoice] = [row]
    yield from open_invoices.values()


def synthetic_profile(customer_id: str, country: str) -> dict:
    """Deterministic, made-up consent for a UCI customer (the data set has no contact data),
    with the customer's country from the data."""
    h = zlib.crc32(customer_id.encode())
    channels = {
        "email": f"customer-{customer_id}@example.com" if h % 5 else None,
        "push": f"push-token-{customer_id}" if h % 2 == 0 else None,
        "sms": f"+44 7700 9{h % 100000:05d}" if h % 7 == 0 else None,
        "in_app": h % 3 == 0,
    }
    consented = [c for c in ("push", "email", "sms", "in_app") if channels[c]]
    return {
        "channels": channels,
        "preferred_channel": consented[h % len(consented)] if consented else None,
        "time_zone": COUNTRY_TIME_ZONES.get(country),
        "opted_out": h % 20 == 0,
        "country": country or None,
    }


def _iso(moment: datetime) -> str:
    return moment.isoformat() + "Z"


class EventBuilder:
    def __init__(self, merchant_id: str, currency: str = "GBP", abandon_share: float = 0.0) -> None:
        self.merchant_id = merchant_id
        self.currency = currency
        self.abandon_share = abandon_share
        self.profiled: set[str] = set()

    def abandoned(self, invoice: str, customer: str | None) -> bool:
        """Whether this invoice is replayed as an abandoned cart (known customers only)."""
        share = zlib.crc32(f"abandon:{invoice}".encode()) % 10_000 / 10_000
        return customer is not None and share < self.abandon_share

    def _event(
        self,
        kind: str,
        event_type: str,
        event_id: str,
        moment: datetime,
        customer: str | None,
        session: str | None,
        **fields: object,
    ) -> ReplayEvent:
        value = {
            "schema_version": SCHEMA_VERSION,
            "event_id": event_id,
            "event_type": event_type,
            "merchant_id": self.merchant_id,
            "event_time": _iso(moment),
            "customer_id": customer,
            "session_id": session,
            **fields,
        }
        key_id = f"c:{customer}" if customer else f"s:{session}"
        ts = moment.replace(tzinfo=UTC).timestamp()  # the file's times are UTC (UK shop)
        return ReplayEvent(ts, kind, f"{self.merchant_id}:{key_id}", value)

    def invoice_events(self, rows: list[InvoiceLine]) -> list[ReplayEvent]:
        first = rows[0]
        invoice, customer, end = first.invoice, first.customer_id, first.time
        session = f"web-{invoice}"
        events = []
        if customer and customer not in self.profiled:
            self.profiled.add(customer)
            events.append(
                self._event(
                    "profiles",
                    "profile",
                    f"profile-{customer}",
                    end - timedelta(seconds=MAX_SESSION_S + 1),
                    customer,
                    None,
                    **synthetic_profile(customer, first.country),
                )
            )

        def line(r: InvoiceLine, quantity: int) -> dict:
            return {
                "product_id": r.stock_code,
                "quantity": quantity,
                "unit_price": round(r.unit_price, 2),
                "description": r.description or None,
            }

        total = round(sum(r.quantity * r.unit_price for r in rows), 2)
        if invoice.startswith("C"):
            lines = [line(r, r.quantity) for r in rows if r.quantity < 0]
            if lines:
                events.append(
                    self._event(
                        "orders",
                        "order_cancel",
                        f"{invoice}-cancel",
                        end,
                        customer,
                        None if customer else session,
                        order_id=invoice,
                        lines=lines,
                        total=total,
                        currency=self.currency,
                    )
                )
            return events
        products = [
            r for r in rows if r.quantity > 0 and r.unit_price >= 0 and is_product(r.stock_code)
        ]
        billed = [r for r in rows if r.quantity > 0 and r.unit_price >= 0]
        if not billed:
            return events
        step = min(30.0, MAX_SESSION_S / (2 * len(products) + 2))
        cart_value = 0.0
        for i, r in enumerate(products):
            before = timedelta(seconds=step * (2 * (len(products) - i) + 1))
            viewer = customer if (customer and i > 0) else None
            events.append(
                self._event(
                    "clickstream",
                    "product_view",
                    f"{invoice}-{i}-view",
                    end - before,
                    viewer,
                    session,
                    product_id=r.stock_code,
                    page=f"/product/{r.stock_code}",
                )
            )
            cart_value = round(cart_value + r.quantity * r.unit_price, 2)
            events.append(
                self._event(
                    "cart",
                    "cart_add",
                    f"{invoice}-{i}-add",
                    end - before + timedelta(seconds=step),
                    customer,
                    session,
                    lines=[line(r, r.quantity)],
                    cart_value=cart_value,
                    currency=self.currency,
                )
            )
        if self.abandoned(invoice, customer):
            return events
        if products:
            events.append(
                self._event(
                    "cart",
                    "checkout",
                    f"{invoice}-checkout",
                    end - timedelta(seconds=min(20.0, step)),  # after the last add (end - 2 step)
                    customer,
                    session,
                    lines=[],
                    cart_value=cart_value,
                    currency=self.currency,
                )
            )
        events.append(
            self._event(
                "orders",
                "order",
                f"{invoice}-order",
                end,
                customer,
                session,
                order_id=invoice,
                lines=[line(r, r.quantity) for r in billed],
                total=round(sum(r.quantity * r.unit_price for r in billed), 2),
                currency=self.currency,
            )
        )
        return events


def replay_events(
    path: Path,
    merchant_id: str = DEFAULT_MERCHANT,
    start: datetime | None = None,
    end: datetime | None = None,
    stats: ReadStats | None = None,
    abandon_share: float = 0.0,
) -> Iterator[ReplayEvent]:
    """The file's events in event-time order, for invoices in [start, end)."""
    builder = EventBuilder(merchant_id, abandon_share=abandon_share)
    heap: list[tuple[float, int, ReplayEvent]] = []
    seq = 0
    horizon = MAX_SESSION_S + 2
    for rows in invoices(read_rows(path, stats)):
        moment = rows[0].time
        if (start and moment < start) or (end and moment >= end):
            continue
        ts = moment.replace(tzinfo=UTC).timestamp()
        while heap and heap[0][0] < ts - horizon:
            yield heapq.heappop(heap)[2]
        for event in builder.invoice_events(rows):
            heapq.heappush(heap, (event.ts, seq, event))
            seq += 1
    while heap:
        yield heapq.heappop(heap)[2]


def producer_config(settings: Settings) -> dict:
    """Java-compatible murmur2 partitioning, as Faust (and Kafka Streams) route tables."""
    return {
        **settings.kafka_client_config(),
        "partitioner": "murmur2_random",
        "linger.ms": 5,
        "compression.type": "none",
        "queue.buffering.max.messages": 500000,
    }


@dataclass
class ReplayStats:
    events: int = 0
    seconds: float = 0.0


def send(
    events: Iterable[ReplayEvent],
    settings: Settings,
    speedup: float = 0.0,
    rate: float = 0.0,
    limit: int = 0,
    on_sent: Callable[[ReplayEvent], None] | None = None,
) -> ReplayStats:
    """Produce events: as fast as possible, ``speedup`` x event time, or ``rate`` events/s."""
    producer = Producer(producer_config(settings))
    topics = {
        kind: getattr(settings.topics, kind)
        for kind in ("clickstream", "cart", "orders", "profiles", "feedback")
    }
    stats = ReplayStats()
    started = time.monotonic()
    first_ts: float | None = None
    for event in events:
        if limit and stats.events >= limit:
            break
        if speedup > 0:
            first_ts = event.ts if first_ts is None else first_ts
            _sleep_until(started + (event.ts - first_ts) / speedup)
        elif rate > 0:
            _sleep_until(started + stats.events / rate)
        while True:
            try:
                producer.produce(
                    topics[event.topic_kind],
                    key=event.key.encode(),
                    value=orjson.dumps(event.value),
                )
                break
            except BufferError:
                producer.poll(0.05)
        stats.events += 1
        if stats.events % 1000 == 0:
            producer.poll(0)
        if on_sent:
            on_sent(event)
    producer.flush(30)
    stats.seconds = time.monotonic() - started
    return stats


def _sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0.0005:
        time.sleep(delay)
