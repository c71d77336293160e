"""REST API metrics: requests by route template and status, and a latency histogram.

`Api.handle` is the one place every endpoint goes through; it is driven here with stand-ins
for the Faust view and request (the real HTTP path is in tests/test_api.py).
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from agents.runtime.metrics import REGISTRY
from agents.web.api import Api
from agents.web.errors import ApiError

ROUTE = "/predictors/{job}"


class View:
    def json(self, body: dict, status: int = 200, headers: dict | None = None):
        return SimpleNamespace(status=status, body=body, headers=dict(headers or {}))


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def handle(api: Api, handler) -> SimpleNamespace:
    request = SimpleNamespace(method="GET", path="/predictors/shop.123abc")
    return asyncio.run(api.handle(View(), request, ROUTE, handler))


def test_requests_are_counted_by_route_template_and_status_and_timed():
    api = Api.__new__(Api)  # handle() needs only the worker's URL
    api.nb = SimpleNamespace(app=SimpleNamespace(conf=SimpleNamespace(canonical_url="http://w:1")))
    ok = value("nextbest_api_requests_total", route=ROUTE, method="GET", status="200")
    missing = value("nextbest_api_requests_total", route=ROUTE, method="GET", status="404")
    failed = value("nextbest_api_requests_total", route=ROUTE, method="GET", status="500")
    timed = value("nextbest_api_request_duration_seconds_count", route=ROUTE, method="GET")

    async def found():
        return View().json({"job": "shop.123abc"})

    async def unknown():
        raise ApiError(404, "unknown job")

    async def broken():
        raise RuntimeError("bug")

    assert handle(api, found).status == 200
    assert handle(api, unknown).status == 404
    assert handle(api, broken).status == 500
    assert value("nextbest_api_requests_total", route=ROUTE, method="GET", status="200") == ok + 1
    assert (
        value("nextbest_api_requests_total", route=ROUTE, method="GET", status="404") == missing + 1
    )
    assert (
        value("nextbest_api_requests_total", route=ROUTE, method="GET", status="500") == failed + 1
    )
    assert value("nextbest_api_request_duration_seconds_count", route=ROUTE, method="GET") == (
        timed + 3
    )
    labels = {
        sample.labels.get("route")
        for family in REGISTRY.collect()
        if family.name.startswith("nextbest_api_")
        for sample in family.samples
    }
    assert "/predictors/shop.123abc" not in labels  # never the raw path
