"""The probe corpus (``tests/probes.py``) through both validators: the published JSON Schemas
(draft 2020-12, formats checked) and the worker's ``parse_event`` give every probe the verdict
it is written with, so a producer that validates against ``schemas/json`` loses no event."""

from __future__ import annotations

from collections import Counter

import orjson
import pytest
from jsonschema import Draft202012Validator

from schemas.validation import ALL_EVENT_TYPES, InvalidEvent, parse_event
from tests.probes import PROBE_MAX_BYTES, Probe, accepted_by_parse_event, probes, schema_validators

PROBES = probes()


@pytest.fixture(scope="module")
def validators() -> dict[str, Draft202012Validator]:
    return schema_validators()


def test_the_corpus_covers_every_event_type_with_valid_and_invalid_probes():
    assert len(PROBES) >= 200
    assert len({probe.name for probe in PROBES}) == len(PROBES), "probe names are unique"
    verdicts = Counter(
        (probe.event["event_type"], probe.valid)
        for probe in PROBES
        if isinstance(probe.event, dict) and str(probe.event.get("event_type")) in ALL_EVENT_TYPES
    )
    for event_type in ALL_EVENT_TYPES:
        assert verdicts[event_type, True] and verdicts[event_type, False], event_type


@pytest.mark.parametrize("probe", PROBES, ids=lambda probe: probe.name[:60])
def test_json_schema_and_parse_event_agree_on_every_probe(validators, probe: Probe):
    assert validators[probe.topic].is_valid(probe.event) is probe.valid
    assert accepted_by_parse_event(probe.event, probe.topic) is probe.valid


@pytest.mark.parametrize(
    "probe", [p for p in PROBES if p.field is not None and not p.valid], ids=lambda p: p.name[:60]
)
def test_a_rejected_probe_is_a_schema_violation_naming_its_field(probe: Probe):
    with pytest.raises(InvalidEvent) as info:
        parse_event(orjson.dumps(probe.event), probe.topic, PROBE_MAX_BYTES)
    assert info.value.reason == "schema_violation"
    assert probe.field in str(info.value)
