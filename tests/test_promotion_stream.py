"""The promotion policy in the real worker (``NEXTBEST_POLICY=promotion``): decision log,
rewards, budgets and caps through replays and a restart, on the real embedded broker."""

from __future__ import annotations

import urllib.request
from collections import Counter

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from tests.harness import Cluster, event

pytestmark = pytest.mark.integration

MERCHANT = "promo-shop"
MERCHANTS = """\
merchants:
  promo-shop:
    name: Promotion test shop
    currency: GBP
    shipping_cost: 5
    nudge_max_gap: 25
    margin_rate: 0.4
    offer_ttl_hours: 48
    channel_order: [email]
    promotions:
      - {id: free-ship-40, type: free_shipping, min_spend: 40, budget: 20, max_per_customer: 1}
      - {id: ten-off-100, type: percent_off, percent: 10, min_spend: 100, budget: 80,
         max_per_customer: 1}
"""
BUDGETS = {"free-ship-40": 20.0, "ten-off-100": 80.0}
EXPERIMENT = {
    "id": "it-1",
    "holdout": 0.2,
    "arms": [
        {"name": "learned", "weight": 1, "variant": "bandit"},
        {"name": "rules", "weight": 2, "variant": "rules"},
    ],
}
CUSTOMERS = 48
VALUES = (45.0, 80.0, 120.0)  # free shipping reached / + a nudge to 10% off / both tiers


def when(hours: float) -> str:
    day, hour = divmod(int(10 + hours), 24)
    return f"2011-11-{14 + day:02d}T{hour:02d}:00:00Z"


def cart(i: int) -> dict:
    value = VALUES[i % len(VALUES)]
    line = {"product_id": f"P{i % 7}", "quantity": 1, "unit_price": value}
    return event("cart_add", f"cart-{i}", customer=f"c{i}", merchant=MERCHANT, time=when(0),
                 lines=[line], cart_value=value, currency="GBP")


def order(i: int, total: float) -> dict:
    line = {"product_id": f"P{i % 7}", "quantity": 1, "unit_price": total}
    return event("order", f"order-{i}", customer=f"c{i}", merchant=MERCHANT, time=when(1),
                 order_id=f"O{i}", lines=[line], total=total, currency="GBP")


def read_topic(cluster: Cluster, topic: str) -> list[tuple[bytes, bytes | None]]:
    consumer = Consumer({**cluster.settings.kafka_client_config(), "group.id": "test-ledgers",
                         "enable.auto.commit": False})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    records, empty = [], 0
    while empty < 8:
        batch = [m for m in consumer.consume(500, 0.25) if not m.error()]
        records.extend((m.key(), m.value()) for m in batch)
        empty = 0 if batch else empty + 1
    consumer.close()
    return records


def metric(port: int, line_start: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(line_start))


