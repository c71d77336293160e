"""The error every REST endpoint answers with: an HTTP status and a JSON ``{"error": ...}``."""

from __future__ import annotations


class ApiError(Exception):
    """Answered as ``{"error": message, **extra}`` with ``status`` (`agents.web.api.Api.handle`)."""

    def __init__(self, status: int, message: str, **extra: object) -> None:
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra
