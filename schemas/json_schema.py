"""Generate JSON Schema (draft 2020-12) files from the event Records.

Input topics' schemas come from ``schemas.contract``, like the worker's validator, and carry
every rule it enforces (bounds, patterns, per-event-type rules as ``if``/``then``).
``nextbest schemas`` writes them to ``schemas/json/``; a test fails when the committed files
drift from what the Records generate.
"""

from __future__ import annotations

import json
from pathlib import Path

from schemas.contract import input_contracts
from schemas.events import OUTPUT_EVENTS
from schemas.records import SCHEMA_VERSION
from schemas.spec import FieldSpec, RecordSpec, record_spec

JSON_DIR = Path(__file__).with_name("json")
_TYPES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}
_BOUND_KEYWORDS = {  # schemas.spec.Bounds field -> JSON Schema keyword
    "min_length": "minLength",
    "max_length": "maxLength",
    "pattern": "pattern",
    "format": "format",
    "minimum": "minimum",
    "maximum": "maximum",
    "max_items": "maxItems",
}


def _field_schema(spec: FieldSpec) -> dict:
    if spec.kind in _TYPES:
        schema: dict = {"type": _TYPES[spec.kind]}
    elif spec.kind == "enum":
        schema = {"type": "string", "enum": list(spec.choices)}
    elif spec.kind == "list":
        schema = {"type": "array", "items": _field_schema(spec.item)}  # type: ignore[arg-type]
    else:
        schema = _record_schema(spec.record)  # type: ignore[arg-type]
    for name, keyword in _BOUND_KEYWORDS.items():
        value = getattr(spec.bounds, name)
        if value is not None and not (name == "min_length" and value == 0):
            schema[keyword] = value
    if spec.bounds.exclusive_minimum:
        schema["exclusiveMinimum"] = schema.pop("minimum")
    if spec.nullable:
        schema = {"anyOf": [schema, {"type": "null"}]}
    return schema


def _record_schema(spec: RecordSpec) -> dict:
    properties = {}
    for name, field in spec.fields.items():
        prop = _field_schema(field)
        if name in spec.defaults:
            prop["default"] = spec.defaults[name]
        properties[name] = prop
    return {
        "title": spec.name,
        "description": spec.doc,
        "type": "object",
        "properties": properties,
        "required": sorted(spec.required),
    }


def _tightening(base: dict, tight: dict) -> dict:
    """What ``tight`` adds to ``base``: its keywords that differ, recursing into objects. Both
    schemas hold in the end (``allOf``), so the keywords ``tight`` drops need not be undone."""
    added = {}
    for key, value in tight.items():
        old = base.get(key)
        if value == old:
            continue
        added[key] = _tightening(old, value) if type(old) is type(value) is dict else value
    return added


def _type_rules(topic: RecordSpec, by_type: dict[str, RecordSpec]) -> list[dict]:
    """One ``if event_type == t then ...`` per event type with rules of its own."""
    base = _record_schema(topic)
    rules = []
    for event_type, spec in by_type.items():
        then = _tightening(base, _record_schema(spec))
        if then:
            rules.append(
                {"if": {"properties": {"event_type": {"const": event_type}}}, "then": then}
            )
    return rules


def _input_schema(spec: RecordSpec, by_type: dict[str, RecordSpec]) -> dict:
    """Like ``parse_event``: the topic's record and other topics' fields, the schema version,
    a customer id or a session id that is not null, and each event type's rules. Not here: the
    worker's ``max_future_s`` (an event_time that far ahead of its clock), a runtime setting."""
    schema = _record_schema(spec)
    schema["properties"]["schema_version"]["const"] = SCHEMA_VERSION
    schema["anyOf"] = [
        {"required": [name], "properties": {name: {"type": "string"}}}
        for name in ("customer_id", "session_id")
    ]
    rules = _type_rules(spec, by_type)
    if rules:
        schema["allOf"] = rules
    return schema


def build_schemas() -> dict[str, dict]:
    """File name -> JSON Schema document, for every input and output topic."""
    schemas = {kind: _input_schema(c.spec, c.by_type) for kind, c in input_contracts().items()}
    schemas |= {kind: _record_schema(record_spec(r)) for kind, r in OUTPUT_EVENTS.items()}
    documents = {}
    for topic_kind, schema in schemas.items():
        name = f"{topic_kind.replace('_', '-')}.v{SCHEMA_VERSION}.json"
        documents[name] = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"https://nextbest.dev/schemas/{name}",
            **schema,
        }
    return documents


def render(document: dict) -> str:
    return json.dumps(document, indent=2, sort_keys=False) + "\n"


def write_schemas(directory: Path = JSON_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, document in build_schemas().items():
        path = directory / name
        path.write_text(render(document))
        written.append(path)
    return written
