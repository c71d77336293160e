"""The REST API over real HTTP on a real worker (embedded broker), with and without tokens."""

from __future__ import annotations

import gzip
import json
import time
import urllib.error
import urllib.request
from dataclasses import replace

import pandas as pd
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from streams.merchants.catalog import DEFAULT_MERCHANTS
from tests.harness import ADMIN_TOKEN, DATA_FILE, Cluster, cart_add, event, order_placed

pytestmark = pytest.mark.integration

SHOP_TOKEN = "shop-token-0123456789"
OTHER_TOKEN = "other-token-0123456789"


def call(
    port: int,
    method: str,
    path: str,
    token: str | None = None,
    body: object = None,
    raw: bytes | None = None,
    retry_503: bool = True,
) -> tuple[int, dict, dict]:
    """(status, JSON body, headers); retries while the worker has no partition assignment."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    deadline = time.monotonic() + 30
    while True:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}{path}", data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read()), dict(response.headers)
        except urllib.error.HTTPError as exc:
            answer = (exc.code, json.loads(exc.read()), dict(exc.headers))
        if answer[0] != 503 or not retry_503 or "retry" not in answer[1]["error"]:
            return answer
        if time.monotonic() > deadline:
            return answer
        time.sleep(0.5)


@pytest.fixture
def api(tmp_path, monkeypatch):
    if not DATA_FILE.exists():
        pytest.skip(f"{DATA_FILE} not found")
    data = tmp_path / "retail.csv"  # a real slice for the training job: the first days
    with gzip.open(DATA_FILE, "rt", encoding="utf-8", errors="replace") as f:
        pd.read_csv(f, dtype=str, nrows=5000).to_csv(data, index=False)
    merchants = yaml.safe_load(DEFAULT_MERCHANTS.read_text())
    merchants["merchants"]["uci-gift-shop"]["training"] = {"data": str(data)}
    merchants["merchants"]["other-shop"] = {"currency": "EUR"}
    merchants_path = tmp_path / "merchants.yaml"
    merchants_path.write_text(yaml.safe_dump(merchants))
    cluster = Cluster(tmp_path)
    cluster.settings = replace(
        cluster.settings,
        merchants_path=merchants_path,
        api_tokens=f"uci-gift-shop={SHOP_TOKEN},other-shop={OTHER_TOKEN}",
        api_admin_token=ADMIN_TOKEN,
        api_max_events=5,
        models_dir=tmp_path / "models",
        train_args="--max-epochs 1 --time-budget-s 10 --device cpu",
    )
    ports = cluster.start_worker("a"), cluster.start_worker("b")
    yield cluster, ports
    cluster.close()


def test_rest_api_over_http(api):
    """Two workers share the partitions; every call goes to worker a, which forwards."""
    cluster, (port, other_port) = api
    status, spec, _ = call(port, "GET", "/openapi.json")
    assert status == 200 and spec["openapi"].startswith("3.")
    assert {
        "/product-recommendations",
        "/best-promotion",
        "/predictors",
        "/predictors/{job}",
        "/events",
    } <= set(spec["paths"])

    # Tokens: none, wrong, another merchant's.
    status, body, headers = call(port, "POST", "/events", body={"events": []})
    assert status == 401 and headers.get("WWW-Authenticate") == "Bearer"
    assert call(port, "POST", "/events", "not-a-token", body=[])[0] == 401
    profile = event(
        "profile",
        "api-profile-c1",
        customer="c1",
        time="2011-11-14T09:00:00Z",
        channels={"email": "c1@example.com"},
        preferred_channel="email",
    )
    status, body, _ = call(port, "POST", "/events", OTHER_TOKEN, body=[profile])
    assert status == 403 and body["indices"] == [0]  # another merchant's events: none sent

    # Events in: the valid ones are produced; each invalid one is answered with its reason.
    batch = [
        profile,
        cart_add("api-add-1", 70.0, customer="c1"),
        {**cart_add("api-add-2", 10.0, customer="c1"), "cart_value": "ten"},
        event("teleport", "api-bad-type", customer="c1"),
    ]
    foreign = {**cart_add("api-add-3", 10.0, customer="c1"), "merchant_id": "nope"}
    status, body, _ = call(port, "POST", "/events", SHOP_TOKEN, body=[*batch, foreign])
    assert status == 403 and body["indices"] == [4]
    status, body, _ = call(port, "POST", "/events", SHOP_TOKEN, body={"events": batch})
    assert status == 202 and (body["accepted"], body["rejected"]) == (2, 2)
    assert [(e["index"], e["reason"]) for e in body["errors"]] == [
        (2, "schema_violation"),
        (3, "unknown_event_type"),
    ]
    assert "cart_value" in body["errors"][0]["error"]
    assert call(port, "POST", "/events", SHOP_TOKEN, body=[profile] * 6)[0] == 413
    assert call(port, "POST", "/events", SHOP_TOKEN, raw=b"{nope")[0] == 400
    cluster.wait_processed(2)
    assert cluster.state(port, "uci-gift-shop:c:c1")["cart"]["value"] == 70.0
    # The operators' state view shows contact addresses: it needs a token too.
    state_path = "/customers/uci-gift-shop:c:c1/"
    assert call(port, "GET", state_path)[0] == 401
    assert call(port, "GET", state_path, OTHER_TOKEN)[0] == 403
    assert call(port, "GET", "/customers/other-shop:c:c1/", SHOP_TOKEN)[0] == 403
    assert call(port, "GET", state_path, SHOP_TOKEN)[0] == 200

    # What the policy would offer now for c1's cart (and scoping by merchant).
    path = "/best-promotion?merchant=uci-gift-shop&customer=c1"
    status, body, _ = call(port, "GET", path, SHOP_TOKEN)
    assert status == 200 and body["offer"]["promotion_id"] == "free-shipping-60"
    assert body["offer"]["offer_type"] == "free_shipping" and "60" in body["reason"]
    assert body["churn_risk"] == {"score": None, "band": "none"}  # no orders: no churn risk
    assert call(port, "GET", path, ADMIN_TOKEN)[0] == 200
    assert call(port, "GET", path, OTHER_TOKEN)[0] == 403
    assert call(port, "GET", path)[0] == 401
    status, body, _ = call(
        port, "GET", "/best-promotion?merchant=uci-gift-shop&customer=c9", SHOP_TOKEN
    )
    assert status == 200 and body["offer"] is None and body["reason"] == "the cart is empty"
    assert call(port, "GET", "/best-promotion?merchant=uci-gift-shop", SHOP_TOKEN)[0] == 400
    assert call(port, "GET", "/best-promotion?merchant=mars&customer=c1", ADMIN_TOKEN)[0] == 404

    # r0 ordered a month before its cart: its answer names its churn risk.
    ordered = order_placed(
        "api-order-r0",
        "o-r0",
        30.0,
        "85123A",
        customer="r0",
        merchant="uci-gift-shop",
        time="2011-10-14T10:00:00Z",
    )
    cluster.send("orders", ordered)
    cluster.flush()
    cluster.wait_processed(3)  # before the cart: an order empties the cart's lines

    # Each customer is answered by the worker that owns its partition, whichever is asked.
    for i in range(6):
        cluster.send("cart", cart_add(f"route-{i}", 61.0 + i, customer=f"r{i}"))
    cluster.flush()
    cluster.wait_processed(9)
    owners = set()
    for i in range(6):
        path = f"/best-promotion?merchant=uci-gift-shop&customer=r{i}"
        deadline = time.monotonic() + 30  # until worker b's join has settled on both workers
        while True:
            answers = [call(p, "GET", path, SHOP_TOKEN) for p in (port, other_port)]
            served_by = {a[2]["X-Nextbest-Worker"] for a in answers}
            values = [a[1].get("cart_value") for a in answers]
            if (len(served_by) == 1 and values == [61.0 + i] * 2) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert values == [61.0 + i] * 2 and len(served_by) == 1, (values, served_by)
        owners |= served_by
    assert len(owners) == 2  # both workers own some of these customers
    status, body, _ = call(
        port,
        "GET",
        "/best-promotion?merchant=uci-gift-shop&customer=r0&at=2011-11-14T10:00:00Z",
        SHOP_TOKEN,
    )
    assert status == 200 and body["churn_risk"]["band"] in ("low", "medium", "high")
    assert 0 < body["churn_risk"]["score"] < 1
    assert f"churn risk {body['churn_risk']['score']:.2f}" in body["reason"]
    assert "31 days since the last order" in body["reason"]

    # No model loaded in this worker: a clear 503, and input checks still come first.
    recs = "/product-recommendations?merchant=uci-gift-shop&customer=c1&n=5"
    status, body, _ = call(port, "GET", recs, SHOP_TOKEN, retry_503=False)
    assert status == 503 and body["error"].startswith("model not configured")
    assert call(port, "GET", recs.replace("n=5", "n=0"), SHOP_TOKEN)[0] == 400
    assert call(port, "GET", recs, OTHER_TOKEN)[0] == 403

    # Training in the background: a job id, then its status and metrics.
    assert (
        call(port, "POST", "/predictors", OTHER_TOKEN, body={"merchant": "uci-gift-shop"})[0] == 403
    )
    assert call(port, "POST", "/predictors", SHOP_TOKEN, body={"shop": 1})[0] == 400
    status, body, _ = call(
        port, "POST", "/predictors", OTHER_TOKEN, body={"merchant": "other-shop"}
    )
    assert status == 422 and "training data" in body["error"]
    status, job, headers = call(
        port, "POST", "/predictors", SHOP_TOKEN, body={"merchant": "uci-gift-shop"}
    )
    assert status == 202 and job["status"] in ("queued", "running")
    assert headers["Location"] == f"/predictors/{job['job']}"
    status, busy, _ = call(
        port, "POST", "/predictors", SHOP_TOKEN, body={"merchant": "uci-gift-shop"}
    )
    assert status == 409 and busy["job"] == job["job"]
    assert call(port, "GET", f"/predictors/{job['job']}", OTHER_TOKEN)[0] == 403
    assert call(port, "GET", "/predictors/uci-gift-shop.nope", SHOP_TOKEN)[0] == 404
    deadline = time.monotonic() + 90
    while True:
        status, state, _ = call(port, "GET", f"/predictors/{job['job']}", SHOP_TOKEN)
        assert status == 200
        if state["status"] in ("succeeded", "failed") or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert state["status"] == "succeeded", state.get("error")
    assert 0.0 <= state["metrics"]["validation"]["hit@10"] <= 1.0
    assert state["metrics"]["examples_train"] > 0 and state["artifact"]
    assert "Traceback" not in cluster.log("a")
    assert "c1@example.com" not in cluster.log("a")  # no personal data in the worker's log

    # Metrics by route template and status, never by raw path (no job or customer ids).
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    requests = {
        (s.labels["route"], s.labels["method"], s.labels["status"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "nextbest_api_requests"
        for s in family.samples
        if s.name == "nextbest_api_requests_total"
    }
    for seen in [
        ("/openapi.json", "GET", "200"),
        ("/events", "POST", "401"),
        ("/events", "POST", "202"),
        ("/events", "POST", "413"),
        ("/best-promotion", "GET", "200"),
        ("/best-promotion", "GET", "403"),
        ("/product-recommendations", "GET", "503"),
        ("/predictors", "POST", "202"),
        ("/predictors/{job}", "GET", "200"),
    ]:
        assert requests.get(seen, 0) >= 1, seen
    assert {route for route, _, _ in requests} <= set(spec["paths"]) | {"/openapi.json"}
    timed = {
        (s.labels["route"], s.labels["method"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "nextbest_api_request_duration_seconds"
        for s in family.samples
        if s.name == "nextbest_api_request_duration_seconds_count"
    }
    assert timed[("/best-promotion", "GET")] == sum(
        n for (route, method, _), n in requests.items() if route == "/best-promotion"
    )
    assert job["job"] not in text
