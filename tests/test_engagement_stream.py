"""Engagement actions through real workers on the embedded broker: action feedback applied
(once) or dead-lettered, cart decisions carrying ranked actions, and GET /next-best-actions
over real HTTP, forwarded to the key's owner."""

from __future__ import annotations

from dataclasses import replace

import pytest
import yaml

from streams.merchants.catalog import DEFAULT_MERCHANTS
from tests.harness import ADMIN_TOKEN, Cluster, cart_add, event, order_placed
from tests.test_api import call

pytestmark = pytest.mark.integration

SHOP = "uci-gift-shop"
ACTIONS = {"join-loyalty", "get-app", "newsletter", "explore-jumbo-bags"}


@pytest.fixture
def cluster(tmp_path):
    merchants = yaml.safe_load(DEFAULT_MERCHANTS.read_text())
    merchants["merchants"][SHOP]["engagement"].update(on_cart=True, combine="both")
    path = tmp_path / "merchants.yaml"
    path.write_text(yaml.safe_dump(merchants))
    cluster = Cluster(tmp_path / "cluster")
    cluster.settings = replace(cluster.settings, merchants_path=path)
    ports = cluster.start_worker("a"), cluster.start_worker("b")
    yield cluster, ports
    cluster.close()


def feedback(event_type: str, event_id: str, customer: str, action: str, **fields: object) -> dict:
    return event(
        event_type,
        event_id,
        customer=customer,
        time="2011-11-14T10:05:00Z",
        action_id=action,
        **fields,
    )


def test_actions_ranked_served_and_learned_through_the_worker(cluster):
    cluster, (port, _) = cluster
    order = order_placed(
        "eng-order-c2",
        "o-c2",
        20.0,
        "85099B",
        customer="c2",
        merchant=SHOP,
        time="2011-11-10T10:00:00Z",
    )
    taken = feedback("action_taken", "eng-take-c1", "c1", "get-app", channel="in_app")
    inputs = [
        ("orders", order),
        ("cart", cart_add("eng-cart-c1", 40.0, customer="c1")),
        ("cart", cart_add("eng-cart-c2", 35.0, customer="c2", time="2011-11-14T10:01:00Z")),
        ("action_feedback", taken),
        ("action_feedback", taken),  # the same event again: applied once
        ("action_feedback", feedback("action_shown", "eng-shown-c2", "c2", "newsletter")),
        ("action_feedback", feedback("action_taken", "eng-unknown", "c1", "no-such-action")),
        ("action_feedback", feedback("action_taken", "eng-bad", "c1", "get-app", channel="fax")),
    ]
    for kind, value in inputs:
        cluster.send(kind, value)
    cluster.flush()
    cluster.wait_processed(len(inputs), timeout=120)

    state = cluster.state(port, f"{SHOP}:c:c1")
    assert state["engagement"]["actions"]["get-app"]["taken"] == 1
    c2 = cluster.state(port, f"{SHOP}:c:c2")
    assert "newsletter" in {w[1] for w in c2["engagement"]["open"]}  # shown: a take window

    letters = cluster.read("dead_letters", min_count=2)
    reasons = sorted(letter["reason"] for letter in letters)
    assert reasons == ["schema_violation", "unknown_engagement_action"]

    # Each cart decision carries ranked actions: an offer with them, or the first one alone.
    promotions = cluster.read("promotions", min_count=2)
    by_cart = {p["cart_event_id"]: p for p in promotions}
    assert {"eng-cart-c1", "eng-cart-c2"} <= set(by_cart)
    for record in by_cart.values():
        ranked = record["engagement_actions"]
        assert ranked and {a["action_id"] for a in ranked} <= ACTIONS
        assert record["engagement_ranking"] == "expected_value"
        assert 0 < record["engagement_propensity"] <= 1
        if record["offer_type"] == "engagement_action":
            assert record["promotion_id"] == ranked[0]["action_id"]
    assert "explore-jumbo-bags" not in {
        a["action_id"] for a in by_cart["eng-cart-c2"]["engagement_actions"]
    }  # c2 bought a jumbo bag
    assert "join-loyalty" not in {
        a["action_id"] for a in by_cart["eng-cart-c1"]["engagement_actions"]
    }  # c1 has no order yet

    # The API, over HTTP, from worker a whatever worker owns the key.
    status, spec, _ = call(port, "GET", "/openapi.json")
    assert "/next-best-actions" in spec["paths"]
    path = f"/next-best-actions?merchant={SHOP}&customer=c1&n=2"
    status, body, _ = call(port, "GET", path, ADMIN_TOKEN)
    assert status == 200, body
    ids = [a["action_id"] for a in body["actions"]]
    assert body["known_customer"] and 1 <= len(ids) <= 2
    assert not {"get-app", "join-loyalty"} & set(ids)  # taken already; no order yet
    assert all(
        a["expected_value"] == pytest.approx(a["p_take"] * a["value"], abs=1e-5)
        for a in body["actions"]
    )
    status, body, _ = call(
        port, "GET", f"/next-best-actions?merchant={SHOP}&customer=c2&n=10", ADMIN_TOKEN
    )
    assert status == 200 and "join-loyalty" in {a["action_id"] for a in body["actions"]}
    status, body, _ = call(
        port, "GET", f"/next-best-actions?merchant={SHOP}&customer=new&n=10", ADMIN_TOKEN
    )
    assert status == 200 and not body["known_customer"]
    assert {a["action_id"] for a in body["actions"]} == ACTIONS - {"join-loyalty"}
    assert call(port, "GET", f"/next-best-actions?merchant={SHOP}&customer=c1")[0] == 401
    assert call(port, "GET", "/next-best-actions?merchant=nope&customer=c1", ADMIN_TOKEN)[0] == 404

    ranked = sum(
        cluster.metric(name, "nextbest_engagement_actions_ranked_total") for name in ("a", "b")
    )
    interactions = sum(
        cluster.metric(name, "nextbest_engagement_action_feedback_total") for name in ("a", "b")
    )
    assert ranked >= 5  # two carts, three API calls
    assert interactions == 2  # the take (once) and the showing
