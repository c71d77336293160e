"""The retention journey through a real worker on the embedded broker: orders arm the timer in
the worker's state, another customer's later event moves the partition's event clock past the
time the churn risk reaches the threshold, and the treated customers get the promotion policy's
offer while the holdout and the customer without consent get nothing."""

from __future__ import annotations

import pytest
import yaml

from agents.tools.processes import scrape_samples
from schemas.keys import iso
from streams.merchants.catalog import DEFAULT_MERCHANTS, Merchant, parse_merchant
from streams.outreach import retention
from streams.state import churn, customer_state
from tests.harness import Cluster, event, order_placed
from tests.test_journeys import utc
from tests.test_retention import daytime

SHOP = "uci-gift-shop"
DAY = churn.DAY_S
ORDERED = "2011-03-01T10:00:00Z"
CONFIG = {"threshold": 0.6, "window_days": 30, "holdout": 0.5, "experiment": "retention-it"}
EXPERIMENT = {
    "id": "it",
    "holdout": 0.0,
    "arms": [{"name": "all", "variant": "static:percent_off"}],
}


def profile_event(customer: str) -> dict:
    channels = {"email": f"{customer}@example.com", "push": "", "sms": "", "in_app": False}
    return event(
        "profile",
        f"profile-{customer}",
        customer=customer,
        time="2011-02-01T10:00:00Z",
        channels=channels,
        preferred_channel="email",
        time_zone="Europe/London",
    )


def order_event(customer: str) -> dict:
    return order_placed(
        f"order-{customer}",
        f"o-{customer}",
        200.0,
        "85123A",
        customer=customer,
        merchant=SHOP,
        time=ORDERED,
    )


def due_time(merchant: Merchant) -> float:
    """When the step is due for a customer with that one order, by the rules the worker runs."""
    state = customer_state.new_state()
    ts = utc(ORDERED.removesuffix("Z"))
    customer_state.apply_event(state, "orders", {**order_event("x"), "_ts": ts})
    running: dict = {}
    retention.arm_timer(running, state, merchant.options.journeys.retention, "o-x", ts)
    return running[retention.RETENTION]["due"]


@pytest.fixture
def cluster(tmp_path):
    merchants = yaml.safe_load(DEFAULT_MERCHANTS.read_text())
    merchants["merchants"][SHOP]["journeys"] = {"retention": CONFIG}
    c = Cluster(tmp_path, partitions=1)
    c.use_promotion(yaml.safe_dump(merchants), EXPERIMENT)
    yield c, parse_merchant(SHOP, merchants["merchants"][SHOP])
    c.close()


def test_retention_steps_through_the_worker(cluster):
    c, merchant = cluster
    config = merchant.options.journeys.retention
    people = [f"r{i}" for i in range(40)]
    treated = [p for p in people if retention.arm(config, f"{SHOP}:c:{p}") == "treated"][:2]
    held_out = [p for p in people if retention.arm(config, f"{SHOP}:c:{p}") == "holdout"][:1]
    silent = [p for p in people if retention.arm(config, f"{SHOP}:c:{p}") == "treated"][2]
    assert len(treated) == 2 and len(held_out) == 1
    for customer in [*treated, *held_out]:
        c.send("profiles", profile_event(customer))
    for customer in [*treated, *held_out, silent]:
        c.send("orders", order_event(customer))
    c.flush()
    port = c.start_worker("a")
    c.wait_processed(7, timeout=120)
    due = due_time(merchant)
    state = c.state(port, f"{SHOP}:c:{treated[0]}")
    assert state["journeys"]["retention"]["due"] == pytest.approx(due)
    assert state["churn"]["band"] == churn.band(state["churn"]["score"])
    assert c.read("notifications") == []  # nobody is due yet

    # another customer's event, later in event time: the partition's clock passes the due time
    clock = daytime(due + 3600.0) + 61.0
    c.send("clickstream", event("page_view", "clock-1", customer="zz", time=iso(clock), page="/"))
    c.flush()
    c.wait_processed(8, timeout=60)
    notes = c.read("notifications", min_count=2, timeout=60)
    assert sorted(n["customer_id"] for n in notes) == sorted(treated)
    for note in notes:
        assert (note["source"], note["journey_step"], note["channel"]) == (
            "retention",
            "remind",
            "email",
        )
        assert note["promotion_id"] == "five-off-150"  # the policy's offer for a £200 cart
        assert note["products"] == ["85123A"]
    decisions = [
        d for d in c.read("decisions") if d["cart_event_id"] in {n["dedupe_key"] for n in notes}
    ]
    assert len(decisions) == 2 and all(d["sent"] and d["cart_generation"] < 0 for d in decisions)
    assert {d["offer_id"] for d in decisions} == {n["offer_id"] for n in notes}
    arms = {
        labels["arm"]: value
        for labels, value in scrape_samples(port, "nextbest_retention_journey_steps_total")
    }
    assert arms == {"treated": 2.0, "holdout": 1.0}  # the customer without consent: no step
    risks = scrape_samples(port, "nextbest_churn_risk_score_count")
    assert [(labels["merchant"], value) for labels, value in risks] == [(SHOP, 4.0)]  # the orders
    held = c.state(port, f"{SHOP}:c:{held_out[0]}")["journeys"]["retention"]
    assert held["k"] == 1 and held["due"] >= clock - 61.0 + 30 * DAY - 120
    assert not c.crashes("a")
