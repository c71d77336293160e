"""Sample input events and a deterministic probe corpus of the input contract.

``PROBES``: valid and invalid events of every input event type (every bound at and just past
its edge, junk of every type in every field the topic uses or not, unicode, huge strings,
nested junk, the issue-15 probes), each with the verdict it must get. ``tests/test_probes.py``
checks that the published JSON Schemas and ``parse_event`` both give it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import orjson
from jsonschema import Draft202012Validator, FormatChecker

from schemas.contract import input_contracts
from schemas.events import LINE_QUANTITY_BY_TYPE
from schemas.json_schema import build_schemas
from schemas.records import SCHEMA_VERSION
from schemas.spec import FieldSpec
from schemas.validation import ALL_EVENT_TYPES, InvalidEvent, parse_event

EVENT_TIME = "2011-12-09T12:50:00Z"
#: Large enough for every probe: the byte limit (``oversize_payload``) is a worker setting,
#: like ``max_future_s``, and not part of the schema.
PROBE_MAX_BYTES = 1 << 22

BASE = {
    "schema_version": SCHEMA_VERSION,
    "event_id": "evt-1",
    "merchant_id": "uci-gift-shop",
    "event_time": EVENT_TIME,
    "customer_id": "17850",
    "session_id": "web-536365",
}
LINE = {"product_id": "85123A", "quantity": 6, "unit_price": 2.55, "description": "T-LIGHT"}
CHANNELS = {"email": "a@example.com", "sms": None, "push": "tok", "in_app": True}

DROP = object()  # sample(..., field=DROP) leaves the field out

# One valid event per input event type: event_type -> extra fields.
SAMPLES: dict[str, dict] = {
    "page_view": {"page": "/"},
    "product_view": {"product_id": "85123A", "page": "/product/85123A"},
    "category_view": {"category": "candles"},
    "search": {"query": "lantern"},
    "cart_add": {"lines": [LINE], "cart_value": 15.3, "currency": "GBP"},
    "cart_remove": {"lines": [{**LINE, "quantity": 2}], "cart_value": 10.2, "currency": "GBP"},
    "cart_quantity": {"lines": [{**LINE, "quantity": 0}], "cart_value": 0, "currency": "GBP"},
    "cart_clear": {"lines": [], "cart_value": 0.0, "currency": "GBP"},
    "checkout": {"lines": [LINE], "cart_value": 15.3, "currency": "GBP"},
    "order": {"order_id": "536365", "lines": [LINE], "total": 15.3, "currency": "GBP"},
    "order_cancel": {
        "order_id": "C536379",
        "lines": [{**LINE, "quantity": -1}],
        "total": -2.55,
        "currency": "GBP",
    },
    "profile": {
        "channels": CHANNELS,
        "preferred_channel": "email",
        "time_zone": "Europe/London",
        "opted_out": False,
    },
    "offer_delivered": {"offer_id": "o1", "notification_id": "n1"},
    "offer_opened": {"offer_id": "o1"},
    "offer_clicked": {"offer_id": "o1"},
    "offer_redeemed": {"offer_id": "o1"},
    "offer_dismissed": {"offer_id": "o1", "notification_id": None},
    "action_shown": {"action_id": "join-loyalty", "channel": "in_app"},
    "action_taken": {"action_id": "join-loyalty"},
    "action_dismissed": {"action_id": "join-loyalty", "channel": None},
}


def sample(event_type: str, /, **overrides: object) -> dict:
    event = {**copy.deepcopy(BASE), "event_type": event_type, **copy.deepcopy(SAMPLES[event_type])}
    for name, value in overrides.items():
        if value is DROP:
            event.pop(name, None)
        else:
            event[name] = value
    return event


def schema_validators() -> dict[str, Draft202012Validator]:
    """Input topic kind -> a validator of its published JSON Schema, formats checked."""
    documents = build_schemas()
    return {
        kind: Draft202012Validator(
            documents[f"{kind.replace('_', '-')}.v{SCHEMA_VERSION}.json"],
            format_checker=FormatChecker(),
        )
        for kind in input_contracts()
    }


def accepted_by_parse_event(event: object, topic: str) -> bool:
    """The worker's verdict (no ``max_future_s``, no byte limit that matters): anything but
    acceptance or ``InvalidEvent`` propagates and fails the test."""
    try:
        parse_event(orjson.dumps(event), topic, PROBE_MAX_BYTES)
    except InvalidEvent:
        return False
    return True


@dataclass(frozen=True)
class Probe:
    name: str
    topic: str
    event: object
    valid: bool
    field: str | None = None  # a rejection must name this field


def _probe(name: str, event: dict, valid: bool, field: str | None = None) -> Probe:
    return Probe(name, ALL_EVENT_TYPES[event["event_type"]], event, valid, field)


def _issue_probes() -> Iterator[Probe]:
    """Issue 15: events that passed schemas/json but were dead-lettered, or crashed the worker."""
    yield _probe("naive event_time", sample("page_view", event_time="2011-12-09T12:50:00"), False)
    yield _probe("event_time yesterday", sample("page_view", event_time="yesterday"), False)
    yield _probe("event_time year 1", sample("cart_add", event_time="0001-01-01T00:00:00Z"), False)
    yield _probe("event_time 2999", sample("page_view", event_time="2999-06-01T00:00:00Z"), False)
    negative = [{**LINE, "unit_price": -1.0}]
    yield _probe("negative unit_price", sample("cart_add", lines=negative), False, "unit_price")
    yield _probe("negative cart_value", sample("cart_add", cart_value=-0.01), False, "cart_value")
    zero = [{**LINE, "quantity": 0}]
    yield _probe("quantity 0 on cart_add", sample("cart_add", lines=zero), False, "quantity")
    yield _probe("quantity 1.0", sample("cart_add", lines=[{**LINE, "quantity": 1.0}]), True)
    huge = [{**LINE, "quantity": 2**63}]
    yield _probe("quantity 2**63", sample("cart_add", lines=huge), False, "quantity")
    yield _probe("total 1e308", sample("order", total=1e308), False, "total")
    wide = [{**LINE, "product_id": "p" * 60_000}]
    yield _probe("60 KB product id", sample("cart_add", lines=wide), False, "product_id")
    yield _probe(
        "cart_value x on a click", sample("page_view", cart_value="x"), False, "cart_value"
    )
    yield _probe("lines 5 on a profile", sample("profile", lines=5), False, "lines")
    yield _probe("lines [{}] on a profile", sample("profile", lines=[{}]), False, "lines")
    yield _probe("date 2000-02-30", sample("page_view", event_time="2000-02-30T00:00:00Z"), False)
    yield _probe("leap second", sample("page_view", event_time="2016-12-31T23:59:60Z"), False)


def _edges(spec: FieldSpec) -> Iterator[tuple[str, object, bool]]:
    """(label, value, valid) at and just past each bound of a field (not pattern strings)."""
    bounds = spec.bounds
    if spec.kind == "str" and bounds.pattern is None:
        if bounds.min_length:
            yield "at min_length", "x" * bounds.min_length, True
            yield "below min_length", "x" * (bounds.min_length - 1), False
        if bounds.max_length is not None:
            yield "at max_length", "é" * bounds.max_length, True  # code points, not bytes
            yield "past max_length", "x" * (bounds.max_length + 1), False
    elif spec.kind in ("int", "float") and bounds.minimum is not None:
        step = 1 if spec.kind == "int" else 0.01
        yield "at minimum", bounds.minimum, not bounds.exclusive_minimum
        yield "below minimum", bounds.minimum - step, False
        yield "at maximum", bounds.maximum, True
        yield "past maximum", bounds.maximum + step, False  # type: ignore[operator]


_JUNK = {  # kind -> values of the wrong type
    "str": [5, 1.5, True, [], {}, ["x"]],
    "int": ["1", 1.5, True, [], {}, [1]],
    "float": ["1.5", True, [], {"a": 1}],
    "bool": [0, 1, "true", [], {}],
    "enum": ["bogus", 5, ["email"], {}],
    "list": [5, "x", {}, True],
    "record": ["x", 5, [], True],
}


def _field_probes() -> Iterator[Probe]:
    """Per field (the topic's own and other topics'), edges and junk: every field for the first
    event type of a topic, the fields an event type's own rules change for the others."""
    for topic, contract in input_contracts().items():
        first = next(iter(contract.by_type))
        for event_type, spec in contract.by_type.items():
            for name, field in spec.fields.items():
                if name in ("event_type", "schema_version", "event_time", "currency"):
                    continue  # own probes below
                if event_type != first and field == contract.spec.fields[name]:
                    continue
                for label, value, valid in _edges(field):
                    event = sample(event_type, **{name: value})
                    yield Probe(f"{event_type}.{name} {label}", topic, event, valid, name)
                for value in _JUNK[field.kind]:
                    event = sample(event_type, **{name: value})
                    yield Probe(f"{event_type}.{name} = {value!r}", topic, event, False, name)
                if not field.nullable:
                    event = sample(event_type, **{name: None})
                    yield Probe(f"{event_type}.{name} null", topic, event, False, name)
                elif name not in spec.required:
                    event = sample(event_type, **{name: None})
                    yield Probe(f"{event_type}.{name} null", topic, event, True)
                if name in spec.required:
                    event = sample(event_type, **{name: DROP})
                    yield Probe(f"{event_type} without {name}", topic, event, False, name)


