"""The input contract as plain specs: what ``schemas.validation`` enforces and
``schemas.json_schema`` publishes, both read from here.

Per input topic, ``TopicContract.spec`` is the topic's Record plus, optional, every field other
input topics define: a field name means one thing across the contract, so ``cart_value: "x"``
on a click is a schema violation naming ``cart_value`` (other unknown fields are tolerated and
ignored). ``TopicContract.by_type`` adds each event type's own rules (``REQUIRED_BY_TYPE``,
``LINE_QUANTITY_BY_TYPE``) as tighter field specs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from schemas.events import INPUT_EVENTS, LINE_QUANTITY_BY_TYPE, REQUIRED_BY_TYPE
from schemas.spec import FieldSpec, RecordSpec, record_spec


@dataclass(frozen=True)
class TopicContract:
    kind: str
    spec: RecordSpec
    by_type: dict[str, RecordSpec]  # event_type -> spec with that type's rules


def _shared_fields(specs: list[RecordSpec]) -> dict[str, FieldSpec]:
    """Every field name of the input records (``event_type`` aside) with its one spec."""
    shared: dict[str, FieldSpec] = {}
    for spec in specs:
        for name, field in spec.fields.items():
            if name != "event_type" and shared.setdefault(name, field) != field:
                raise TypeError(f"input field {name!r} differs between records")
    return shared


def _with_type_rules(spec: RecordSpec, event_type: str) -> RecordSpec:
    fields = dict(spec.fields)
    needs = REQUIRED_BY_TYPE.get(event_type, ())
    for name in needs:
        field = fields[name]
        fields[name] = replace(field, nullable=False, bounds=replace(field.bounds, min_length=1))
    quantities = LINE_QUANTITY_BY_TYPE.get(event_type)
    if quantities is not None:
        lines = fields["lines"]
        line = lines.item.record  # type: ignore[union-attr]
        quantity = line.fields["quantity"]  # type: ignore[union-attr]
        low, high = quantities
        quantity = replace(quantity, bounds=replace(quantity.bounds, minimum=low, maximum=high))
        line = replace(line, fields={**line.fields, "quantity": quantity})  # type: ignore[arg-type]
        fields["lines"] = replace(lines, item=replace(lines.item, record=line))  # type: ignore[arg-type]
    return replace(spec, fields=fields, required=spec.required | set(needs))


def input_contracts() -> dict[str, TopicContract]:
    """Input topic kind -> its contract."""
    own = {kind: record_spec(record) for kind, record in INPUT_EVENTS.items()}
    shared = _shared_fields(list(own.values()))
    contracts = {}
    for kind, spec in own.items():
        foreign = {name: field for name, field in shared.items() if name not in spec.fields}
        topic = replace(spec, fields={**spec.fields, **foreign})
        by_type = {t: _with_type_rules(topic, t) for t in spec.fields["event_type"].choices}
        contracts[kind] = TopicContract(kind, topic, by_type)
    return contracts
