"""The error every REST endpoint answers with: an HTTP status and a JSON ``{"error": ...}``."""

from __future__ import annotations

import math


class ApiError(Exception):
    """Answered as ``{"error": message, **extra}`` with ``status`` and ``headers``
    (`agents.web.api.Api.handle`)."""

    def __init__(
        self, status: int, message: str, headers: dict[str, str] | None = None, **extra: object
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra
        self.headers = headers or {}


def retry_later(status: int, message: str, after_s: float = 1.0) -> ApiError:
    """A 429 or 503 with ``Retry-After`` (whole seconds, at least 1)."""
    return ApiError(status, message, headers={"Retry-After": str(max(1, math.ceil(after_s)))})
