"""Engagement actions through real workers on the embedded broker: action feedback applied
(once) or dead-lettered, cart decisions carrying ranked actions, GET /next-best-actions over
real HTTP, forwarded to the key's owner, a ranking it served reported shown (its take window
the ranking's), and the take models shared by the workers (a take
learned on one worker moves the rankings the other serves)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import yaml

from agents.runtime.topics import key_partition
from agents.web.api import SERVED_BY
from schemas.keys import state_key
from streams.merchants.catalog import DEFAULT_MERCHANTS
from tests.harness import ADMIN_TOKEN, Cluster, cart_add, event, order_placed
from tests.test_api import call
from tests.test_scale_routing import PARTITIONS, poll, settled

pytestmark = pytest.mark.integration

SHOP = "uci-gift-shop"
ACTIONS = {"join-loyalty", "get-app", "newsletter", "explore-jumbo-bags"}


@pytest.fixture
def cluster(tmp_path):
    merchants = yaml.safe_load(DEFAULT_MERCHANTS.read_text())
    merchants["merchants"][SHOP]["engagement"].update(on_cart=True, combine="both")
    path = tmp_path / "merchants.yaml"
    path.write_text(yaml.safe_dump(merchants))
    cluster = Cluster(tmp_path / "cluster", partitions=PARTITIONS)
    cluster.settings = replace(cluster.settings, merchants_path=path)
    ports = cluster.start_worker("a"), cluster.start_worker("b")
    poll(lambda: settled(cluster), 120, "two workers ready, one owner per partition")
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
    cluster.send("orders", order)  # before c2's cart: topics are not ordered among themselves
    cluster.flush()
    cluster.wait_processed(1, timeout=120)
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
    for kind, value in inputs[1:]:
        cluster.send(kind, value)
    cluster.flush()
    cluster.wait_processed(len(inputs) + 1, timeout=120)  # the duplicate counts twice

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
    decisions = {d["cart_event_id"]: d for d in cluster.read("decisions", min_count=2)}
    for cart, record in by_cart.items():  # the decision log carries what the record carried
        assert decisions[cart]["engagement_actions"] == record["engagement_actions"]
        assert decisions[cart]["engagement_propensity"] == record["engagement_propensity"]
    assert "join-loyalty" not in {
        a["action_id"] for a in by_cart["eng-cart-c1"]["engagement_actions"]
    }  # c1 has no order yet

    # The API, over HTTP, from worker a whatever worker owns the key.
    status, spec, _ = call(port, "GET", "/openapi.json")
    assert "/next-best-actions" in spec["paths"]
    path = f"/next-best-actions?merchant={SHOP}&customer=c1&n=2"
    status, body, headers = call(port, "GET", path, ADMIN_TOKEN)
    assert status == 200, body
    ids = [a["action_id"] for a in body["actions"]]
    assert body["known_customer"] and 1 <= len(ids) <= 2, json.dumps([body, headers])
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

    # c2 takes the newsletter it was shown: its owner learns it once, and both workers rank
    # with it (the engagement-models table).
    take = feedback("action_taken", "eng-take-c2", "c2", "newsletter")
    take["event_time"] = "2011-11-14T10:10:00Z"
    cluster.send("action_feedback", take)
    cluster.flush()
    cluster.wait_processed(len(inputs) + 2, timeout=120)
    c2 = cluster.state(port, f"{SHOP}:c:c2")
    assert c2["engagement"]["actions"]["newsletter"]["taken"] == 1, json.dumps(c2["engagement"])
    assert "newsletter" not in {w[1] for w in c2["engagement"]["open"]}  # closed: taken
    views = poll(lambda: same_models(cluster, updates=1), 60, "both workers learned the take")
    [part] = views[SHOP]["parts"]
    assert views[SHOP]["parts"] == {part: 1}

    # A ranking the API served (answered by the key's owner, asked of worker a), reported shown
    # by the shop with its id and propensity: c3's take window is that ranking's, with that
    # propensity; a propensity of 0 is dead-lettered naming the field.
    owner_of = settled(cluster)
    assert owner_of is not None
    owner = owner_of[key_partition(state_key(SHOP, "c3", None), PARTITIONS)]
    path = f"/next-best-actions?merchant={SHOP}&customer=c3&n=10"
    status, answer, headers = call(port, "GET", path, ADMIN_TOKEN)
    assert status == 200 and headers[SERVED_BY] == owner, answer
    assert answer["ranking_id"].startswith("api-") and 0 < answer["propensity"] <= 1
    first = answer["actions"][0]["action_id"]
    logged = {"ranking_id": answer["ranking_id"], "propensity": answer["propensity"]}
    cluster.send("action_feedback", feedback("action_shown", "eng-api-c3", "c3", first, **logged))
    bad = {**logged, "propensity": 0}
    cluster.send("action_feedback", feedback("action_shown", "eng-api-bad", "c3", first, **bad))
    cluster.flush()
    cluster.wait_processed(len(inputs) + 4, timeout=120)
    c3 = cluster.state(port, f"{SHOP}:c:c3")
    [window] = c3["engagement"]["open"]
    assert window[:2] == [answer["ranking_id"], first] and window[4] == answer["propensity"]
    letters = cluster.read("dead_letters", min_count=3)
    [letter] = [one for one in letters if "eng-api-bad" in one["payload"]]
    assert letter["reason"] == "schema_violation" and "propensity" in letter["error"], letter


def same_models(cluster: Cluster, updates: int) -> dict | None:
    """The take models' view (``/engagement/models/``) once every worker shows the same one,
    with ``updates`` windows learned for the shop."""
    views = [call(port, "GET", "/engagement/models/")[1] for _, port in cluster.workers.values()]
    if any(view.get(SHOP, {}).get("updates") != updates for view in views):
        return None
    return views[0] if all(view == views[0] for view in views) else None


def test_a_take_learned_on_one_worker_moves_the_ranking_the_other_serves(cluster):
    cluster, (port_a, port_b) = cluster
    owner_of = poll(lambda: settled(cluster), 120, "two workers, one owner per partition")
    url_a, url_b = cluster.urls["a"], cluster.urls["b"]

    def partition(customer: str) -> int:
        return key_partition(state_key(SHOP, customer, None), PARTITIONS)

    customers = [f"t{i}" for i in range(100)]
    takers = [c for c in customers if owner_of[partition(c)] == url_a][:6]
    reader = next(c for c in customers if owner_of[partition(c)] == url_b)
    path = f"/next-best-actions?merchant={SHOP}&customer={reader}&n=10"
    status, before, headers = call(port_b, "GET", path, ADMIN_TOKEN)
    assert status == 200 and headers[SERVED_BY] == url_b, before
    assert before["model_version"] == "engagement-ts/1:0"

    # Customers of worker a's partitions are shown the newsletter and take it.
    for customer in takers:
        cluster.send(
            "action_feedback", feedback("action_shown", f"s-{customer}", customer, "newsletter")
        )
        taken = feedback("action_taken", f"t-{customer}", customer, "newsletter")
        cluster.send("action_feedback", {**taken, "event_time": "2011-11-14T10:10:00Z"})
    cluster.flush()
    cluster.wait_processed(2 * len(takers), timeout=120)

    def ranked_with_the_takes() -> dict | None:
        status, body, headers = call(port_b, "GET", path, ADMIN_TOKEN)
        assert status == 200 and headers[SERVED_BY] == url_b, body
        return body if body["model_version"] == f"engagement-ts/1:{len(takers)}" else None

    after = poll(ranked_with_the_takes, 60, "worker b ranks with the takes worker a learned")
    p_before = {a["action_id"]: a["p_take"] for a in before["actions"]}
    p_after = {a["action_id"]: a["p_take"] for a in after["actions"]}
    assert p_after["newsletter"] > p_before["newsletter"] + 0.01, (before, after)
    assert {a: p for a, p in p_after.items() if a != "newsletter"} == {
        a: p for a, p in p_before.items() if a != "newsletter"
    }
    # Learned by worker a alone, into its partitions' parts; both workers show the same.
    view = poll(lambda: same_models(cluster, len(takers)), 60, "both workers show the parts")
    learned_on = {int(key.rsplit(":", 1)[1]) for key in view[SHOP]["parts"]}
    assert learned_on and all(owner_of[p] == url_a for p in learned_on)
    assert sum(view[SHOP]["parts"].values()) == len(takers)

    # Worker a leaves (b takes its partitions over) and c starts on an empty state directory:
    # both have every part, from the table's changelog.
    cluster.stop_worker("a")
    cluster.start_worker("c")
    restored = poll(lambda: same_models(cluster, len(takers)), 120, "b and c have every part")
    assert restored == view
    assert "Traceback" not in cluster.log("a") + cluster.log("b") + cluster.log("c")