def _line_probes() -> Iterator[Probe]:
    for event_type in LINE_QUANTITY_BY_TYPE:
        spec = input_contracts()[ALL_EVENT_TYPES[event_type]].by_type[event_type]
        line_spec = spec.fields["lines"].item.record  # type: ignore[union-attr]
        base_line = (SAMPLES[event_type]["lines"] or [LINE])[0]
        for name, field in line_spec.fields.items():  # type: ignore[union-attr]
            for label, value, valid in _edges(field):
                event = sample(event_type, lines=[{**base_line, name: value}])
                yield _probe(f"{event_type} line.{name} {label}", event, valid, name)
            for value in _JUNK[field.kind]:
                event = sample(event_type, lines=[{**base_line, name: value}])
                yield _probe(f"{event_type} line.{name} = {value!r}", event, False, name)
    small = {"product_id": "p", "quantity": 1, "unit_price": 0}
    yield _probe("1000 lines", sample("order", lines=[small] * 1000), True)
    yield _probe("1001 lines", sample("order", lines=[small] * 1001), False, "lines")
    yield _probe("lines [[line]]", sample("cart_add", lines=[[LINE]]), False, "lines")
    yield _probe("lines [line, 5]", sample("cart_add", lines=[LINE, 5]), False, "lines")
    deep = [{**LINE, "extra": {"deep": [[[{}]]]}}]  # unknown fields in a line are tolerated
    yield _probe("line with nested unknown field", sample("cart_add", lines=deep), True)


