"""Read-only HTTP view of one customer's state, routed to the worker that owns its partition.

``GET /customers/{key}/`` with ``key`` = ``<merchant>:c:<customer_id>`` (or ``:s:<session>``),
for operators and tests. The state holds contact addresses, so the view needs a bearer token
like the REST API (``agents.web.auth``): the admin token, or the token of the key's merchant.
"""

from __future__ import annotations

import orjson

from agents.runtime.app import NextbestApp
from agents.web.auth import Auth
from agents.web.errors import ApiError


def register(nb: NextbestApp) -> None:
    app = nb.app
    auth = Auth(nb.settings.merchant_tokens(), nb.settings.api_admin_token)

    @app.page("/customers/{key}/")
    @app.table_route(table=nb.customers, match_info="key")
    async def customer_state(web, request, key: str):  # noqa: ANN001, ANN202 - faust view
        try:
            auth.require(request, key.partition(":")[0])
        except ApiError as exc:
            headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
            return web.json({"error": exc.message}, status=exc.status, headers=headers)
        raw = nb.customers.get(key.encode())
        if raw is None:
            return web.json({"error": f"no state for {key!r}"}, status=404)
        return web.bytes(orjson.dumps(orjson.loads(raw)), content_type="application/json")
