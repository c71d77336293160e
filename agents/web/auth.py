"""Bearer-token authentication of the REST API and the state view: a merchant token
(``NEXTBEST_API_TOKENS``) sees only its own merchant, the admin token
(``NEXTBEST_API_ADMIN_TOKEN``) sees every merchant."""

from __future__ import annotations

import hmac

from faust.web import Request

from agents.web.errors import ApiError


class Auth:
    """Bearer tokens: merchant tokens see their merchant, the admin token sees all."""

    def __init__(self, merchant_tokens: dict[str, str], admin_token: str) -> None:
        self.merchant_tokens = merchant_tokens
        self.admin_token = admin_token

    def caller(self, request: Request) -> str:
        """``"admin"`` or the merchant id the request's token belongs to; 401 otherwise."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "missing bearer token (Authorization: Bearer <token>)")
        if self.admin_token and hmac.compare_digest(token.encode(), self.admin_token.encode()):
            return "admin"
        for known, merchant in self.merchant_tokens.items():
            if hmac.compare_digest(token.encode(), known.encode()):
                return merchant
        raise ApiError(401, "invalid bearer token")

    def require(self, request: Request, merchant: str) -> str:
        caller = self.caller(request)
        if caller not in ("admin", merchant):
            raise ApiError(403, f"this token cannot access merchant {merchant!r}")
        return caller
