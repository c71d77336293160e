"""Generate JSON Schema (draft 2020-12) files from the event Records.

``nextbest schemas`` writes them to ``schemas/json/``; a test fails when the committed files
drift from what the Records generate.
"""

from __future__ import annotations

import json
from pathlib import Path

from schemas.events import INPUT_EVENTS, OUTPUT_EVENTS, REQUIRED_BY_TYPE
from schemas.records import SCHEMA_VERSION
from schemas.spec import ID_MAX_LENGTH, FieldSpec, RecordSpec, record_spec

JSON_DIR = Path(__file__).with_name("json")
_ID_FIELDS = {"event_id", "merchant_id", "customer_id", "session_id"}
_TYPES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}


def _field_schema(name: str, spec: FieldSpec) -> dict:
    if spec.kind in _TYPES:
        schema: dict = {"type": _TYPES[spec.kind]}
        if spec.kind == "str" and name in _ID_FIELDS:
            schema.update(minLength=1, maxLength=ID_MAX_LENGTH)
    elif spec.kind == "enum":
        schema = {"type": "string", "enum": list(spec.choices)}
    elif spec.kind == "list":
        schema = {"type": "array", "items": _field_schema("", spec.item)}  # type: ignore[arg-type]
    else:
        schema = _record_schema(spec.record)  # type: ignore[arg-type]
    if spec.nullable:
        schema = {"anyOf": [schema, {"type": "null"}]}
    return schema


def _record_schema(spec: RecordSpec) -> dict:
    properties = {}
    for name, field in spec.fields.items():
        prop = _field_schema(name, field)
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


def build_schemas() -> dict[str, dict]:
    """File name -> JSON Schema document, for every input and output topic."""
    documents = {}
    for topic_kind, record in {**INPUT_EVENTS, **OUTPUT_EVENTS}.items():
        spec = record_spec(record)
        schema = _record_schema(spec)
        if topic_kind in INPUT_EVENTS:
            schema["properties"]["schema_version"]["const"] = SCHEMA_VERSION
            # like parse_event: a customer id or a session id that is not null, and the fields
            # an event type needs present, not null and not empty
            schema["anyOf"] = [
                {"required": [name], "properties": {name: {"type": "string"}}}
                for name in ("customer_id", "session_id")
            ]
            conditions = [
                {
                    "if": {"properties": {"event_type": {"const": t}}},
                    "then": {
                        "required": list(needs),
                        "properties": {n: {"type": "string", "minLength": 1} for n in needs},
                    },
                }
                for t, needs in REQUIRED_BY_TYPE.items()
                if t in spec.fields["event_type"].choices
            ]
            if conditions:
                schema["allOf"] = conditions
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
