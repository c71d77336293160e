"""Event contracts: the hot-path validator (``parse_event``), its dead-letter reasons, the
committed JSON Schema files (drift) and parity between the two validators."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from jsonschema import Draft202012Validator

from schemas.events import INPUT_EVENTS, OUTPUT_EVENTS
from schemas.json_schema import JSON_DIR, build_schemas, render
from schemas.limits import ID_MAX_LENGTH
from schemas.records import SCHEMA_VERSION
from schemas.spec import FieldSpec
from schemas.validation import ALL_EVENT_TYPES, InvalidEvent, _compile, parse_event, parse_time
from tests.probes import (
    BASE,
    CHANNELS,
    DROP,
    LINE,
    SAMPLES,
    accepted_by_parse_event,
    sample,
    schema_validators,
)

MAX_BYTES = 65536
EVENT_TS = 1323435000.0  # 2011-12-09 12:50:00 UTC


def parse(event: object, topic: str | None = None, max_bytes: int = MAX_BYTES) -> dict:
    if topic is None:
        topic = ALL_EVENT_TYPES[event["event_type"]]  # type: ignore[index]
    return parse_event(orjson.dumps(event), topic, max_bytes)


def rejected(event: object, topic: str | None = None) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as info:
        parse(event, topic)
    return info.value


# --- valid events ---------------------------------------------------------------------------


def test_samples_cover_every_input_event_type():
    assert set(SAMPLES) == set(ALL_EVENT_TYPES)
    assert set(ALL_EVENT_TYPES.values()) == set(INPUT_EVENTS)


@pytest.mark.parametrize("event_type", sorted(SAMPLES))
def test_valid_event_of_every_type_passes_and_gets_ts(event_type):
    event = sample(event_type)
    parsed = parse(event)
    assert parsed["_ts"] == EVENT_TS
    assert {k: v for k, v in parsed.items() if k != "_ts"} == event


def test_minimal_event_with_only_session_id_passes():
    event = sample("page_view", customer_id=DROP, page=DROP)
    event["session_id"] = "anon-1"
    assert parse(event)["_ts"] == EVENT_TS


def test_utc_offset_is_honoured_in_ts():
    assert parse(sample("page_view", event_time="2011-12-09T13:50:00+01:00"))["_ts"] == EVENT_TS
    assert parse_time("1970-01-01T00:00:00Z") == 0.0


def test_an_event_time_too_far_ahead_of_the_clock_is_a_schema_violation():
    """Event time drives clocks that only move forward: a date years ahead is refused."""
    ahead = datetime.now(UTC) + timedelta(days=2)
    raw = orjson.dumps(sample("page_view", event_time=ahead.isoformat()))
    with pytest.raises(InvalidEvent) as info:
        parse_event(raw, "clickstream", 65536, max_future_s=86400)
    assert info.value.reason == "schema_violation"
    assert "s ahead of now" in str(info.value)
    assert parse_event(raw, "clickstream", 65536, max_future_s=3 * 86400)["_ts"] > 0
    assert parse_event(raw, "clickstream", 65536)["_ts"] > 0  # no limit given: accepted
    past = orjson.dumps(sample("page_view"))  # 2011: any limit accepts the past
    assert parse_event(past, "clickstream", 65536, max_future_s=0.0)["_ts"] == EVENT_TS


def test_unknown_extra_fields_are_tolerated():
    assert parse(sample("search", referrer="newsletter"))["referrer"] == "newsletter"


def test_size_limit_is_inclusive():
    raw = orjson.dumps(sample("page_view"))
    assert parse_event(raw, "clickstream", len(raw))["event_id"] == "evt-1"


# --- dead-letter reasons --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b'{"cart_value": NaN}', "not valid JSON"),  # NaN/Infinity are not JSON
        (b'{"cart_value": 1e999}', "not valid JSON"),  # would be inf
        (b"[1, 2]", "expected a JSON object, got list"),
        (b'"text"', "expected a JSON object, got str"),
        (b"null", "expected a JSON object, got NoneType"),
        (None, "empty record (no value)"),
    ],
)
def test_malformed_json(raw, message):
    with pytest.raises(InvalidEvent) as info:
        parse_event(raw, "cart", MAX_BYTES)
    assert info.value.reason == "malformed_json"
    assert message in str(info.value)


def test_oversize_payload_is_checked_before_decoding():
    raw = b"x" * 101  # not even JSON: the size check comes first
    with pytest.raises(InvalidEvent) as info:
        parse_event(raw, "cart", 100)
    assert info.value.reason == "oversize_payload"
    assert str(info.value) == "101 bytes > limit of 100"


@pytest.mark.parametrize("version", [2, 0, "1", None, DROP, 1.5])
def test_unsupported_schema_version(version):
    error = rejected(sample("cart_add", schema_version=version))
    assert error.reason == "unsupported_schema_version"
    assert f"expected {SCHEMA_VERSION}" in str(error)


def test_unknown_event_type_hints_at_its_topic():
    error = rejected(sample("cart_add"), topic="clickstream")
    assert error.reason == "unknown_event_type"
    assert str(error) == "event_type 'cart_add' is not accepted here (it belongs on the cart topic)"


@pytest.mark.parametrize("event_type", ["bogus", None, 7])
def test_unknown_event_type_without_hint(event_type):
    error = rejected({**BASE, "event_type": event_type}, topic="cart")
    assert error.reason == "unknown_event_type"
    assert "belongs" not in str(error)
    assert repr(event_type) in str(error)


def test_missing_event_type_is_unknown():
    assert rejected(dict(BASE), topic="orders").reason == "unknown_event_type"


@pytest.mark.parametrize("event_type", [["cart_add"], {"type": "cart_add"}])
def test_unhashable_event_type_is_a_dead_letter_not_a_crash(event_type):
    error = rejected({**BASE, "event_type": event_type}, topic="cart")
    assert error.reason in {"unknown_event_type", "schema_violation"}


VIOLATIONS = [
    # (event, topic or None, expected message)
    (sample("cart_add", merchant_id=DROP), None, "$: missing required field(s) ['merchant_id']"),
    (
        sample("order", order_id=DROP, total=DROP),
        None,
        "$: missing required field(s) ['order_id', 'total']",
    ),
    (sample("profile", channels=DROP), None, "missing required field(s) ['channels']"),
    (sample("cart_add", merchant_id=5), None, "$.merchant_id: expected a string, got int"),
    (sample("cart_add", merchant_id=None), None, "$.merchant_id: must not be null"),
    (sample("cart_add", cart_value="15.3"), None, "$.cart_value: expected a number, got str"),
    (sample("cart_add", cart_value=True), None, "$.cart_value: expected a number, got bool"),
    (
        sample("cart_add", lines=[{**LINE, "quantity": True}]),
        None,
        "$.lines[0].quantity: expected an integer, got bool",
    ),
    (
        sample("cart_add", lines=[{**LINE, "quantity": 1.5}]),
        None,
        "$.lines[0].quantity: expected an integer, got 1.5",
    ),
    (sample("cart_add", schema_version=True), None, "$.schema_version: expected an integer"),
    (sample("cart_add", lines={"a": 1}), None, "$.lines: expected a list, got dict"),
    (sample("cart_add", lines=["85123A"]), None, "$.lines[0]: expected an object, got str"),
    (
        sample("cart_add", lines=[{"quantity": 1, "unit_price": 1.0}]),
        None,
        "$.lines[0]: missing required field(s) ['product_id']",
    ),
    (
        sample("profile", preferred_channel="fax"),
        None,
        "$.preferred_channel: must be one of ['email', 'in_app', 'push', 'sms'], got 'fax'",
    ),
    (sample("profile", opted_out="no"), None, "$.opted_out: expected true or false, got str"),
    (
        sample("profile", channels={**CHANNELS, "in_app": 1}),
        None,
        "$.channels.in_app: expected true or false, got int",
    ),
    (sample("profile", channels="email"), None, "$.channels: expected an object, got str"),
    (
        sample("page_view", event_time="yesterday"),
        None,
        "$.event_time: must be an RFC 3339 date-time with an offset, years 2000..2099",
    ),
    (sample("page_view", event_time="2011-12-09T12:50:00"), None, "got '2011-12-09T12:50:00'"),
    (sample("page_view", event_time="2011-02-30T12:50:00Z"), None, "event_time: not an ISO"),
    (sample("page_view", event_time=1323435000), None, "$.event_time: expected a string"),
    (sample("page_view", event_id=""), None, f"$.event_id: must be 1..{ID_MAX_LENGTH} characters"),
    (sample("page_view", merchant_id=""), None, "$.merchant_id: must be 1..256 characters, got 0"),
    (sample("page_view", customer_id=""), None, "$.customer_id: must be 1..256 characters"),
    (sample("page_view", session_id="s" * 257), None, "$.session_id: must be 1..256 characters"),
    (
        sample("page_view", customer_id=None, session_id=None),
        None,
        "customer_id: an event needs a customer_id or a session_id",
    ),
    (
        sample("page_view", customer_id=DROP, session_id=DROP),
        None,
        "an event needs a customer_id or a session_id",
    ),
    (sample("product_view", product_id=DROP), None, "$: missing required field(s) ['product_id']"),
    (sample("product_view", product_id=""), None, "$.product_id: must be 1..64 characters, got 0"),
    (sample("category_view", category=None), None, "$.category: must not be null"),
    (sample("search", query=""), None, "$.query: must be 1..1024 characters, got 0"),
    (
        sample("cart_add", lines=[{**LINE, "quantity": 0}]),
        None,
        "$.lines[0].quantity: must be between 1 and 1000000, got 0",
    ),
    (sample("cart_remove", lines=[{**LINE, "quantity": -1}]), None, "between 1 and 1000000"),
    (sample("order", lines=[LINE, {**LINE, "quantity": -2}]), None, "$.lines[1].quantity"),
    (
        sample("cart_quantity", lines=[{**LINE, "quantity": -1}]),
        None,
        "$.lines[0].quantity: must be between 0 and 1000000, got -1",
    ),
    (
        sample("order_cancel", lines=[{**LINE, "quantity": 1}]),
        None,
        "$.lines[0].quantity: must be between -1000000 and -1, got 1",
    ),
    (sample("order_cancel", lines=[{**LINE, "quantity": 0}]), None, "between -1000000 and -1"),
    (
        sample("cart_add", lines=[{**LINE, "unit_price": -0.01}]),
        None,
        "$.lines[0].unit_price: must be between 0 and 1000000000, got -0.01",
    ),
    (sample("cart_add", cart_value=-1), None, "$.cart_value: must be between 0 and 1000000000"),
    # issue 15: values that cannot be represented or stored are refused at the door
    (sample("page_view", event_time="0001-01-01T00:00:00Z"), None, "$.event_time: must be"),
    (sample("page_view", event_time="2999-01-01T00:00:00Z"), None, "$.event_time: must be"),
    (sample("page_view", event_time="1999-12-31T23:59:59Z"), None, "$.event_time: must be"),
    (
        sample("cart_add", lines=[{**LINE, "quantity": 2**63}]),
        None,
        "$.lines[0].quantity: must be between 1 and 1000000, got 9223372036854775808",
    ),
    (sample("order", total=1e308), None, "$.total: must be between -1000000000 and 1000000000"),
    (sample("order", total=-1e10), None, "$.total: must be between"),
    (
        sample("cart_add", lines=[{**LINE, "product_id": "p" * 60_000}]),
        None,
        "$.lines[0].product_id: must be 1..64 characters, got 60000",
    ),
    (
        sample("order", lines=[{"product_id": "p", "quantity": 1, "unit_price": 0}] * 1001),
        None,
        "$.lines: at most 1000 items, got 1001",
    ),
    (sample("cart_add", currency="POUND"), None, "$.currency: must be 3..3 characters"),
    (sample("cart_add", currency="G8P"), None, "$.currency: must be 3 letters (ISO 4217)"),
    (sample("profile", channels={"email": "a" * 513}), None, "$.channels.email: must be 0..512"),
    (sample("profile", preferred_channel=["email"]), None, "$.preferred_channel: must be one of"),
    # issue 15: junk in a field the topic does not use names the field (was a TypeError)
    (sample("page_view", cart_value="x"), None, "$.cart_value: expected a number, got str"),
    (sample("profile", lines=5), None, "$.lines: expected a list, got int"),
    (sample("profile", lines=[{}]), None, "$.lines[0]: missing required field(s)"),
    (sample("offer_opened", total=[1]), None, "$.total: expected a number, got list"),
    (sample("cart_add", order_id=7), None, "$.order_id: expected a string, got int"),
]


@pytest.mark.parametrize(("event", "topic", "message"), VIOLATIONS)
def test_schema_violation(event, topic, message):
    error = rejected(event, topic)
    assert error.reason == "schema_violation"
    assert message in str(error)


@pytest.mark.parametrize("quantity", ["18446744073709551616", "1e30", "1e308", "-1e400"])
def test_quantities_beyond_64_bits_or_infinite_are_violations_not_crashes(quantity):
    """orjson reads integers beyond 64 bits as floats (and 1e400 as malformed): all refused."""
    raw = orjson.dumps(sample("cart_add")).replace(
        b'"quantity":6', b'"quantity":' + quantity.encode()
    )
    with pytest.raises(InvalidEvent) as info:
        parse_event(raw, "cart", MAX_BYTES)
    assert info.value.reason in {"schema_violation", "malformed_json"}
    if info.value.reason == "schema_violation":
        assert "$.lines[0].quantity: must be between 1 and 1000000" in str(info.value)


def test_an_integral_float_quantity_is_the_integer_as_json_schema_says():
    """JSON Schema (and a JavaScript producer) cannot tell 1.0 from 1: both are accepted."""
    parsed = parse(sample("cart_add", lines=[{**LINE, "quantity": 2.0}]))
    assert parsed["lines"][0]["quantity"] == 2 and type(parsed["lines"][0]["quantity"]) is int
    assert parse(sample("cart_add", schema_version=1.0))["schema_version"] == 1


@pytest.mark.parametrize(
    ("event_type", "quantity"),
    [("cart_quantity", 0), ("cart_quantity", 5), ("order_cancel", -3), ("cart_add", 1)],
)
def test_quantity_rules_accept(event_type, quantity):
    lines = [{**SAMPLES[event_type]["lines"][0], "quantity": quantity}]
    assert parse(sample(event_type, lines=lines))["lines"][0]["quantity"] == quantity


def test_unit_price_zero_and_nullable_description_are_allowed():
    lines = [{**LINE, "unit_price": 0, "description": None}]
    assert parse(sample("cart_add", lines=lines))["lines"][0]["unit_price"] == 0


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_number_check_rejects_non_finite(value):
    # NaN and inf cannot arrive through JSON bytes (orjson rejects them, see
    # test_malformed_json); the compiled check still guards the number kind itself.
    check = _compile(FieldSpec("float"))
    with pytest.raises(InvalidEvent, match=r"\$\.cart_value: must be a finite number") as info:
        check(value, "$.cart_value")
    assert info.value.reason == "schema_violation"
    check(1.5, "$.cart_value")
    check(2, "$.cart_value")


def test_unknown_topic_kind_is_a_programming_error():
    with pytest.raises(KeyError):
        parse(sample("page_view"), topic="nope")


# --- JSON Schema files ----------------------------------------------------------------------


def test_committed_json_schemas_match_the_records():
    """Drift test: run ``nextbest schemas`` after changing schemas/events.py."""
    documents = build_schemas()
    expected_names = {
        f"{kind.replace('_', '-')}.v{SCHEMA_VERSION}.json"
        for kind in {**INPUT_EVENTS, **OUTPUT_EVENTS}
    }
    assert set(documents) == expected_names
    # catalog.v1.json: from the merchants model (tests/test_catalog_records.py checks it)
    committed = {path.name for path in JSON_DIR.glob("*.json")} - {"catalog.v1.json"}
    assert committed == set(documents), "stale or missing files in schemas/json/"
    for name, document in documents.items():
        assert (JSON_DIR / name).read_text() == render(document), f"{name} is stale"


def test_generated_schemas_are_valid_draft_2020_12():
    for document in build_schemas().values():
        Draft202012Validator.check_schema(document)
        assert json.loads(render(document)) == document


# --- parity: parse_event vs jsonschema (the probe corpus in tests/test_probes.py goes wider) ---


@pytest.fixture(scope="module")
def validators() -> dict[str, Draft202012Validator]:
    return schema_validators()


# The schemas carry every rule parse_event enforces (bounds, the event_time pattern, per-type
# rules), so domain cases belong here as much as structural ones; only the worker's runtime
# settings (max_future_s, the byte limit) are not in a static schema.
PARITY_GOOD = [(sample(t), ALL_EVENT_TYPES[t]) for t in sorted(SAMPLES)] + [
    (sample("page_view", customer_id=DROP), "clickstream"),
    (sample("page_view", session_id=None), "clickstream"),
    (sample("search", extra={"nested": [1, 2]}), "clickstream"),
    (sample("profile", preferred_channel=None, time_zone=DROP, opted_out=DROP), "profiles"),
    (sample("cart_add", lines=[{**LINE, "description": None}]), "cart"),
    (sample("page_view", event_id="e" * ID_MAX_LENGTH), "clickstream"),
    (sample("cart_add", lines=[{**LINE, "quantity": 1.0}]), "cart"),
    (sample("cart_quantity", lines=[{**LINE, "quantity": 0}]), "cart"),
]
PARITY_BAD = [
    (sample("page_view", event_time="2011-12-09T12:50:00"), "clickstream"),
    (sample("page_view", event_time="yesterday"), "clickstream"),
    (sample("page_view", event_time="2999-01-01T00:00:00Z"), "clickstream"),
    (sample("cart_add", lines=[{**LINE, "unit_price": -1}]), "cart"),
    (sample("cart_add", cart_value=-1), "cart"),
    (sample("cart_add", lines=[{**LINE, "quantity": 0}]), "cart"),
    (sample("order_cancel", lines=[{**LINE, "quantity": 1}]), "orders"),
    (sample("page_view", cart_value="x"), "clickstream"),
    (sample("cart_add"), "clickstream"),  # event type of another topic
    ({**sample("cart_add"), "event_type": "cart_empty"}, "cart"),
    (sample("cart_add", schema_version=2), "cart"),
    (sample("cart_add", schema_version=True), "cart"),
    (sample("cart_add", schema_version=DROP), "cart"),
    (sample("cart_add", event_id=DROP), "cart"),
    (sample("cart_add", currency=DROP), "cart"),
    (sample("cart_add", merchant_id=7), "cart"),
    (sample("cart_add", merchant_id=None), "cart"),
    (sample("cart_add", cart_value="1"), "cart"),
    (sample("cart_add", cart_value=False), "cart"),
    (sample("cart_add", lines=[{**LINE, "quantity": True}]), "cart"),
    (sample("cart_add", lines=[{**LINE, "quantity": "6"}]), "cart"),
    (sample("cart_add", lines=[{"product_id": "x", "quantity": 1}]), "cart"),
    (sample("cart_add", lines=[{**LINE, "description": 5}]), "cart"),
    (sample("cart_add", lines="85123A"), "cart"),
    (sample("page_view", event_id=""), "clickstream"),
    (sample("page_view", customer_id=""), "clickstream"),
    (sample("page_view", event_id="e" * (ID_MAX_LENGTH + 1)), "clickstream"),
    (sample("page_view", customer_id=DROP, session_id=DROP), "clickstream"),
    (sample("product_view", product_id=DROP), "clickstream"),
    (sample("category_view", category=DROP), "clickstream"),
    (sample("search", query=DROP), "clickstream"),
    (sample("page_view", page=3), "clickstream"),
    (sample("profile", preferred_channel="fax"), "profiles"),
    (sample("profile", opted_out=0), "profiles"),
    (sample("profile", channels={"email": 1}), "profiles"),
    (sample("offer_opened", offer_id=DROP), "feedback"),
    (sample("order", order_id=None), "orders"),
    (sample("order", total="15"), "orders"),
]


@pytest.mark.parametrize(("event", "topic"), PARITY_GOOD + PARITY_BAD)
def test_parse_event_and_json_schema_agree(validators, event, topic):
    by_schema = validators[topic].is_valid(event)
    by_parser = accepted_by_parse_event(event, topic)
    assert by_schema == by_parser
    assert by_parser == (any(event is good for good, _ in PARITY_GOOD))


@pytest.mark.parametrize(
    "event",
    [
        sample("page_view", customer_id=None, session_id=None),
        sample("product_view", product_id=None),
        sample("product_view", product_id=""),
        sample("search", query=None),
    ],
)
def test_json_schema_rejects_null_identity_and_null_type_fields(validators, event):
    topic = ALL_EVENT_TYPES[event["event_type"]]
    assert not accepted_by_parse_event(event, topic)
    assert not validators[topic].is_valid(event)