def test_decisions_rewards_and_budgets_survive_replays_and_a_restart(tmp_path):
    cluster = Cluster(tmp_path)
    try:
        cluster.use_promotion(MERCHANTS, EXPERIMENT)
        port = cluster.start_worker("a")

        carts = [cart(i) for i in range(CUSTOMERS)]
        for value in carts:
            cluster.send("cart", value)
        cluster.flush()
        cluster.wait_processed(CUSTOMERS)
        offers = cluster.read("promotions", min_count=1)

        # Half the offered customers redeem and buy; every third customer buys without one.
        redeemers = {o["customer_id"]: o for o in offers[::2]}
        follow_up = []
        for customer, offer in redeemers.items():
            follow_up.append(("feedback", event("offer_redeemed", f"fb-{customer}",
                                                customer=customer, merchant=MERCHANT,
                                                time=when(1), offer_id=offer["offer_id"])))
            follow_up.append(("orders", order(int(customer[1:]), offer["cart_value"])))
        buyers = [i for i in range(0, CUSTOMERS, 3) if f"c{i}" not in redeemers]
        follow_up += [("orders", order(i, VALUES[i % len(VALUES)])) for i in buyers]
        for kind, value in follow_up:
            cluster.send(kind, value)
        cluster.flush()
        cluster.wait_processed(CUSTOMERS + len(follow_up))
        # Three days later half the customers are back: their attribution windows close on
        # their own event, the others' by the sweep as their partitions' event time moves on.
        # (Sent after the day's feedback was processed, as it would arrive: windows close on
        # event time, and a backlog read topic by topic could close one before its feedback.)
        late = [("clickstream", event("page_view", f"late-{i}", customer=f"c{i}",
                                      merchant=MERCHANT, time=when(72), page="/"))
                for i in range(0, CUSTOMERS, 2)]
        for kind, value in late:
            cluster.send(kind, value)
        cluster.flush()
        follow_up += late
        everything = [("cart", c) for c in carts] + follow_up
        cluster.wait_processed(len(everything))
        first_rewards = cluster.read("rewards", min_count=CUSTOMERS)
        assert len(first_rewards) == CUSTOMERS

        # The same events again, then again after a SIGTERM and a restart on empty local state.
        for kind, value in everything:
            cluster.send(kind, value)
        cluster.flush()
        cluster.wait_processed(2 * len(everything))
        blocked_by_budget = metric(port, 'nextbest_promo_blocked_actions_total{reason="budget"}')
        cluster.stop_worker("a")
        cluster.start_worker("b")
        for kind, value in everything:
            cluster.send(kind, value)
        cluster.flush()
        cluster.wait_processed(len(everything))
        assert "Traceback" not in cluster.log("a") + cluster.log("b")
        checkpoint = orjson.loads((tmp_path / "state-a" / "promo-bandit.json").read_bytes())

        decisions = cluster.read("decisions", min_count=CUSTOMERS)
        rewards = cluster.read("rewards", min_count=CUSTOMERS)
        offers = cluster.read("promotions", min_count=len(offers))
        changelog = f"{cluster.settings.app_id}-promo-ledgers-changelog"
        ledgers = {}
        for key, value in read_topic(cluster, changelog):
            ledgers[key.decode()] = orjson.loads(value)
    finally:
        cluster.close()

    # Every cart decision is logged once, holdout and no-offer decisions included.
    ids = [d["decision_id"] for d in decisions]
    assert len(ids) == len(set(ids)) == CUSTOMERS
    customers = {f"{MERCHANT}:c:c{i}" for i in range(CUSTOMERS)}
    assert {d["customer_key"] for d in decisions} == customers
    arms = Counter(d["arm"] for d in decisions)
    assert set(arms) == {"holdout", "learned", "rules"}
    assert not any(d["sent"] for d in decisions if d["arm"] == "holdout")
    assert any(d["action"] == "none" for d in decisions if d["arm"] != "holdout")
    for d in decisions:
        assert d["experiment"] == "it-1" and 0 < d["propensity"] <= 1
        assert abs(sum(o["probability"] for o in d["options"]) - 1) < 1e-3

    # Offers are the decisions that were sent, once each, with their budget cap on them.
    sent = {d["offer_id"]: d for d in decisions if d["sent"]}
    assert sorted(o["offer_id"] for o in offers) == sorted(sent)
    for offer in offers:
        assert offer["max_discount"] == sent[offer["offer_id"]]["max_discount"] > 0
        assert offer["policy"] == "promotion/it-1"

    # One reward per decision; feedback and orders are joined to them.
    by_decision = {r["decision_id"]: r for r in rewards}
    assert len(rewards) == len(by_decision) == CUSTOMERS and set(by_decision) == set(ids)
    by_customer = {r["customer_key"].rsplit(":", 1)[1]: r for r in rewards}
    for customer, offer in redeemers.items():
        reward = by_customer[customer]
        assert reward["redeemed"] and reward["purchased"]
        assert reward["order_id"] == f"O{customer[1:]}"
        assert 0 < reward["discount_cost"] <= offer["max_discount"]
    for i in buyers:
        assert by_customer[f"c{i}"]["purchased"] and not by_customer[f"c{i}"]["redeemed"]
    assert sum(r["purchased"] for r in rewards) == len(redeemers) + len(buyers)

    # Budgets: never overspent, no decision reserved or settled twice, every issue accounted for.
    assert blocked_by_budget > 0  # the budgets did bind
    partitions = cluster.settings.partitions
    assert ledgers and all(key.startswith(f"{MERCHANT}:") for key in ledgers)
    spent: Counter[str] = Counter()
    reserved_ids: list[str] = []
    for key, ledger in ledgers.items():
        promotion = key.split(":")[1]
        assert ledger["budget"] == BUDGETS[promotion] / partitions
        assert ledger["spent"] + ledger["reserved"] <= ledger["budget"] + 1e-9
        assert abs(ledger["reserved"] - sum(a for a, _ in ledger["open"].values())) < 1e-9
        assert not set(ledger["open"]) & set(ledger["closed"])
        reserved_ids += [*ledger["open"], *ledger["closed"]]
        spent[promotion] += ledger["spent"]
    assert len(reserved_ids) == len(set(reserved_ids))
    budgeted = {d["decision_id"] for d in sent.values() if d["promotion_id"] in BUDGETS}
    assert set(reserved_ids) == budgeted
    for promotion in BUDGETS:
        redeemed_caps = sum(o["max_discount"] for o in redeemers.values()
                            if o["promotion_id"] == promotion)
        assert spent[promotion] == pytest.approx(redeemed_caps)
    # The bandit learned from the rewards of its arm and checkpointed what it learned.
    learnable = [r for r in rewards if r["arm"] == "learned" and r["reason"] == "window_closed"]
    assert checkpoint["bandit"][MERCHANT]["updates"] == len(learnable) > 0
    # Per-customer limit: no customer holds two offers of one promotion.
    per_customer = Counter((o["customer_id"], o["promotion_id"]) for o in offers)
    assert max(per_customer.values()) == 1
