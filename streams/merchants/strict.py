"""The strict base of the merchants-file models, and validation errors that name the field path.

A merchant's config is validated by pydantic models (`streams.merchants.catalog.MerchantConfig`
and the option sections of `streams.merchants.options`) that reject unknown keys, strings where
numbers belong, ``true`` for 1, NaN and infinities; each error becomes one line such as
``merchants.uci-gift-shop.promotions[0].min_spnd: unknown field (did you mean 'min_spend'?)``.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

Channel = Literal["push", "email", "sms", "in_app"]
Positive = Annotated[float, Field(gt=0)]


class ConfigModel(BaseModel):
    """A section of a merchant's config: strict types, no unknown keys, immutable."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        allow_inf_nan=False,
        frozen=True,
        use_attribute_docstrings=True,
    )


_MESSAGES = {
    "extra_forbidden": "unknown field",
    "missing": "required",
    "float_type": "expected a number, got {input!r}",
    "int_type": "expected an integer, got {input!r}",
    "bool_type": "expected true or false, got {input!r}",
    "string_type": "expected a string, got {input!r}",
    "list_type": "expected a list, got {input!r}",
    "model_type": "expected a mapping, got {input!r}",
    "dict_type": "expected a mapping, got {input!r}",
    "greater_than_equal": "expected a number >= {ge}, got {input!r}",
    "greater_than": "expected a number > {gt}, got {input!r}",
    "less_than_equal": "expected a number <= {le}, got {input!r}",
    "less_than": "expected a number < {lt}, got {input!r}",
    "finite_number": "expected a finite number, got {input!r}",
    "literal_error": "must be one of {expected}, got {input!r}",
    "too_short": "expected at least {min_length} item(s)",
    "string_too_short": "expected a non-empty string",
    "timezone_aware": "needs a UTC offset, e.g. 2011-01-01T00:00:00Z",
}


def field_path(where: str, loc: tuple[int | str, ...]) -> str:
    """``merchants.m`` + ``("promotions", 0, "id")`` -> ``merchants.m.promotions[0].id``."""
    return where + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)


def config_errors(exc: ValidationError, model: type[BaseModel], where: str) -> list[str]:
    """One ``<field path>: <what is wrong>`` line per error of validating ``model``."""
    return [
        f"{field_path(where, error['loc'])}: {_message(error, model)}" for error in exc.errors()
    ]


def _message(error: Any, model: type[BaseModel]) -> str:
    kind = error["type"]
    context = error.get("ctx") or {}
    if kind in ("value_error", "assertion_error"):
        return str(context["error"])
    context = {k: f"{v:g}" if isinstance(v, float) else v for k, v in context.items()}
    if kind not in _MESSAGES:
        return error["msg"]
    value = error["input"]
    shown = value if len(repr(value)) <= 60 else f"{repr(value)[:57]}..."
    message = _MESSAGES[kind].format(input=shown, **context)
    if kind == "extra_forbidden":
        known = _fields_at(model, error["loc"][:-1])
        close = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
        if close:
            message += f" (did you mean {close[0]!r}?)"
    return message


def _fields_at(model: type[BaseModel] | None, loc: tuple[int | str, ...]) -> list[str]:
    """The field names of the model found at ``loc`` under ``model`` (for a suggestion)."""
    for part in loc:
        if model is None:
            return []
        if isinstance(part, str) and part in model.model_fields:
            model = _model_in(model.model_fields[part].annotation)
    return list(model.model_fields) if model is not None else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model class inside ``annotation`` (``X``, ``X | None``, ``list[X]``...), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, list, typing.Annotated):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None
