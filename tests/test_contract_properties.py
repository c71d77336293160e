"""Properties of the input contract, on events generated from the contract's own specs
(``schemas.contract``): valid events of every input type, and mutated ones (a field dropped, a
wrong type, a value past its bound, junk added).

- ``parse_event`` accepts the valid ones and raises nothing but ``InvalidEvent`` on the rest;
- the published JSON Schema agrees with it on every event;
- the customer state, fed accepted events, stays JSON (orjson round trip equal), its numbers
  finite and within 64 bits (``rfm.monetary`` included), its size under the documented bound.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from schemas.contract import input_contracts
from schemas.events import INPUT_EVENTS
from schemas.limits import EVENT_TIME_PATTERN
from schemas.spec import FieldSpec, RecordSpec, record_spec
from schemas.validation import InvalidEvent, parse_event
from streams.state import customer_state as cs
from tests.probes import PROBE_MAX_BYTES, schema_validators
from tests.test_customer_state import WORST_RECORD_BOUND

CONTRACTS = input_contracts()
EVENT_TYPES = [(kind, t) for kind, c in CONTRACTS.items() for t in c.by_type]
I64 = (-(2**63), 2**63 - 1)

# --- strategies from the specs ----------------------------------------------------------------

_MINUTE_OFFSETS = st.integers(-(23 * 60 + 59), 23 * 60 + 59)
_LOCAL_TIMES = st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31, 23, 59, 59, 999999))


def _rfc3339(moment: datetime, offset: int) -> str:
    text = moment.replace(tzinfo=timezone(timedelta(minutes=offset))).isoformat()
    return text.replace("+00:00", "Z") if offset == 0 else text


_PATTERNS = {  # pattern -> strings matching it
    EVENT_TIME_PATTERN: st.builds(_rfc3339, _LOCAL_TIMES, _MINUTE_OFFSETS),
    "^[A-Za-z]{3}$": st.from_regex(r"[A-Za-z]{3}", fullmatch=True),
}
_TEXT = st.text(max_size=8)  # any code point but lone surrogates (not encodable as JSON)


def _repeated(shortest: int, longest: int) -> st.SearchStrategy[str]:
    """Long strings, cheaply: one character repeated (random long text exhausts Hypothesis)."""
    return st.builds(
        lambda char, size: char * size, st.characters(codec="utf-8"), st.integers(shortest, longest)
    )


def value_of(spec: FieldSpec) -> st.SearchStrategy:
    """Values the spec accepts."""
    bounds = spec.bounds
    if spec.kind == "str":
        if bounds.pattern:
            base = _PATTERNS[bounds.pattern]
        else:
            longest = bounds.max_length
            base = st.one_of(
                st.text(min_size=bounds.min_length or 0, max_size=min(longest, 24)),  # type: ignore[type-var]
                _repeated(longest - 2, longest),  # type: ignore[operator]
            )
    elif spec.kind == "int":
        low, high = int(bounds.minimum), int(bounds.maximum)  # type: ignore[arg-type]
        base = st.one_of(st.integers(low, high), st.sampled_from([low, high]))
    elif spec.kind == "float":
        low, high = bounds.minimum, bounds.maximum
        above = bounds.exclusive_minimum  # the minimum itself is out
        base = st.one_of(
            st.floats(low, high, exclude_min=above, allow_nan=False),
            st.integers(int(low) + above, int(high)),  # type: ignore[arg-type]
            st.sampled_from([high] if above else [low, high]),
        )
    elif spec.kind == "bool":
        base = st.booleans()
    elif spec.kind == "enum":
        base = st.sampled_from(spec.choices)
    elif spec.kind == "list":
        base = st.lists(value_of(spec.item), max_size=4)  # type: ignore[arg-type]
    else:
        base = record_of(spec.record)  # type: ignore[arg-type]
    return st.one_of(st.none(), base) if spec.nullable else base


def record_of(spec: RecordSpec, optional: frozenset[str] | None = None) -> st.SearchStrategy:
    """Records the spec accepts: its required fields and some of the optional ones."""
    names = set(spec.fields) if optional is None else optional
    return st.fixed_dictionaries(
        {name: value_of(spec.fields[name]) for name in sorted(spec.required)},
        optional={name: value_of(spec.fields[name]) for name in sorted(names - spec.required)},
    )


def _has_identity(event: dict) -> bool:
    return event.get("customer_id") is not None or event.get("session_id") is not None


def valid_event(kind: str, event_type: str, foreign: bool = True) -> st.SearchStrategy[dict]:
    """Valid events; ``foreign``: with other topics' fields (valid values) now and then."""
    spec = CONTRACTS[kind].by_type[event_type]
    own = None if foreign else frozenset(record_spec(INPUT_EVENTS[kind]).fields)
    return (
        record_of(spec, own)
        .map(lambda event: {**event, "event_type": event_type})
        .filter(_has_identity)
    )


