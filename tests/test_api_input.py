"""No input breaks the REST API: every bad request is a 4xx (503 while starting), over real HTTP
on a real worker (embedded broker); token scopes and the per-token rate limit."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import replace

import pytest
import yaml

from streams.merchants.catalog import DEFAULT_MERCHANTS
from tests.harness import ADMIN_TOKEN, Cluster, cart_add, event
from tests.test_api import call

pytestmark = pytest.mark.integration

SHOP = "uci-gift-shop"
ALL_SCOPES = "shop-all-scopes-0123456789"
INGEST = "shop-ingest-only-0123456789"
READ = "shop-read-only-0123456789"
TRAIN = "shop-train-only-0123456789"
OTHER_INGEST = "other-ingest-only-0123456789"
STATE = f"/customers/{SHOP}:c:c1/"


def raw_call(port: int, path: str, token: str) -> tuple[int, bytes, dict]:
    """(status, body, headers) of a GET, whatever the body is."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api-input")
    merchants = yaml.safe_load(DEFAULT_MERCHANTS.read_text())
    merchants["merchants"]["other-shop"] = {"currency": "EUR"}
    merchants_path = tmp / "merchants.yaml"
    merchants_path.write_text(yaml.safe_dump(merchants))
    cluster = Cluster(tmp)
    cluster.settings = replace(
        cluster.settings,
        merchants_path=merchants_path,
        api_tokens=f"{SHOP}={ALL_SCOPES}",
        api_ingest_tokens=f"{SHOP}={INGEST},other-shop={OTHER_INGEST}",
        api_read_tokens=f"{SHOP}={READ}",
        api_train_tokens=f"{SHOP}={TRAIN}",
        api_max_body_bytes=200_000,
        api_rate=0.0,
    )
    port = cluster.start_worker("a")
    # From the moment the port opens: 503 with Retry-After until the assignment is known.
    startup, deadline = [], time.monotonic() + 60
    while time.monotonic() < deadline:
        status, _, headers = raw_call(port, STATE, ADMIN_TOKEN)
        startup.append((status, headers.get("Retry-After")))
        if status == 404:
            break
        time.sleep(0.02)
    yield cluster, port, startup
    cluster.close()


def test_state_view_answers_503_with_retry_after_while_starting(worker):
    _, _, startup = worker
    assert startup[-1][0] == 404, startup[-5:]  # then: no state for c1 yet
    assert {status for status, _ in startup} <= {503, 404}, startup
    assert all(retry == "1" for status, retry in startup if status == 503)


def test_junk_in_fields_a_topic_does_not_use_is_a_rejected_event(worker):
    _, port, _ = worker
    click = event("product_view", "junk-1", customer="c1", product_id="P1", cart_value="x")
    profile = event("profile", "junk-2", customer="c1", lines=5)
    profile_lines = event("profile", "junk-3", customer="c1", lines=[{}])
    deep: object = {}
    for _ in range(300):  # orjson reads 1024 levels, writes 255
        deep = {"a": deep}
    nested = {**cart_add("junk-4", 1.0, customer="c1"), "extra": deep}
    batch = [click, profile, profile_lines, nested, 5, "x", None]
    status, body, _ = call(port, "POST", "/events", ADMIN_TOKEN, body={"events": batch})
    assert status == 202 and body["accepted"] == 0, body
    reasons = [(e["index"], e["reason"]) for e in body["errors"]]
    assert reasons == [
        (0, "schema_violation"),
        (1, "schema_violation"),
        (2, "schema_violation"),
        (3, "malformed_json"),
        (4, "malformed_json"),
        (5, "malformed_json"),
        (6, "malformed_json"),
    ]


@pytest.mark.parametrize(
    "raw, status",
    [
        (b"5", 400),
        (b'"events"', 400),
        (b"null", 400),
        (b'{"events": 5}', 400),
        (b'{"events": {"a": 1}}', 400),
        (b"\xff\xfe", 400),
        (b"[" * 2000 + b"]" * 2000, 400),
        (b'{"events": ["' + b"x" * 300_000 + b'"]}', 413),
    ],
)
def test_event_bodies_of_any_shape(worker, raw, status):
    _, port, _ = worker
    assert call(port, "POST", "/events", ADMIN_TOKEN, raw=raw)[0] == status


