"""Fast validation of raw input events against the Records in ``schemas.events``.

``parse_event`` turns the bytes of one Kafka record into a checked ``dict`` (plus ``_ts``, the
event time as epoch seconds) or raises ``InvalidEvent`` with a dead-letter reason. Building a
Faust Record per event costs ~12 µs; checking the dict with validators compiled once from the
same Records costs a fraction of that, which matters at thousands of events per second.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import datetime

import orjson

from schemas.events import INPUT_EVENTS, REQUIRED_BY_TYPE
from schemas.records import SCHEMA_VERSION
from schemas.spec import ID_MAX_LENGTH, FieldSpec, RecordSpec, record_spec

Check = Callable[[object, str], None]
_Validate = Callable[[object], None]


class InvalidEvent(ValueError):
    """An input that cannot be used. ``reason`` is the dead-letter reason label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class _Violation(Exception):
    """Raised by compiled validators; the path is built on the way out, only on failure."""

    def __init__(self, message: str) -> None:
        self.message = message
        self.path: list[str] = []  # innermost first: ".quantity", "[0]", ".lines"


def _fail(path: str, message: str) -> None:
    raise InvalidEvent("schema_violation", f"{path}: {message}")


def _violation(message: str) -> None:
    raise _Violation(message)


def _compile(spec: FieldSpec) -> Check:
    """A check of one field's value that raises ``InvalidEvent`` naming ``path``."""
    validate = _compile_field(spec)

    def check(value: object, path: str) -> None:
        try:
            validate(value)
        except _Violation as exc:
            _fail(path + "".join(reversed(exc.path)), exc.message)

    return check


def _compile_field(spec: FieldSpec) -> _Validate:
    nullable = spec.nullable

    def validate(value: object) -> None:
        if value is None:
            if not nullable:
                _violation("must not be null")
            return
        base(value)

    if spec.kind == "str":

        def base(value: object) -> None:
            if type(value) is not str:
                _violation(f"expected a string, got {type(value).__name__}")

    elif spec.kind == "int":

        def base(value: object) -> None:
            if type(value) is not int:
                _violation(f"expected an integer, got {type(value).__name__}")

    elif spec.kind == "float":

        def base(value: object) -> None:
            if type(value) is not float and type(value) is not int:
                _violation(f"expected a number, got {type(value).__name__}")
            if not math.isfinite(value):  # type: ignore[arg-type]
                _violation("must be a finite number")

    elif spec.kind == "bool":

        def base(value: object) -> None:
            if type(value) is not bool:
                _violation(f"expected true or false, got {type(value).__name__}")

    elif spec.kind == "enum":
        choices = frozenset(spec.choices)

        def base(value: object) -> None:
            if value not in choices:
                _violation(f"must be one of {sorted(choices)}, got {value!r}")

    elif spec.kind == "list":
        item = _compile_field(spec.item)  # type: ignore[arg-type]

        def base(value: object) -> None:
            if type(value) is not list:
                _violation(f"expected a list, got {type(value).__name__}")
            for i, element in enumerate(value):  # type: ignore[arg-type]
                try:
                    item(element)
                except _Violation as exc:
                    exc.path.append(f"[{i}]")
                    raise

    elif spec.kind == "record":
        base = _compile_record(spec.record)  # type: ignore[arg-type]
    else:
        raise TypeError(spec.kind)
    return validate


def _compile_record(spec: RecordSpec) -> _Validate:
    validators = {name: _compile_field(field) for name, field in spec.fields.items()}
    required = spec.required

    def validate(value: object) -> None:
        if type(value) is not dict:
            _violation(f"expected an object, got {type(value).__name__}")
        missing = required.difference(value)  # type: ignore[arg-type]
        if missing:
            _violation(f"missing required field(s) {sorted(missing)}")
        for name, field_value in value.items():  # type: ignore[union-attr]
            field_validate = validators.get(name)
            if field_validate is not None:
                try:
                    field_validate(field_value)
                except _Violation as exc:
                    exc.path.append(f".{name}")
                    raise

    return validate


def _event_type_table() -> dict[str, dict[str, _Validate]]:
    """topic kind -> event_type -> compiled validator of that event's record."""
    table: dict[str, dict[str, _Validate]] = {}
    for kind, record in INPUT_EVENTS.items():
        spec = record_spec(record)
        validate = _compile_record(spec)
        table[kind] = {choice: validate for choice in spec.fields["event_type"].choices}
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


def parse_event(
    raw: bytes | None, topic_kind: str, max_bytes: int, max_future_s: float | None = None
) -> dict:
    """Decode and check one input record from the topic of kind ``topic_kind``.

    ``max_future_s``: an ``event_time`` further than this ahead of this machine's clock is a
    schema violation. Event time drives the state's clocks (attribution windows, journey
    timers), which only move forward: one event dated years ahead would close every open
    window of its partition. None: no limit (replays of simulated futures)."""
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
    validate = _CHECKS[topic_kind].get(event_type)
    if validate is None:
        home = ALL_EVENT_TYPES.get(event_type)  # type: ignore[arg-type]
        where = f" (it belongs on the {home} topic)" if home else ""
        raise InvalidEvent(
            "unknown_event_type", f"event_type {event_type!r} is not accepted here{where}"
        )
    try:
        validate(event)
    except _Violation as exc:
        _fail("$" + "".join(reversed(exc.path)), exc.message)
    _check_ids(event)
    _check_domain(event)
    event["_ts"] = parse_time(event["event_time"])
    if max_future_s is not None and event["_ts"] > time.time() + max_future_s:
        raise InvalidEvent(
            "schema_violation",
            f"event_time: {event['event_time']} is more than {max_future_s:g} s ahead of now",
        )
    return event
