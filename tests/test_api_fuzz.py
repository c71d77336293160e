"""Fuzz the live REST API from its own OpenAPI document (schemathesis, OpenAPI 3.1).

A real worker on the embedded broker; every operation gets generated requests that fit the
document and requests that do not (schemathesis' positive and negative modes), each sent with
the admin token and with a merchant token, and again for a configured merchant so requests get
past the merchant check. No answer may be a 5xx other than the documented 503s, and every answer
must be documented: its status, content type, headers and body schema. Bounded: ``MAX_EXAMPLES``
per operation and ``BUDGET_S`` in all (then the remaining examples are not sent); derandomized
when ``CI`` is set.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from agents.web.openapi import OPENAPI
from streams.merchants.catalog import DEFAULT_MERCHANTS
from tests.harness import ADMIN_TOKEN, Cluster
from tests.test_api import call

pytestmark = pytest.mark.integration

SHOP = "uci-gift-shop"
SHOP_TOKEN = "fuzz-shop-token-0123456789"
MAX_EXAMPLES = 40
BUDGET_S = 120.0


def no_server_error_but_documented_503s(ctx, response, case):  # noqa: ANN001, ANN201
    """`not_a_server_error`, save for 503 (no model, assignment not known yet), which
    `status_code_conformance` checks is documented for the operation."""
    if response.status_code == 503:
        return None
    return not_a_server_error(ctx, response, case)


CHECKS = [
    no_server_error_but_documented_503s,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api-fuzz")
    merchants = yaml.safe_load(DEFAULT_MERCHANTS.read_text())
    merchants["merchants"][SHOP].pop("training", None)  # POST /predictors: 422, no real job
    merchants_path = tmp / "merchants.yaml"
    merchants_path.write_text(yaml.safe_dump(merchants))
    cluster = Cluster(tmp)
    cluster.settings = replace(
        cluster.settings,
        merchants_path=merchants_path,
        api_tokens=f"{SHOP}={SHOP_TOKEN}",
        api_rate=0.0,
        api_max_events=50,
        api_max_body_bytes=65536,
    )
    port = cluster.start_worker("a")
    assert call(port, "GET", f"/customers/{SHOP}:c:c1/", ADMIN_TOKEN)[0] == 404  # assigned
    yield cluster, port, time.monotonic() + BUDGET_S
    cluster.close()


@pytest.fixture(scope="module")
def api_schema(worker):
    _, port, _ = worker
    return schemathesis.openapi.from_url(
        f"http://127.0.0.1:{port}/openapi.json", wait_for_schema=30
    )


def for_the_shop(case: schemathesis.Case) -> schemathesis.Case | None:
    """The same request about the configured merchant, where the request names one."""
    if isinstance(case.query, dict) and "merchant" in case.query:
        return replace_case(case, query={**case.query, "merchant": SHOP})
    if isinstance(case.body, dict) and "merchant" in case.body:
        return replace_case(case, body={**case.body, "merchant": SHOP})
    events = case.body.get("events") if isinstance(case.body, dict) else case.body
    if isinstance(events, list) and any(isinstance(e, dict) for e in events):
        ours = [{**e, "merchant_id": SHOP} if isinstance(e, dict) else e for e in events]
        return replace_case(case, body={"events": ours} if isinstance(case.body, dict) else ours)
    if isinstance(case.path_parameters, dict) and "key" in case.path_parameters:
        key = case.path_parameters["key"]
        return replace_case(case, path_parameters={"key": f"{SHOP}:c:{key}"})
    if isinstance(case.path_parameters, dict) and "job" in case.path_parameters:
        job = case.path_parameters["job"]
        return replace_case(case, path_parameters={"job": f"{SHOP}.{job}"})
    return None


def replace_case(case: schemathesis.Case, **changes: object) -> schemathesis.Case:
    return case.operation.Case(
        **{
            "path_parameters": case.path_parameters,
            "query": case.query,
            "headers": case.headers,
            "body": case.body,
            "media_type": case.media_type,
            **changes,
        }
    )


def operations() -> list[tuple[str, str]]:
    return [(path, method) for path, methods in OPENAPI["paths"].items() for method in methods]


@pytest.mark.parametrize("path, method", operations())
def test_no_request_breaks_the_api(worker, api_schema, path, method):
    cluster, _, budget_end = worker
    operation = api_schema[path][method]
    requests = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )

    @given(case=requests)
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=bool(os.environ.get("CI")),
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def fuzz(case: schemathesis.Case) -> None:
        if time.monotonic() > budget_end:
            return
        for each in [case, *filter(None, [for_the_shop(case)])]:
            for token in (ADMIN_TOKEN, SHOP_TOKEN):
                response = each.call(headers={"Authorization": f"Bearer {token}"}, timeout=30)
                each.validate_response(response, checks=CHECKS)
                print(
                    "FUZZ",
                    path,
                    response.status_code,
                    each.query,
                    str(each.body)[:80],
                    each.path_parameters,
                )

    fuzz()
    assert "Traceback" not in cluster.log("a")
