"""Bearer-token authentication, scopes and rate limit of the REST API (`agents.web.api`).

A merchant token sees only its own merchant, with the scopes of the setting that lists it:
``NEXTBEST_API_TOKENS`` every scope, ``NEXTBEST_API_INGEST_TOKENS`` ``ingest`` (``POST
/events``) only, ``NEXTBEST_API_READ_TOKENS`` ``read`` only, ``NEXTBEST_API_TRAIN_TOKENS``
``train`` only. The admin token (``NEXTBEST_API_ADMIN_TOKEN``) sees every merchant with every
scope. Every authenticated request takes one token from its bearer token's bucket
(``NEXTBEST_API_RATE``, ``NEXTBEST_API_BURST``); an empty bucket answers 429.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from faust.web import Request

from agents.runtime.settings import API_SCOPES, Settings
from agents.web.errors import ApiError, retry_later
from agents.web.rate_limit import TokenBuckets

ADMIN = "admin"


@dataclass(frozen=True)
class Caller:
    """Who a request's token belongs to: a merchant id, or ``admin`` (every merchant)."""

    merchant: str
    scopes: frozenset[str]

    def may_access(self, merchant: str) -> bool:
        return self.merchant in (ADMIN, merchant)


class Auth:
    """Bearer tokens with their merchant and scopes, and a rate limit per token."""

    def __init__(self, settings: Settings) -> None:
        self.callers = {
            token.encode(): Caller(merchant, scopes)
            for token, (merchant, scopes) in settings.merchant_tokens().items()
        }
        if settings.api_admin_token:
            self.callers[settings.api_admin_token.encode()] = Caller(ADMIN, frozenset(API_SCOPES))
        self.buckets = TokenBuckets(settings.api_rate, settings.api_burst)

    def caller(self, request: Request, scope: str) -> Caller:
        """The request's caller, with ``scope``: 401 without a known token, 403 without the
        scope, 429 over the token's rate."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiError(
                401,
                "missing bearer token (Authorization: Bearer <token>)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        presented = token.encode(errors="surrogateescape")
        found = None
        for known, caller in self.callers.items():  # every one compared: constant time
            if hmac.compare_digest(presented, known):
                found = caller
        if found is None:
            raise ApiError(401, "invalid bearer token", headers={"WWW-Authenticate": "Bearer"})
        wait = self.buckets.take(presented)
        if wait:
            raise retry_later(429, "rate limit of this token exceeded; retry later", wait)
        if scope not in found.scopes:
            raise ApiError(403, f"this token does not have the {scope!r} scope")
        return found

    def require(self, request: Request, merchant: str, scope: str) -> Caller:
        """`caller`, and 403 unless it may access ``merchant``."""
        caller = self.caller(request, scope)
        if not caller.may_access(merchant):
            raise ApiError(403, f"this token cannot access merchant {merchant!r}")
        return caller
