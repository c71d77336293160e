"""Turn the Faust Records of ``schemas.events`` into plain field specs, bounds included.

Both the hot-path validator and the JSON Schema generator read these specs, so the two can
never disagree with each other or with the Records. A field's bounds ride on its annotation:
``Annotated[str, Bounds(max_length=64)]``.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, field

import faust

from schemas.limits import ID_MAX_LENGTH as ID_MAX_LENGTH  # noqa: PLC0414 - used by the API


@dataclass(frozen=True)
class Bounds:
    """What a value must stay within; None: no limit of that kind.

    ``pattern`` is searched (JSON Schema semantics: anchor it); ``pattern_doc`` says it in words
    for error messages; ``format`` is the JSON Schema format it implies, for producers' tools;
    ``exclusive_minimum``: the minimum itself is out of range (JSON Schema's
    ``exclusiveMinimum``)."""

    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    pattern_doc: str | None = None
    format: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    max_items: int | None = None


@dataclass(frozen=True)
class FieldSpec:
    kind: str  # "str" | "int" | "float" | "bool" | "enum" | "list" | "record"
    nullable: bool = False
    choices: tuple[str, ...] = ()
    item: FieldSpec | None = None
    record: RecordSpec | None = None
    bounds: Bounds = field(default_factory=Bounds)


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
    if origin is typing.Annotated:
        (bounds,) = (a for a in args[1:] if isinstance(a, Bounds))
        spec = field_spec(args[0])
        return FieldSpec(spec.kind, spec.nullable, spec.choices, spec.item, spec.record, bounds)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"unsupported union {annotation!r}")
        spec = field_spec(inner[0])
        return FieldSpec(spec.kind, True, spec.choices, spec.item, spec.record, spec.bounds)
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
    hints = typing.get_type_hints(record, include_extras=True)
    fields = {name: field_spec(hints[name]) for name in options.fields}
    return RecordSpec(
        name=record.__name__,
        doc=(record.__doc__ or "").strip(),
        fields=fields,
        required=frozenset(set(fields) - set(options.defaults)),
        defaults=dict(options.defaults),
    )