@pytest.mark.parametrize(
    "path, status",
    [
        (f"/best-promotion?merchant={SHOP}&customer=c1&at=0001-01-01T00:00:00%2B01:00", 400),
        (f"/best-promotion?merchant={SHOP}&customer=c1&at=9999-12-31T23:59:59-01:00", 400),
        (f"/best-promotion?merchant={SHOP}&customer=c1&at=9999-12-31T23:59:59Z", 400),
        (f"/best-promotion?merchant={SHOP}&customer=c1&at=2011-11-14t10:00:00z", 200),
        (f"/best-promotion?merchant={SHOP}&customer=c1&at=2011-11-14T10:00:00", 400),
        (f"/best-promotion?merchant={SHOP}&customer=" + "c" * 257, 400),
        (f"/product-recommendations?merchant={SHOP}&customer=c1&n=%C2%B2", 400),
        (f"/product-recommendations?merchant={SHOP}&customer=c1&n=%D9%A3", 400),
        (f"/product-recommendations?merchant={SHOP}&customer=c1&n=99999999999999999999", 400),
        (f"/product-recommendations?merchant={SHOP}&customer=c1&n=-1", 400),
        (f"/product-recommendations?merchant={'m' * 300}&customer=c1", 400),
        (f"/predictors/{SHOP}.%00", 404),
        (f"/predictors/{SHOP}." + "a" * 5000, 404),
        (f"/predictors/{SHOP}.0123456789ab", 404),
        ("/predictors/mars.0123456789ab", 404),
        ("/customers/nope/", 400),
        (f"/customers/{SHOP}:x:c1/", 400),
        ("/customers/mars:c:c1/", 404),
    ],
)
def test_parameters_out_of_bounds_are_400_or_404(worker, path, status):
    _, port, _ = worker
    answer = call(port, "GET", path, ADMIN_TOKEN)
    assert answer[0] == status, answer[1]
    assert "error" in answer[1] or status == 200


def test_scopes(worker):
    _, port, _ = worker
    mine = cart_add("scope-1", 5.0, customer="c1")
    theirs = {**cart_add("scope-2", 5.0, customer="c1"), "merchant_id": "other-shop"}
    reads = [
        f"/best-promotion?merchant={SHOP}&customer=c1",
        f"/product-recommendations?merchant={SHOP}&customer=c1",
        STATE,
    ]
    trains = [f"/predictors/{SHOP}.0123456789ab"]
    # An ingest-only token sends its merchant's events, and nothing else.
    status, body, _ = call(port, "POST", "/events", INGEST, body=[mine])
    assert status == 202 and body["accepted"] == 1, body
    status, body, _ = call(port, "POST", "/events", INGEST, body=[mine, theirs])
    assert status == 403 and body["indices"] == [1], body
    assert call(port, "POST", "/events", OTHER_INGEST, body=[mine])[0] == 403
    for path in reads + trains:
        assert call(port, "GET", path, INGEST)[0] == 403, path
    assert call(port, "POST", "/predictors", INGEST, body={"merchant": SHOP})[0] == 403
    # A read-only token reads; it cannot send events or train.
    assert call(port, "POST", "/events", READ, body=[mine])[0] == 403
    assert call(port, "POST", "/predictors", READ, body={"merchant": SHOP})[0] == 403
    assert call(port, "GET", trains[0], READ)[0] == 403
    assert call(port, "GET", reads[0], READ)[0] == 200
    assert call(port, "GET", reads[1], READ, retry_503=False)[0] == 503  # no model: read allowed
    # A train-only token trains (no training data here: 422) and follows jobs, and nothing else.
    assert call(port, "POST", "/predictors", TRAIN, body={"merchant": SHOP})[0] == 422
    assert call(port, "GET", trains[0], TRAIN)[0] == 404
    assert call(port, "POST", "/events", TRAIN, body=[mine])[0] == 403
    for path in reads:
        assert call(port, "GET", path, TRAIN)[0] == 403, path
    # NEXTBEST_API_TOKENS keeps every scope.
    assert call(port, "POST", "/events", ALL_SCOPES, body=[mine])[0] == 202
    assert call(port, "GET", reads[0], ALL_SCOPES)[0] == 200


def test_no_input_above_was_a_500(worker):
    cluster, port, _ = worker
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    assert 'status="500"' not in metrics
    assert "Traceback" not in cluster.log("a")


def test_rate_limit_answers_429_with_retry_after(worker):
    cluster, _, _ = worker
    cluster.settings = replace(cluster.settings, api_rate=0.5, api_burst=3)
    port = cluster.start_worker("limited")
    statuses = []
    for _ in range(5):
        status, body, headers = call(port, "POST", "/events", INGEST, body=[])
        statuses.append(status)
    assert statuses == [202, 202, 202, 429, 429]
    assert headers["Retry-After"] == "2" and "rate limit" in body["error"]
    assert call(port, "POST", "/events", ADMIN_TOKEN, body=[])[0] == 202  # a bucket per token
    assert raw_call(port, STATE, READ)[0] != 429  # another token: its own bucket