def _envelope_probes() -> Iterator[Probe]:
    times = {
        "2000-01-01T00:00:00Z": True,
        "1999-12-31T23:59:59Z": False,
        "2099-12-31T23:59:59.999999999Z": True,
        "2100-01-01T00:00:00Z": False,
        "2011-12-09T12:50:00.5+01:00": True,
        "2011-12-09T12:50:00-00:00": True,
        "2011-12-09T12:50:00+23:59": True,
        "2011-12-09T12:50:00+24:00": False,
        "2011-12-09T12:50:00.1234567891Z": False,  # 10 fraction digits
        "2011-12-09 12:50:00Z": False,
        "2011-12-09t12:50:00z": False,
        "20111209T125000Z": False,
        "2011-12-09T12:50Z": False,
        "2011-12-09T12:50:00Z\n": False,
        "٢٠١١-12-09T12:50:00Z": False,  # Arabic-Indic digits
        "": False,
    }
    for value, valid in times.items():
        yield _probe(f"event_time {value!r}", sample("page_view", event_time=value), valid)
    currencies = {"GBP": True, "eur": True, "GB": False, "GBPX": False, "G8P": False}
    for value, valid in currencies.items():
        yield _probe(f"currency {value!r}", sample("order", currency=value), valid, "currency")
    yield _probe("currency 'GBP\\n'", sample("order", currency="GBP\n"), False, "currency")
    versions = [(1, True), (1.0, True), (2, False), (0, False), ("1", False), (True, False)]
    for version, valid in versions:
        yield _probe(f"schema_version {version!r}", sample("search", schema_version=version), valid)
    yield _probe("no schema_version", sample("search", schema_version=DROP), False)
    yield _probe("only session_id", sample("page_view", customer_id=DROP), True)
    yield _probe("only customer_id", sample("page_view", session_id=None), True)
    no_identity = sample("page_view", customer_id=None, session_id=DROP)
    yield _probe("no customer or session", no_identity, False, "customer_id")
    for topic, event_type in (("clickstream", "cart_add"), ("cart", "page_view"), ("cart", "x")):
        event = {**sample("cart_add"), "event_type": event_type}
        yield Probe(f"event_type {event_type!r} on {topic}", topic, event, False)
    yield Probe("event_type list", "cart", {**sample("cart_add"), "event_type": ["x"]}, False)
    for top in ([sample("cart_add")], "cart_add", None, 5):
        yield Probe(f"top level {type(top).__name__}", "cart", top, False)


def _content_probes() -> Iterator[Probe]:
    """Unicode, huge strings, unknown fields (tolerated, whatever they hold)."""
    yield _probe("emoji ids", sample("search", customer_id="😀" * 256, query="🔍" * 1024), True)
    yield _probe("emoji product id 65", sample("product_view", product_id="😀" * 65), False)
    yield _probe("control chars", sample("search", query="\x00\x1f\u200b\ufeff"), True)
    yield _probe("rtl and combining", sample("category_view", category="ا\u0301" * 128), True)
    huge = [{**LINE, "description": "d" * 60_000}]
    yield _probe("huge description", sample("order", lines=huge), False, "description")
    yield _probe("huge unknown field", sample("page_view", referrer="r" * 60_000), True)
    nested = {"a": [{"b": [[None, 1.5, {"c": "😀"}]]}]}
    yield _probe("nested unknown field", sample("search", extra=nested), True)
    yield _probe("nested junk in channels", sample("profile", channels={"email": nested}), False)
    yield _probe("unknown field in channels", sample("profile", channels={"fax": "1"}), True)
    yield _probe("_ts given", sample("page_view", _ts="junk"), True)  # overwritten by the worker


def probes() -> list[Probe]:
    return [
        *(_probe(f"valid {t}", sample(t), True) for t in SAMPLES),
        *(_probe(f"{t} with a list as event_id", sample(t, event_id=[t]), False) for t in SAMPLES),
        *_issue_probes(),
        *_field_probes(),
        *_line_probes(),
        *_envelope_probes(),
        *_content_probes(),
    ]
