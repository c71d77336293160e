"""End to end through the real embedded broker and real worker processes."""

from __future__ import annotations

import time
import urllib.request
from collections import Counter
from datetime import datetime

import orjson
import pytest

from agents.tools.replay import replay_events
from tests.harness import DATA_FILE, Cluster, cart_add, event

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(tmp_path):
    cluster = Cluster(tmp_path)
    yield cluster
    cluster.close()


@pytest.fixture
def rules_cluster(tmp_path):
    """Workers with the threshold rules (``NEXTBEST_POLICY=rules``): offers known in advance."""
    cluster = Cluster(tmp_path, policy="rules")
    yield cluster
    cluster.close()


def profile(customer: str, *, opted_out: bool = False) -> dict:
    return event(
        "profile",
        f"profile-{customer}",
        customer=customer,
        time="2011-11-14T09:00:00Z",
        opted_out=opted_out,
        preferred_channel="email",
        channels={"email": f"{customer}@example.com", "sms": None, "push": None, "in_app": False},
    )


BAD_INPUTS = [  # (topic kind, raw value, expected dead-letter reason)
    ("cart", b"{not json", "malformed_json"),
    ("cart", b"\xff\xfe binary", "malformed_json"),
    (
        "cart",
        orjson.dumps({**cart_add("bad-1", 10, customer="c1"), "cart_value": "ten"}),
        "schema_violation",
    ),
    ("clickstream", orjson.dumps(event("teleport", "bad-2", customer="c1")), "unknown_event_type"),
    (
        "clickstream",
        orjson.dumps(event("page_view", "bad-3", customer="c1", page="x" * 70000)),
        "oversize_payload",
    ),
    (
        "cart",
        orjson.dumps({**cart_add("bad-4", 10, customer="c1"), "merchant_id": "nope"}),
        "unknown_merchant",
    ),
    (
        "orders",
        orjson.dumps({**event("order", "bad-5", customer="c1"), "schema_version": 9}),
        "unsupported_schema_version",
    ),
]


def test_events_in_offers_notifications_and_dead_letters_out(rules_cluster):
    cluster = rules_cluster
    port = cluster.start_worker("a")
    cluster.send("profiles", profile("c1"))
    cluster.send("profiles", profile("c2", opted_out=True))
    for i, value in enumerate([45.0, 70.0, 75.0, 130.0]):
        cluster.send(
            "cart", cart_add(f"c1-add-{i}", value, customer="c1", time=f"2011-11-14T10:0{i}:00Z")
        )
    cluster.send("cart", cart_add("c1-add-0", 45.0, customer="c1"))  # a redelivered event
    cluster.send("cart", cart_add("c2-add-0", 70.0, customer="c2"))
    cluster.send("cart", cart_add("s9-add-0", 70.0, session="s9"))
    cluster.send("cart", cart_add("c3-add-0", 45.0, customer="c3"), key=b"wrong-key")
    for kind, raw, _ in BAD_INPUTS:
        cluster.send(kind, raw, key=b"uci-gift-shop:c:c1")
    cluster.flush()
    cluster.wait_processed(2 + 4 + 1 + 2 + 1 + len(BAD_INPUTS))

    offers = cluster.read("promotions", min_count=7)
    by_who = Counter(o["customer_id"] or o["session_id"] for o in offers)
    assert by_who == {"c1": 3, "c2": 1, "s9": 1, "c3": 1}
    c1 = [(o["offer_type"], o["promotion_id"]) for o in offers if o["customer_id"] == "c1"]
    assert c1 == [
        ("threshold_nudge", "free-shipping-60"),
        ("free_shipping", "free-shipping-60"),
        ("threshold_nudge", "five-off-150"),
    ]
    nudge = next(o for o in offers if o["cart_event_id"] == "c1-add-0")
    assert nudge["amount_to_next_tier"] == 15.0 and "£15.00" in nudge["message"]

    notifications = cluster.read("notifications", min_count=2)
    assert [(n["customer_id"], n["channel"], n["address"]) for n in notifications] == [
        ("c1", "email", "c1@example.com")
    ] * 2  # third offer hit the cap of 2 a day
    assert len({n["dedupe_key"] for n in notifications}) == 2

    letters = cluster.read("dead_letters", min_count=len(BAD_INPUTS))
    assert sorted(d["reason"] for d in letters) == sorted(r for _, _, r in BAD_INPUTS)
    for letter in letters:
        assert letter["source_topic"].startswith("nextbest.") and letter["offset"] >= 0
        assert letter["error"] and letter["payload"]
    binary = next(d for d in letters if d["payload_encoding"] == "base64")
    assert binary["reason"] == "malformed_json"

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    for line in (
        'nextbest_dead_letters_total{reason="oversize_payload"} 1.0',
        'nextbest_messages_suppressed_total{merchant="uci-gift-shop",reason="frequency_cap"} 1.0',
        'nextbest_messages_suppressed_total{merchant="uci-gift-shop",reason="opted_out"} 1.0',
        'nextbest_notifications_total{channel="email",merchant="uci-gift-shop"} 2.0',
        "nextbest_duplicate_events_total 1.0",
        "nextbest_rerouted_events_total 1.0",
    ):
        assert line in text
    assert "nextbest_decision_latency_seconds_bucket" in text
    assert cluster.state(port, "uci-gift-shop:c:c1")["cart"]["value"] == 130.0


