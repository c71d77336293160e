"""A customer who never comes back still gets their reward after the worker restarts or the
group rebalances: the reward sweep's index is in the ``reward-due`` table, so other customers'
events moving event time past the window close it, on the same state directory or an empty one
(recovered from the changelog); a replay emits no second reward. Real embedded broker, real
worker processes."""

from __future__ import annotations

import time

import pytest

from agents.runtime.topics import key_partition
from tests.harness import Cluster, event

pytestmark = pytest.mark.integration

MERCHANT = "due-shop"
MERCHANTS = """\
merchants:
  due-shop:
    name: Reward sweep test shop
    currency: GBP
    shipping_cost: 5
    margin_rate: 0.4
    offer_ttl_hours: 48
    channel_order: [email]
    promotions:
      - {id: ten-off, type: percent_off, percent: 10, min_spend: 0}
"""
EXPERIMENT = {
    "id": "due-1",
    "holdout": 0.0,
    "arms": [{"name": "rules", "weight": 1, "variant": "rules"}],
}
PARTITIONS = 4


def when(hours: int) -> str:
    day, hour = divmod(10 + hours, 24)
    return f"2011-11-{14 + day:02d}T{hour:02d}:00:00Z"


def partition(customer: str) -> int:
    """The input partition of the customer's events (the producers' murmur2 partitioner)."""
    return key_partition(f"{MERCHANT}:c:{customer}", PARTITIONS)


def neighbours(customer: str, count: int) -> list[str]:
    """Other customers whose events land on the same partition as ``customer``'s."""
    mine = partition(customer)
    return [c for c in (f"n{i}" for i in range(200)) if partition(c) == mine][:count]


def wait_ready(cluster: Cluster, name: str, rebalances: int = 1) -> None:
    """Until the worker has ended ``rebalances`` rebalances (tables recovered, flow resumed).

    Records produced while a fresh worker recovers can wait in it until a later record
    arrives on their partition (the lean delivery loop's re-read of held records); this test
    is about the reward sweep, so it sends its events once the workers are ready.
    """
    deadline = time.monotonic() + 60
    while cluster.log(name).count("Worker ready") < rebalances:
        if time.monotonic() > deadline:
            raise TimeoutError(f"worker {name} not ready")
        time.sleep(0.2)


def send(cluster: Cluster, records: list[tuple[str, dict]]) -> None:
    """Produce the records and wait until the running workers have handled them."""
    before = cluster.processed()
    for kind, value in records:
        cluster.send(kind, value)
    cluster.flush()
    cluster.wait_processed(before + len(records), timeout=90)


@pytest.mark.parametrize("restart", ["same-state", "empty-state", "rebalance"])
def test_a_window_closes_by_the_sweep_after_a_restart_or_rebalance(tmp_path, restart):
    cluster = Cluster(tmp_path, partitions=PARTITIONS)
    try:
        cluster.use_promotion(MERCHANTS, EXPERIMENT)
        cluster.start_worker("a")
        wait_ready(cluster, "a")
        line = {"product_id": "P1", "quantity": 1, "unit_price": 60.0}
        cart = event(
            "cart_add",
            "cart-c0",
            customer="c0",
            merchant=MERCHANT,
            time=when(0),
            lines=[line],
            cart_value=60.0,
            currency="GBP",
        )
        send(cluster, [("cart", cart)])
        [decision] = cluster.read("decisions", min_count=1)
        assert decision["customer_key"] == f"{MERCHANT}:c:c0"

        # SIGTERM and a new worker on the same state directory or an empty one; or a second
        # worker joins (a rebalance: every partition is revoked and assigned again).
        if restart == "rebalance":
            cluster.start_worker("b")
            wait_ready(cluster, "a", rebalances=2)
        else:
            cluster.stop_worker("a")
            cluster.start_worker("b", "state-a" if restart == "same-state" else None)
        wait_ready(cluster, "b")
        # c0 never comes back; other customers' events on c0's partition move event time past
        # the end of its 48-hour window (plus the allowed lateness).
        others = [
            (
                "clickstream",
                event(
                    "page_view", f"view-{c}", customer=c, merchant=MERCHANT, time=when(49), page="/"
                ),
            )
            for c in neighbours("c0", 3)
        ]
        send(cluster, others)
        first = cluster.read("rewards", min_count=1, timeout=30)

        # A replay of every event, across another restart on an empty state directory, emits
        # no second decision and no second reward.
        for name in list(cluster.workers):
            cluster.stop_worker(name)
        cluster.start_worker("c")
        wait_ready(cluster, "c")
        send(cluster, [("cart", cart), *others])
        decisions = cluster.read("decisions", min_count=1)
        rewards = cluster.read("rewards", min_count=1)
        logs = cluster.log("a") + cluster.log("b") + cluster.log("c")
    finally:
        cluster.close()

    assert "Traceback" not in logs
    assert [r["decision_id"] for r in first] == [decision["decision_id"]]
    [reward] = first
    assert reward["customer_key"] == f"{MERCHANT}:c:c0"
    assert reward["reason"] == "window_closed" and reward["purchased"] is False
    assert reward["closed_at"] >= "2011-11-16T10:00:00Z"  # closed on event time, by the sweep
    assert [d["decision_id"] for d in decisions] == [decision["decision_id"]]
    assert rewards == first
