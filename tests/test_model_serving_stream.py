"""A real worker process serving a next-purchase artifact: add-ons (bought together with the
cart, then the model's picks), coupon candidate and propensity on promotion events,
``/similar-items`` over HTTP, and a new version picked up without a restart."""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import replace

import pytest
from jsonschema import Draft202012Validator

from agents.web.openapi import OPENAPI
from models.next_purchase import artifact, similar_items
from models.next_purchase.loading import load_orders
from models.next_purchase.paths import merchant_model_root
from models.next_purchase.similar_items import STRONG_SIMILARITY
from streams.promotion.features import FEATURE_NAMES
from tests.harness import ADMIN_TOKEN, Cluster, cart_add, event
from tests.test_api import call
from tests.test_model_serving import (  # noqa: F401 - fixture
    retail_slice,
    save_tiny_model,
    strongly_paired,
)

pytestmark = pytest.mark.integration


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


@pytest.mark.parametrize("where", ["model_path", "merchant_folder"])
def test_worker_serves_model_and_reloads_it(tmp_path, retail_slice, monkeypatch, where):  # noqa: F811
    """``NEXTBEST_MODEL_PATH`` (every merchant), or the merchant's own folder under
    ``NEXTBEST_MODELS_DIR`` (where ``POST /predictors`` writes it)."""
    orders = load_orders(retail_slice)[0]
    models_dir = tmp_path / "merchant-models"
    if where == "model_path":
        root = tmp_path / "models"
    else:
        root = merchant_model_root(models_dir, "uci-gift-shop")
    first = save_tiny_model(root, orders, seed=1, similar=True)
    products = artifact.load(root).vocab.items[1:4]
    table = similar_items.load(first)
    paired = strongly_paired(table)
    bought_together = table.bought_with({paired}, 5, STRONG_SIMILARITY)
    monkeypatch.setenv("NEXTBEST_MODEL_RELOAD_S", "0.5")
    cluster = Cluster(tmp_path / "cluster", policy="rules")  # the model's fields on the offers
    try:
        cluster.settings = replace(
            cluster.settings,
            model_path=str(root) if where == "model_path" else "",
            models_dir=models_dir,
        )
        port = cluster.start_worker("a")
        lines = [{"product_id": p, "quantity": 2, "unit_price": 1.5} for p in products[:2]]
        cluster.send(
            "orders",
            event(
                "order",
                "o1",
                customer="c1",
                time="2011-11-01T10:00:00Z",
                order_id="o1",
                lines=lines,
                total=6.0,
                currency="GBP",
            ),
        )
        cluster.flush()
        cluster.wait_processed(1)  # an order empties the cart: it comes before this cart
        cluster.send("cart", cart_add("c1-add-1", 70.0, customer="c1", product=paired))
        cluster.send("cart", cart_add("s1-add-1", 70.0, session="s1"))
        cluster.flush()
        cluster.wait_processed(3)
        promotions = cluster.read("promotions", min_count=2, timeout=40)
        offers = {o["cart_event_id"]: o for o in promotions}
        for offer in offers.values():
            assert offer["model_version"] == first.name
            assert offer["policy"] == "threshold-rules/1+next-purchase"
            assert len(offer["recommendations"]) == 5 == len(offer["recommendation_sources"])
            assert 0 < offer["coupon_probability"] <= offer["purchase_propensity"] <= 1
        c1, s1 = offers["c1-add-1"], offers["s1-add-1"]
        assert paired not in c1["recommendations"]  # already in the cart
        assert c1["recommendations"][: len(bought_together)] == bought_together
        assert c1["recommendation_sources"] == ["bought_together"] * len(bought_together) + [
            "next_purchase"
        ] * (5 - len(bought_together))
        # the session's cart holds a product the table does not know: the model's picks only
        assert s1["recommendation_sources"] == ["next_purchase"] * 5
        assert s1["coupon_product_id"] == s1["recommendations"][0]

        # /similar-items: answered by this worker from the loaded table
        path = f"/similar-items?merchant=uci-gift-shop&product={paired.lower()}&n=4"
        status, body, _ = call(port, "GET", path, ADMIN_TOKEN)
        assert status == 200 and body["model_version"] == first.name
        documented = OPENAPI["paths"]["/similar-items"]["get"]["responses"]["200"]
        Draft202012Validator(documented["content"]["application/json"]["schema"]).validate(body)
        assert body["known_product"] and not body["cold_start"]
        expected = table.similar(paired, 4).items
        assert [i["product_id"] for i in body["similar_items"]] == [n.product_id for n in expected]
        assert body["similar_items"][0] == {
            "product_id": expected[0].product_id,
            "score": expected[0].score,
            "orders_together": expected[0].together,
            "source": "bought_together",
        }
        status, body, _ = call(port, "GET", path.replace(paired.lower(), "NEW-9"), ADMIN_TOKEN)
        assert status == 200 and body["cold_start"] and not body["known_product"]
        assert [i["product_id"] for i in body["similar_items"]] == table.items[:4]
        assert {i["source"] for i in body["similar_items"]} == {"popular"}
        assert call(port, "GET", path.replace("n=4", "n=0"), ADMIN_TOKEN)[0] == 400
        assert call(port, "GET", path.replace("n=4", "n=x"), ADMIN_TOKEN)[0] == 400
        assert call(port, "GET", "/similar-items?merchant=uci-gift-shop", ADMIN_TOKEN)[0] == 400
        assert call(port, "GET", path)[0] == 401
        assert call(port, "GET", path.replace("uci-gift-shop", "mars"), ADMIN_TOKEN)[0] == 404

        second = save_tiny_model(root, orders, seed=2)  # trained before there was a table
        deadline = time.monotonic() + 15
        while f'nextbest_model_info{{version="{second.name}"}} 1.0' not in metrics_text(port):
            assert time.monotonic() < deadline, "the worker did not load the new version"
            time.sleep(0.2)
        cluster.send("cart", cart_add("c1-add-2", 130.0, customer="c1"))
        cluster.flush()
        cluster.wait_processed(4)
        promotions = cluster.read("promotions", min_count=3, timeout=40)
        offers = {o["cart_event_id"]: o for o in promotions}
        assert offers["c1-add-2"]["model_version"] == second.name
        assert offers["c1-add-2"]["recommendation_sources"] == ["next_purchase"] * 5
        status, body, _ = call(port, "GET", path, ADMIN_TOKEN, retry_503=False)
        assert status == 503 and "retrain" in body["error"]
        text = metrics_text(port)
        assert "nextbest_model_reloads_total 2.0" in text
        assert "nextbest_model_load_errors_total 0.0" in text
        assert "nextbest_model_inference_seconds_count" in text
        assert "Traceback" not in cluster.log("a")
    finally:
        cluster.close()


