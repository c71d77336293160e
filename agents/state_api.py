"""Read-only HTTP view of one customer's state, routed to the worker that owns its partition.

``GET /customers/{key}/`` with ``key`` = ``<merchant>:c:<customer_id>`` (or ``:s:<session>``).
For operators and tests; the shop-facing REST API is a separate capability.
"""

from __future__ import annotations

import orjson

from streams.app import NextbestApp


def register(nb: NextbestApp) -> None:
    app = nb.app

    @app.page("/customers/{key}/")
    @app.table_route(table=nb.customers, match_info="key")
    async def customer_state(web, request, key: str):  # noqa: ANN001, ANN202 - faust view
        raw = nb.customers.get(key.encode())
        if raw is None:
            return web.json({"error": f"no state for {key!r}"}, status=404)
        return web.bytes(orjson.dumps(orjson.loads(raw)), content_type="application/json")
