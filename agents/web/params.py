"""The REST API's query parameters, checked: every bad value is a 400 that names it."""

from __future__ import annotations

import re
import time
from datetime import datetime

from faust.web import Request

from agents.web.errors import ApiError
from schemas.spec import ID_MAX_LENGTH

MAX_RECOMMENDATIONS = 100
AT_RANGE = ("1970-01-01T00:00:00+00:00", "2100-01-01T00:00:00+00:00")  # at=: from, before
WHOLE_NUMBER = re.compile(r"[0-9]{1,9}")  # ASCII digits only: "²".isdigit() is True


def check_id(name: str, value: str) -> str:
    """``value`` if it can be an id (1 to ID_MAX_LENGTH characters of UTF-8); 400 otherwise."""
    if not 1 <= len(value) <= ID_MAX_LENGTH:
        raise ApiError(400, f"{name}: 1 to {ID_MAX_LENGTH} characters")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ApiError(400, f"{name}: not valid UTF-8") from None
    return value


def id_param(request: Request, name: str, required: bool = True) -> str | None:
    value = request.query.get(name)
    if value is None or value == "":
        if required:
            raise ApiError(400, f"query parameter {name!r} is required")
        return None
    return check_id(name, value)


def count_param(request: Request) -> int:
    raw = request.query.get("n", "10")
    if not WHOLE_NUMBER.fullmatch(raw) or not 1 <= int(raw) <= MAX_RECOMMENDATIONS:
        raise ApiError(400, f"n must be a whole number from 1 to {MAX_RECOMMENDATIONS}")
    return int(raw)


def time_param(request: Request) -> float:
    """``at=`` as epoch seconds (now when absent): ISO 8601 with an offset, within AT_RANGE."""
    raw = request.query.get("at")
    if not raw:
        return time.time()
    try:
        moment = datetime.fromisoformat(raw.upper())  # RFC 3339 allows "t" and "z"
    except ValueError:
        raise ApiError(400, "at: expected an ISO 8601 time with a UTC offset") from None
    if moment.tzinfo is None:
        raise ApiError(400, "at: needs a UTC offset, e.g. 2011-11-14T10:00:00Z")
    low, high = (datetime.fromisoformat(bound) for bound in AT_RANGE)
    if not low <= moment < high:  # aware comparison: no overflow at year 1 or 9999
        raise ApiError(400, f"at: from {AT_RANGE[0]} to before {AT_RANGE[1]}")
    return moment.timestamp()
