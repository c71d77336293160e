"""One bandit for all workers, on the real embedded broker: two workers in one group both
sample from the statistics learned on every partition (the ``promo-bandit`` global table), and
a worker restarted on an empty state directory gets them back from the changelog."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from agents.tools.processes import scrape
from tests.harness import Cluster, cart_add, event, order_placed

pytestmark = pytest.mark.integration

MERCHANT = "shared-shop"
MERCHANTS = """\
merchants:
  shared-shop:
    name: Shared bandit test shop
    currency: GBP
    shipping_cost: 5
    nudge_max_gap: 25
    margin_rate: 0.4
    offer_ttl_hours: 48
    channel_order: [email]
    promotions:
      - {id: free-ship-40, type: free_shipping, min_spend: 40}
      - {id: ten-off-100, type: percent_off, percent: 10, min_spend: 100}
"""
EXPERIMENT = {
    "id": "shared-1",
    "holdout": 0.0,
    "arms": [{"name": "learned", "weight": 1, "variant": "bandit"}],
}
CUSTOMERS = 40


def when(hours: float) -> str:
    day, hour = divmod(int(10 + hours), 24)
    return f"2011-11-{14 + day:02d}T{hour:02d}:00:00Z"


def events() -> list[tuple[str, dict]]:
    """A cart per customer, an order from every third, and a visit three days later that closes
    the customer's attribution window."""
    out = []
    for i in range(CUSTOMERS):
        value, product, customer = (45.0, 120.0)[i % 2], f"P{i % 5}", f"c{i}"
        out.append(
            (
                "cart",
                cart_add(
                    f"cart-{i}",
                    value,
                    customer=customer,
                    merchant=MERCHANT,
                    time=when(0),
                    product=product,
                    unit_price=value,
                ),
            )
        )
        if i % 3 == 0:
            order = order_placed(
                f"order-{i}",
                f"O{i}",
                value,
                product,
                customer=customer,
                merchant=MERCHANT,
                time=when(1),
            )
            out.append(("orders", order))
        out.append(
            (
                "clickstream",
                event(
                    "page_view",
                    f"late-{i}",
                    customer=f"c{i}",
                    merchant=MERCHANT,
                    time=when(72),
                    page="/",
                ),
            )
        )
    return out


def cart_partitions(log: str) -> set[int]:
    """The cart-topic partitions of a worker's last assignment, from its log's table
    (``| nextbest.cart | {0, 2} |`` or ``{0-3}``)."""
    cells = [
        line.split("|")[2].strip()
        for line in log.splitlines()
        if line.startswith("| nextbest.cart ") and line.count("|") >= 3
    ]
    partitions: set[int] = set()
    for part in cells[-1].strip("{}").split(","):
        first, _, last = part.strip().partition("-")
        partitions.update(range(int(first), int(last or first) + 1))
    return partitions


def bandit_view(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/promo/bandit/", timeout=5) as response:
        return json.loads(response.read())


def wait_for_updates(port: int, updates: int, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        view = bandit_view(port).get("bandit", {}).get(MERCHANT, {})
        if view.get("updates") == updates or time.monotonic() > deadline:
            return view
        time.sleep(0.5)


def test_two_workers_share_one_bandit_and_a_restart_gets_it_back(tmp_path):
    cluster = Cluster(tmp_path)
    try:
        cluster.use_promotion(MERCHANTS, EXPERIMENT)
        port_a = cluster.start_worker("a")
        port_b = cluster.start_worker("b")
        sent = events()
        for kind, value in sent:
            cluster.send(kind, value)
        cluster.flush()
        cluster.wait_processed(len(sent), timeout=120)
        rewards = cluster.read("rewards", min_count=CUSTOMERS, timeout=60)
        learnable = [
            r
            for r in rewards
            if r["reason"] == "window_closed" and (r["sent"] or r["action_kind"] == "none")
        ]
        handled = [
            scrape(port, ("nextbest_events_total",)).get("nextbest_events_total", 0)
            for port in (port_a, port_b)
        ]
        view_a = wait_for_updates(port_a, len(learnable))
        view_b = wait_for_updates(port_b, len(learnable))
        cluster.stop_worker("a")
        cluster.stop_worker("b")

        owned = [cart_partitions(cluster.log(name)) for name in "ab"]

        port_c = cluster.start_worker("c")  # a fresh state directory
        view_c = wait_for_updates(port_c, len(learnable), timeout=90)
        log = cluster.log("a") + cluster.log("b") + cluster.log("c")
    finally:
        cluster.close()

    assert len(rewards) == CUSTOMERS and len(learnable) > CUSTOMERS // 2
    assert all(handled)  # both workers owned partitions and handled events
    # Both workers sample from one bandit: every reward, whichever worker closed it.
    assert view_a["updates"] == view_b["updates"] == len(learnable)
    assert view_a["parts"] == view_b["parts"]
    assert sum(view_a["parts"].values()) == len(learnable)
    # Each worker learned the rewards of its own partitions; both bandits count both workers'.
    assert owned[0] and owned[1] and not owned[0] & owned[1]
    for partitions in owned:
        learned_there = [view_a["parts"].get(f"{MERCHANT}:{p}", 0) for p in partitions]
        assert sum(learned_there) > 0
    # A worker on an empty state directory got it back from the table's changelog.
    assert view_c == view_a
    assert "Traceback" not in log