def any_valid_event(foreign: bool = True) -> st.SearchStrategy[tuple[str, dict]]:
    """(topic kind, valid event) of any input event type."""
    return st.one_of(
        [
            valid_event(kind, t, foreign).map(lambda e, kind=kind: (kind, e))
            for kind, t in EVENT_TYPES
        ]
    )


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(*I64) | st.floats(allow_nan=False) | _TEXT,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_TEXT, children, max_size=3),
    max_leaves=8,
)


def past_bound(spec: FieldSpec) -> st.SearchStrategy:
    """Values just past one of the spec's bounds (or of the wrong type when it has none)."""
    bounds = spec.bounds
    if spec.kind == "str" and bounds.max_length is not None:
        return _repeated(bounds.max_length + 1, bounds.max_length + 3)
    if spec.kind == "str" and bounds.pattern is not None:
        return _TEXT.filter(lambda text: not text[:3].isalpha())
    if spec.kind in ("int", "float"):
        low, high = bounds.minimum, bounds.maximum
        above = bounds.exclusive_minimum  # the minimum itself is out
        return st.one_of(
            st.floats(max_value=low, exclude_max=not above, allow_nan=False),  # type: ignore[arg-type]
            st.floats(min_value=high, exclude_min=True, allow_nan=False),  # type: ignore[arg-type]
            st.integers(*I64).filter(
                lambda v: not low <= v <= high or above and v == low  # type: ignore[operator]
            ),
        )
    if spec.kind == "list" and bounds.max_items is not None:
        return st.just([{}] * (bounds.max_items + 1))
    return _JSON


_ANY_VALID = any_valid_event()
_PAST_BOUND = {
    (kind, t, name): past_bound(field)
    for kind, t in EVENT_TYPES
    for name, field in CONTRACTS[kind].by_type[t].fields.items()
}


@st.composite
def mutated_event(draw: st.DrawFn) -> tuple[str, dict]:
    kind, event = draw(_ANY_VALID)
    fields = CONTRACTS[kind].by_type[event["event_type"]].fields
    name = draw(st.sampled_from(sorted(fields)))
    mutation = draw(st.sampled_from(["drop", "junk", "past_bound", "extra"]))
    if mutation == "drop":
        event.pop(name, None)
    elif mutation == "junk":
        event[name] = draw(_JSON)
    elif mutation == "past_bound":
        event[name] = draw(_PAST_BOUND[kind, event["event_type"], name])
    else:
        event[draw(_TEXT)] = draw(_JSON)
    return kind, event


# --- properties -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def validators() -> dict[str, Draft202012Validator]:
    return schema_validators()


def verdict(event: dict, kind: str) -> bool:
    """parse_event's verdict; any exception other than InvalidEvent fails the property."""
    try:
        parse_event(orjson.dumps(event), kind, PROBE_MAX_BYTES)
    except InvalidEvent:
        return False
    return True


@given(_ANY_VALID)
def test_every_valid_event_is_accepted_by_both(validators, kind_event):
    kind, event = kind_event
    assert verdict(event, kind)
    assert validators[kind].is_valid(event)


@given(mutated_event())
def test_json_schema_and_parse_event_agree_on_mutated_events(validators, kind_event):
    kind, event = kind_event
    assert verdict(event, kind) == validators[kind].is_valid(event)


def _walk(value: object) -> None:
    """Every number finite and within 64 bits, every container JSON."""
    if type(value) is float:
        assert math.isfinite(value)
    elif type(value) is int:
        assert I64[0] <= value <= I64[1]
    elif isinstance(value, dict):
        assert all(type(key) is str for key in value)
        for item in value.values():
            _walk(item)
    elif isinstance(value, list):
        for item in value:
            _walk(item)
    else:
        assert value is None or type(value) in (str, bool)


@given(st.lists(any_valid_event(foreign=False), min_size=1, max_size=12))
def test_the_state_stays_bounded_json_whatever_accepted_events_it_gets(events):
    state = cs.new_state()
    for kind, event in events:
        parsed = parse_event(orjson.dumps(event), kind, PROBE_MAX_BYTES)
        cs.apply_event(state, kind, parsed)
    _walk(state)
    raw = orjson.dumps(state)
    assert orjson.loads(raw) == state
    assert math.isfinite(state["rfm"]["monetary"])
    assert len(raw) < WORST_RECORD_BOUND