def test_anonymous_session_merges_into_customer(cluster):
    port = cluster.start_worker("a")
    view = event(
        "product_view", "s5-view", session="s5", product_id="85123A", time="2011-11-14T10:00:00Z"
    )
    cluster.send("clickstream", view)
    cluster.flush()
    cluster.wait_processed(1)
    assert cluster.state(port, "uci-gift-shop:s:s5")["views"][0][0] == "85123A"
    cluster.send(
        "cart", cart_add("c5-add", 20.0, customer="c5", session="s5", time="2011-11-14T10:01:00Z")
    )
    cluster.flush()
    cluster.wait_processed(2)
    merged = None
    for _ in range(40):
        merged = cluster.state(port, "uci-gift-shop:c:c5")
        if merged and merged["views"]:
            break
        time.sleep(0.25)
    assert merged["views"][0][0] == "85123A"
    assert "s5-view" in merged["seen"]
    assert cluster.state(port, "uci-gift-shop:s:s5") is None


def real_events(limit: int) -> list:
    if not DATA_FILE.exists():
        pytest.skip(f"{DATA_FILE} not found")
    events = replay_events(DATA_FILE, start=datetime(2011, 11, 14, 7), end=datetime(2011, 11, 15))
    return [e for _, e in zip(range(limit), events, strict=False)]


def send_all(cluster: Cluster, events: list) -> None:
    for e in events:
        cluster.send(e.topic_kind, e.value, key=e.key.encode())
    cluster.flush()


def outputs(cluster: Cluster, offers: int) -> tuple[list[str], list[str]]:
    # a restarted worker on a busy 2-core machine may need longer than read()'s default 20 s
    # to rejoin, recover and catch up; the comparison below stays exact
    promotions = cluster.read("promotions", min_count=offers, timeout=60)
    notifications = cluster.read("notifications")
    return [o["offer_id"] for o in promotions], [n["dedupe_key"] for n in notifications]


def test_restart_two_workers_and_one_worker_agree(tmp_path):
    """SIGTERM mid-stream + restart on empty local state, and two workers, match one worker.
    The threshold rules: many offers, each a pure function of the cart events (the promotion
    policy's restarts are tests/test_kill_loop.py's and tests/test_promotion_stream.py's)."""
    events = real_events(3000)

    reference = Cluster(tmp_path / "one", policy="rules")
    try:
        reference.start_worker("a")
        send_all(reference, events)
        reference.wait_processed(len(events), timeout=90)
        offer_ids, dedupe_keys = outputs(reference, offers=1)
    finally:
        reference.close()
    assert len(offer_ids) > 50 and len(dedupe_keys) > 5
    assert len(set(offer_ids)) == len(offer_ids)
    assert len(set(dedupe_keys)) == len(dedupe_keys)

    restarted = Cluster(tmp_path / "restart", policy="rules")
    try:
        restarted.start_worker("a")
        half = len(events) // 2
        send_all(restarted, events[:half])
        restarted.wait_processed(len(events) // 3, timeout=90)
        restarted.stop_worker("a")  # SIGTERM, maybe mid-batch; the rest arrives after it
        restarted.start_worker("b")  # empty state dir: the table comes back from the changelog
        send_all(restarted, events[half:])
        restarted.wait_processed(1, timeout=90)  # group join + changelog recovery first
        recovered = restarted.log("b")
        offers_after, keys_after = outputs(restarted, offers=len(offer_ids))
    finally:
        restarted.close()
    assert "Traceback" not in recovered
    assert sorted(offers_after) == sorted(offer_ids)  # nothing lost, nothing emitted twice
    assert len(set(keys_after)) == len(keys_after)  # no customer messaged twice

    pair = Cluster(tmp_path / "two", policy="rules")
    try:
        pair.start_worker("a")
        pair.start_worker("b")
        send_all(pair, events)
        pair.wait_processed(len(events), timeout=120)
        offers_two, keys_two = outputs(pair, offers=len(offer_ids))
        assigned = [pair.log(name).count("Setting newly assigned partitions") for name in "ab"]
    finally:
        pair.close()
    assert all(assigned)
    assert sorted(offers_two) == sorted(offer_ids)
    assert len(set(keys_two)) == len(keys_two)
