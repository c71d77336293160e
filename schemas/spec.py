"""Turn the Faust Records of ``schemas.events`` into plain field specs.

Both the hot-path validator and the JSON Schema generator read these specs, so the two can
never disagree with each other or with the Records.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass

import faust

ID_MAX_LENGTH = 256


@dataclass(frozen=True)
class FieldSpec:
    kind: str  # "str" | "int" | "float" | "bool" | "enum" | "list" | "record"
    nullable: bool = False
    choices: tuple[str, ...] = ()
    item: FieldSpec | None = None
    record: RecordSpec | None = None


@dataclass(frozen=True)
class RecordSpec:
    name: str
    doc: str
    fields: dict[str, FieldSpec]
    required: frozenset[str]
    defaults: dict[str, object]


_SCALARS = {str: "str", int: "int", float: "float", bool: "bool"}


def field_spec(annotation: object) -> FieldSpec:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"unsupported union {annotation!r}")
        spec = field_spec(inner[0])
        return FieldSpec(spec.kind, True, spec.choices, spec.item, spec.record)
    if origin is typing.Literal:
        return FieldSpec("enum", choices=tuple(str(a) for a in args))
    if origin is list:
        return FieldSpec("list", item=field_spec(args[0]))
    if isinstance(annotation, type) and issubclass(annotation, faust.Record):
        return FieldSpec("record", record=record_spec(annotation))
    if annotation in _SCALARS:
        return FieldSpec(_SCALARS[annotation])  # type: ignore[index]
    raise TypeError(f"unsupported field type {annotation!r}")


def record_spec(record: type[faust.Record]) -> RecordSpec:
    options = record._options
    hints = typing.get_type_hints(record, include_extras=False)
    fields = {name: field_spec(hints[name]) for name in options.fields}
    return RecordSpec(
        name=record.__name__,
        doc=(record.__doc__ or "").strip(),
        fields=fields,
        required=frozenset(set(fields) - set(options.defaults)),
        defaults=dict(options.defaults),
    )