def test_the_default_policy_uses_a_merchant_model_when_one_is_present(tmp_path, retail_slice):  # noqa: F811
    """No ``NEXTBEST_POLICY``: the promotion policy decides, with the merchant model's signals
    in its features (``has_signals``, ``propensity``) on every decision record, and its
    offers carry the carts' bought-together add-ons."""
    orders = load_orders(retail_slice)[0]
    models_dir = tmp_path / "merchant-models"
    version = save_tiny_model(
        merchant_model_root(models_dir, "uci-gift-shop"), orders, seed=1, similar=True
    )
    table = similar_items.load(version)
    paired = strongly_paired(table)
    bought_together = table.bought_with({paired}, 5, STRONG_SIMILARITY)
    cluster = Cluster(tmp_path / "cluster")
    try:
        assert cluster.settings.policy == "promotion"
        rules = {"id": "t", "holdout": 0.0, "arms": [{"name": "rules", "variant": "rules"}]}
        cluster.settings = replace(
            cluster.settings, models_dir=models_dir, promo_experiment=json.dumps(rules)
        )
        cluster.start_worker("a")
        carts = [f"c{i}-add-1" for i in range(6)]
        for i, cart in enumerate(carts):
            cluster.send("cart", cart_add(cart, 70.0, customer=f"c{i}", product=paired))
        cluster.flush()
        cluster.wait_processed(len(carts))
        decisions = cluster.read("decisions", min_count=len(carts), timeout=40)
        assert sorted(d["cart_event_id"] for d in decisions) == carts
        for decision in decisions:
            features = dict(zip(FEATURE_NAMES, decision["features"], strict=True))
            assert features["has_signals"] == 1.0 and 0 < features["propensity"] <= 1
        sent = sum(d["sent"] for d in decisions)
        offers = cluster.read("promotions", min_count=sent, timeout=40)
        assert len(offers) == sent == len(carts)  # the rules arm: free shipping on every cart
        for offer in offers:
            together = [
                p
                for p, source in zip(
                    offer["recommendations"], offer["recommendation_sources"], strict=True
                )
                if source == "bought_together"
            ]
            assert together == bought_together and paired not in offer["recommendations"]
        assert "Traceback" not in cluster.log("a")
    finally:
        cluster.close()
