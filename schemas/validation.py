"""Fast validation of raw input events against the Records in ``schemas.events``.

``parse_event`` turns the bytes of one Kafka record into a checked ``dict`` (plus ``_ts``, the
event time as epoch seconds) or raises ``InvalidEvent`` with a dead-letter reason. Building a
Faust Record per event costs ~12 µs; checking the dict with validators compiled once from the
same Records costs a fraction of that, which matters at thousands of events per second.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime

import orjson

from schemas.events import INPUT_EVENTS, REQUIRED_BY_TYPE, SCHEMA_VERSION
from schemas.spec import ID_MAX_LENGTH, FieldSpec, RecordSpec, record_spec

Check = Callable[[object, str], None]


class InvalidEvent(ValueError):
    """An input that cannot be used. ``reason`` is the dead-letter reason label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _fail(path: str, message: str) -> None:
    raise InvalidEvent("schema_violation", f"{path}: {message}")


def _compile(spec: FieldSpec) -> Check:
    nullable = spec.nullable

    def check(value: object, path: str) -> None:
        if value is None:
            if not nullable:
                _fail(path, "must not be null")
            return
        base(value, path)

    if spec.kind == "str":

        def base(value: object, path: str) -> None:
            if type(value) is not str:
                _fail(path, f"expected a string, got {type(value).__name__}")

    elif spec.kind == "int":

        def base(value: object, path: str) -> None:
            if type(value) is not int:
                _fail(path, f"expected an integer, got {type(value).__name__}")

    elif spec.kind == "float":

        def base(value: object, path: str) -> None:
            if type(value) is not float and type(value) is not int:
                _fail(path, f"expected a number, got {type(value).__name__}")
            if not math.isfinite(value):  # type: ignore[arg-type]
                _fail(path, "must be a finite number")

    elif spec.kind == "bool":

        def base(value: object, path: str) -> None:
            if type(value) is not bool:
                _fail(path, f"expected true or false, got {type(value).__name__}")

    elif spec.kind == "enum":
        choices = frozenset(spec.choices)

        def base(value: object, path: str) -> None:
            if value not in choices:
                _fail(path, f"must be one of {sorted(choices)}, got {value!r}")

    elif spec.kind == "list":
        item = _compile(spec.item)  # type: ignore[arg-type]

        def base(value: object, path: str) -> None:
            if type(value) is not list:
                _fail(path, f"expected a list, got {type(value).__name__}")
            for i, element in enumerate(value):  # type: ignore[arg-type]
                item(element, f"{path}[{i}]")

    elif spec.kind == "record":
        base = _compile_record(spec.record)  # type: ignore[arg-type]
    else:
        raise TypeError(spec.kind)
    return check


def _compile_record(spec: RecordSpec) -> Check:
    checks = {name: _compile(field) for name, field in spec.fields.items()}
    required = spec.required

    def check(value: object, path: str) -> None:
        if type(value) is not dict:
            _fail(path, f"expected an object, got {type(value).__name__}")
        missing = required.difference(value)  # type: ignore[arg-type]
        if missing:
            _fail(path, f"missing required field(s) {sorted(missing)}")
        for name, field_value in value.items():  # type: ignore[union-attr]
            field_check = checks.get(name)
            if field_check is not None:
                field_check(field_value, f"{path}.{name}")

    return check


def _event_type_table() -> dict[str, dict[str, Check]]:
    """topic kind -> event_type -> compiled check of that event's record."""
    table: dict[str, dict[str, Check]] = {}
    for kind, record in INPUT_EVENTS.items():
        spec = record_spec(record)
        check = _compile_record(spec)
        table[kind] = {choice: check for choice in spec.fields["event_type"].choices}
    return table


_CHECKS = _event_type_table()
ALL_EVENT_TYPES = {t: kind for kind, types_ in _CHECKS.items() for t in types_}


def parse_time(value: str) -> float:
    """ISO 8601 with a UTC offset (``Z`` allowed) to epoch seconds."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidEvent(
            "schema_violation", f"event_time: not an ISO 8601 time: {value!r}"
        ) from None
    if moment.tzinfo is None:
        raise InvalidEvent(
            "schema_violation", f"event_time: needs a UTC offset such as Z or +01:00: {value!r}"
        )
    return moment.timestamp()


def _check_ids(event: dict) -> None:
    for name in ("event_id", "merchant_id", "customer_id", "session_id"):
        value = event.get(name)
        if value is not None and (value == "" or len(value) > ID_MAX_LENGTH):
            _fail(name, f"must be 1..{ID_MAX_LENGTH} characters")
    if event.get("customer_id") is None and event.get("session_id") is None:
        _fail("customer_id", "an event needs a customer_id or a session_id")


#: event_type -> (lowest, highest, message) allowed line quantity; default: at least 1.
QUANTITY_RULES = {
    "order_cancel": (None, -1, "must be negative for order_cancel"),
    "cart_quantity": (0, None, "must be >= 0 (0 removes the line)"),
}


def _check_domain(event: dict) -> None:
    event_type = event["event_type"]
    for name in REQUIRED_BY_TYPE.get(event_type, ()):
        if event.get(name) in (None, ""):
            _fail(name, f"required for {event_type}")
    if "lines" in event:
        low, high, rule = QUANTITY_RULES.get(event_type, (1, None, "must be > 0"))
        for i, line in enumerate(event["lines"]):
            if line["unit_price"] < 0:
                _fail(f"lines[{i}].unit_price", "must be >= 0")
            quantity = line["quantity"]
            if (low is not None and quantity < low) or (high is not None and quantity > high):
                _fail(f"lines[{i}].quantity", rule)
    if event.get("cart_value", 0) < 0:
        _fail("cart_value", "must be >= 0")


def parse_event(raw: bytes | None, topic_kind: str, max_bytes: int) -> dict:
    """Decode and check one input record from the topic of kind ``topic_kind``."""
    if raw is None:
        raise InvalidEvent("malformed_json", "empty record (no value)")
    if len(raw) > max_bytes:
        raise InvalidEvent("oversize_payload", f"{len(raw)} bytes > limit of {max_bytes}")
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent("malformed_json", f"not valid JSON: {exc}") from None
    if type(event) is not dict:
        raise InvalidEvent("malformed_json", f"expected a JSON object, got {type(event).__name__}")
    version = event.get("schema_version")
    if version != SCHEMA_VERSION:
        raise InvalidEvent(
            "unsupported_schema_version",
            f"schema_version {version!r} is not supported (expected {SCHEMA_VERSION})",
        )
    event_type = event.get("event_type")
    if type(event_type) is not str:
        raise InvalidEvent("unknown_event_type", f"event_type must be a string, got {event_type!r}")
    check = _CHECKS[topic_kind].get(event_type)
    if check is None:
        home = ALL_EVENT_TYPES.get(event_type)  # type: ignore[arg-type]
        where = f" (it belongs on the {home} topic)" if home else ""
        raise InvalidEvent(
            "unknown_event_type", f"event_type {event_type!r} is not accepted here{where}"
        )
    check(event, "$")
    _check_ids(event)
    _check_domain(event)
    event["_ts"] = parse_time(event["event_time"])
    return event
