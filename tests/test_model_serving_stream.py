"""A real worker process serving a next-purchase artifact: recommendations, coupon candidate
and propensity on promotion events, and a new version picked up without a restart."""

from __future__ import annotations

import time
import urllib.request
from dataclasses import replace

import pytest

from models.next_purchase import artifact
from models.next_purchase.loading import load_orders
from models.next_purchase.paths import merchant_model_root
from streams.promotion.features import FEATURE_NAMES
from tests.harness import Cluster, cart_add, event
from tests.test_model_serving import retail_slice, save_tiny_model  # noqa: F401 - fixture

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
    first = save_tiny_model(root, orders, seed=1)
    products = artifact.load(root).vocab.items[1:4]
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
        add = cart_add("c1-add-1", 70.0, customer="c1")
        add["lines"][0]["product_id"] = products[2]
        cluster.send("cart", add)
        cluster.send("cart", cart_add("s1-add-1", 70.0, session="s1"))
        cluster.flush()
        cluster.wait_processed(3)
        promotions = cluster.read("promotions", min_count=2, timeout=40)
        offers = {o["cart_event_id"]: o for o in promotions}
        for offer in offers.values():
            assert offer["model_version"] == first.name
            assert offer["policy"] == "threshold-rules/1+next-purchase"
            assert len(offer["recommendations"]) == 5
            assert offer["coupon_product_id"] == offer["recommendations"][0]
            assert 0 < offer["coupon_probability"] <= offer["purchase_propensity"] <= 1
        assert products[2] not in offers["c1-add-1"]["recommendations"]  # already in the cart

        second = save_tiny_model(root, orders, seed=2)
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
        text = metrics_text(port)
        assert "nextbest_model_reloads_total 2.0" in text
        assert "nextbest_model_load_errors_total 0.0" in text
        assert "nextbest_model_inference_seconds_count" in text
        assert "Traceback" not in cluster.log("a")
    finally:
        cluster.close()


def test_the_default_policy_uses_a_merchant_model_when_one_is_present(tmp_path, retail_slice):  # noqa: F811
    """No ``NEXTBEST_POLICY``: the promotion policy decides, with the merchant model's signals
    in its features (``has_signals``, ``propensity``) on every decision record."""
    orders = load_orders(retail_slice)[0]
    models_dir = tmp_path / "merchant-models"
    save_tiny_model(merchant_model_root(models_dir, "uci-gift-shop"), orders, seed=1)
    cluster = Cluster(tmp_path / "cluster")
    try:
        assert cluster.settings.policy == "promotion"
        cluster.settings = replace(cluster.settings, models_dir=models_dir)
        cluster.start_worker("a")
        for i in range(3):
            cluster.send("cart", cart_add(f"c{i}-add-1", 70.0, customer=f"c{i}"))
        cluster.flush()
        cluster.wait_processed(3)
        decisions = cluster.read("decisions", min_count=3, timeout=40)
        assert sorted(d["cart_event_id"] for d in decisions) == ["c0-add-1", "c1-add-1", "c2-add-1"]
        for decision in decisions:
            features = dict(zip(FEATURE_NAMES, decision["features"], strict=True))
            assert features["has_signals"] == 1.0 and 0 < features["propensity"] <= 1
        assert "Traceback" not in cluster.log("a")
    finally:
        cluster.close()
