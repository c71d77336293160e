"""The promotion policy in the real worker (``NEXTBEST_POLICY=promotion``): decision log,
rewards, budgets and caps through replays and a restart, on the real embedded broker."""

from __future__ import annotations

import time
import urllib.request
from collections import Counter

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from agents.runtime.topics import key_partition
from tests.harness import Cluster, cart_add, event, order_placed

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
    return cart_add(
        f"cart-{i}",
        value,
        customer=f"c{i}",
        merchant=MERCHANT,
        time=when(0),
        product=f"P{i % 7}",
        unit_price=value,
    )


def order(i: int, total: float) -> dict:
    return order_placed(
        f"order-{i}", f"O{i}", total, f"P{i % 7}", customer=f"c{i}", merchant=MERCHANT, time=when(1)
    )


def read_topic(
    cluster: Cluster, topic: str, timeout: float = 90
) -> list[tuple[bytes, bytes | None]]:
    """Every record of ``topic``, up to each partition's end as the broker's fetch responses
    report it (partition EOF: Tansu's ListOffsets under-reports, and a pause between records
    says nothing on a loaded machine)."""
    consumer = Consumer(
        {
            **cluster.settings.kafka_client_config(),
            "group.id": "test-ledgers",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    records, at_end = [], set()
    deadline = time.monotonic() + timeout
    try:
        while len(at_end) < len(partitions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: partitions {set(partitions) - at_end} not read")
            for m in consumer.consume(500, 0.25):
                if m.error() is None:
                    records.append((m.key(), m.value()))
                    at_end.discard(m.partition())
                elif m.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(m.partition())
    finally:
        consumer.close()
    return records


def metric(port: int, line_start: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)
    )


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
            follow_up.append(
                (
                    "feedback",
                    event(
                        "offer_redeemed",
                        f"fb-{customer}",
                        customer=customer,
                        merchant=MERCHANT,
                        time=when(1),
                        offer_id=offer["offer_id"],
                    ),
                )
            )
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
        late = [
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
            for i in range(0, CUSTOMERS, 2)
        ]
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
        i = int(d["customer_key"].rsplit(":c", 1)[1])
        assert d["cart_products"] == [f"P{i % 7}"] and d["country"] is None  # no profile sent

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
    for customer, reward in by_customer.items():  # the order's one line, for the report
        bought = [{"product_id": f"P{int(customer[1:]) % 7}", "value": reward["revenue"]}]
        assert reward["order_products"] == (bought if reward["purchased"] else None)

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
        redeemed_caps = sum(
            o["max_discount"] for o in redeemers.values() if o["promotion_id"] == promotion
        )
        assert spent[promotion] == pytest.approx(redeemed_caps)
    # The bandit learned from the rewards of its arm and checkpointed what it learned.
    learnable = [r for r in rewards if r["arm"] == "learned" and r["reason"] == "window_closed"]
    assert checkpoint["bandit"][MERCHANT]["updates"] == len(learnable) > 0
    # Per-customer limit: no customer holds two offers of one promotion.
    per_customer = Counter((o["customer_id"], o["promotion_id"]) for o in offers)
    assert max(per_customer.values()) == 1


# --- budgets and per-customer limits across a restart -----------------------------------------

CAPS_MERCHANTS = """\
merchants:
  budget-shop:
    currency: GBP
    shipping_cost: 5
    margin_rate: 0.4
    offer_ttl_hours: 48
    channel_order: [email]
    promotions:
      - {id: ship-budget, type: free_shipping, min_spend: 40, budget: 40}
  cap-shop:
    currency: GBP
    shipping_cost: 5
    margin_rate: 0.4
    offer_ttl_hours: 48
    channel_order: [email]
    promotions:
      - {id: ship-capped, type: free_shipping, min_spend: 40, max_per_customer: 2}
"""
# Every cart is offered free shipping when the guard rails allow it (propensity 1, no holdout).
CAPS_EXPERIMENT = {
    "id": "caps-1",
    "holdout": 0.0,
    "arms": [{"name": "static", "weight": 1, "variant": "static:free_shipping"}],
}
SHIP_BUDGET, SHIP_COST, SHIP_LIMIT = 40.0, 5.0, 2
CART_VALUE = 45.0  # above both promotions' minimum spend: only a guard rail can say no


def shop_cart(merchant: str, customer: str, event_id: str, hours: float) -> dict:
    return cart_add(
        event_id,
        CART_VALUE,
        customer=customer,
        merchant=merchant,
        time=when(hours),
        product="P1",
        unit_price=CART_VALUE,
    )


def checkout(merchant: str, customer: str, event_id: str, hours: float) -> dict:
    return event(
        "checkout",
        event_id,
        customer=customer,
        merchant=merchant,
        time=when(hours),
        lines=[],
        cart_value=0.0,
        currency="GBP",
    )


def blocked(port: int, reason: str) -> float:
    return metric(port, f'nextbest_promo_blocked_actions_total{{reason="{reason}"}}')


def test_budgets_and_customer_limits_bind_after_a_restart(tmp_path):
    """A worker that exhausted a budget and capped customers is stopped; the workers after it
    (on an empty state directory, then on the first one's stale directory) get new carts, with
    new event ids, from new customers and from the capped ones: the recovered ledgers and
    customer states must refuse them all, for the right reason."""
    cluster = Cluster(tmp_path)
    partitions = cluster.settings.partitions
    share = SHIP_BUDGET / partitions
    per_partition = int(share // SHIP_COST)  # offers one partition's share pays for
    # New budget-shop customers, per input partition: per_partition + 1 before the stop (the
    # last one is refused), 2 after each restart (all refused).
    by_partition: dict[int, list[str]] = {p: [] for p in range(partitions)}
    i = 0
    while min(len(names) for names in by_partition.values()) < per_partition + 5:
        p = key_partition(f"budget-shop:c:b{i}", partitions)
        by_partition[p].append(f"b{i}")
        i += 1
    before = [c for names in by_partition.values() for c in names[: per_partition + 1]]
    after_b = [c for names in by_partition.values() for c in names[per_partition + 1 :][:2]]
    after_a = [c for names in by_partition.values() for c in names[per_partition + 3 :][:2]]
    capped = [f"k{j}" for j in range(4)]  # two offers each before the stop
    fresh_b, fresh_a = ["f0", "f1"], ["f2", "f3"]  # cap-shop controls: offered after restarts

    def send_all(values: list[dict]) -> None:
        for value in values:
            cluster.send("cart", value)
        cluster.flush()

    def second_carts(customers: list[str], tag: str, hours: float) -> list[dict]:
        """A checkout, then a new cart (a new cart generation: a new decision)."""
        return [
            value
            for c in customers
            for value in (
                checkout("cap-shop", c, f"{tag}-out-{c}", hours),
                shop_cart("cap-shop", c, f"{tag}-cart-{c}", hours),
            )
        ]

    try:
        cluster.use_promotion(CAPS_MERCHANTS, CAPS_EXPERIMENT)
        port_a = cluster.start_worker("a")
        first = [shop_cart("budget-shop", c, f"cart-{c}", 0) for c in before]
        first += [shop_cart("cap-shop", c, f"cart-{c}", 0) for c in capped]
        send_all(first)
        cluster.wait_processed(len(first))
        second = second_carts(capped, "again", 1)
        send_all(second)
        cluster.wait_processed(len(first) + len(second))
        decisions_a = len(before) + 2 * len(capped)
        cluster.read("decisions", min_count=decisions_a, settle=0.3)  # all decided
        blocked_a = {r: blocked(port_a, r) for r in ("budget", "customer_limit")}
        cluster.stop_worker("a")

        # Restart on an empty state directory: the tables come back from their changelogs.
        port_b = cluster.start_worker("b")
        third = [shop_cart("budget-shop", c, f"cart-{c}", 2) for c in after_b]
        third += second_carts(capped, "b", 2)
        third += [shop_cart("cap-shop", c, f"cart-{c}", 2) for c in fresh_b]
        send_all(third)
        cluster.wait_processed(len(third))
        decisions_b = decisions_a + len(after_b) + len(capped) + len(fresh_b)
        cluster.read("decisions", min_count=decisions_b, settle=0.3)
        blocked_b = {r: blocked(port_b, r) for r in ("budget", "customer_limit")}
        cluster.stop_worker("b")

        # Restart on the first worker's directory, stale since its stop: it catches up.
        port_a = cluster.start_worker("a2", state_dir="state-a")
        fourth = [shop_cart("budget-shop", c, f"cart-{c}", 3) for c in after_a]
        fourth += second_carts(capped, "a2", 3)
        fourth += [shop_cart("cap-shop", c, f"cart-{c}", 3) for c in fresh_a]
        send_all(fourth)
        cluster.wait_processed(len(fourth))
        decisions_all = decisions_b + len(after_a) + len(capped) + len(fresh_a)
        decisions = cluster.read("decisions", min_count=decisions_all)
        blocked_a2 = {r: blocked(port_a, r) for r in ("budget", "customer_limit")}
        offers_all = partitions * per_partition + SHIP_LIMIT * len(capped) + len(fresh_b + fresh_a)
        offers = cluster.read("promotions", min_count=offers_all)
        changelog = f"{cluster.settings.app_id}-promo-ledgers-changelog"
        ledgers = {
            key.decode(): orjson.loads(value) for key, value in read_topic(cluster, changelog)
        }
        assert "Traceback" not in cluster.log("a") + cluster.log("b") + cluster.log("a2")
    finally:
        cluster.close()

    by_cart = {d["cart_event_id"]: d for d in decisions}
    assert len(decisions) == len(by_cart) == decisions_all  # every cart decided, once
    assert all(d["policy"] == "static:free_shipping" and d["arm"] == "static" for d in decisions)

    # Before the stop the budget bound: each partition's share paid for per_partition offers,
    # the next customer of the partition was refused; nobody hit the customer limit yet.
    assert blocked_a == {"budget": partitions, "customer_limit": 0}
    # After each restart every new cart of the budgeted promotion is refused for its budget, and
    # every capped customer's new cart for the limit; the fresh cap-shop customers are offered.
    assert blocked_b == {"budget": len(after_b), "customer_limit": len(capped)}
    assert blocked_a2 == {"budget": len(after_a), "customer_limit": len(capped)}

    def options(event_id: str) -> list[str]:
        return [o["action"] for o in by_cart[event_id]["options"]]

    refused = [f"cart-{names[per_partition]}" for names in by_partition.values()]
    refused += [f"cart-{c}" for c in after_b + after_a]
    refused += [f"{tag}-cart-{c}" for tag in ("b", "a2") for c in capped]
    for event_id in refused:
        assert not by_cart[event_id]["sent"] and by_cart[event_id]["action"] == "none"
        assert options(event_id) == ["none"]  # the guard rail took free shipping out
    for c in fresh_b + fresh_a + capped:
        assert by_cart[f"cart-{c}"]["sent"], c  # the same cart is offered where nothing binds
    for c in capped:
        assert by_cart[f"again-cart-{c}"]["sent"], c  # the second offer, within the limit

    # The offers over all three workers: the budget never exceeded, exactly spent out, share by
    # share; no customer above the limit.
    budget_offers = [o for o in offers if o["promotion_id"] == "ship-budget"]
    assert sum(o["max_discount"] for o in budget_offers) == pytest.approx(SHIP_BUDGET)
    per_share = Counter(
        key_partition(f"budget-shop:c:{o['customer_id']}", partitions) for o in budget_offers
    )
    assert per_share == dict.fromkeys(range(partitions), per_partition)
    offered = {o["customer_id"] for o in budget_offers}
    assert offered == {c for names in by_partition.values() for c in names[:per_partition]}
    capped_offers = Counter(o["customer_id"] for o in offers if o["promotion_id"] == "ship-capped")
    assert capped_offers == {
        **dict.fromkeys(capped, SHIP_LIMIT),
        **dict.fromkeys(fresh_b + fresh_a, 1),
    }

    # The ledgers hold the reservations of exactly those offers, and no refused decision.
    budget_ledgers = {k: v for k, v in ledgers.items() if k.startswith("budget-shop:")}
    assert set(budget_ledgers) == {f"budget-shop:ship-budget:{p}" for p in range(partitions)}
    reserved = {d for ledger in budget_ledgers.values() for d in ledger["open"]}
    assert reserved == {by_cart[f"cart-{c}"]["decision_id"] for c in offered}
    for ledger in budget_ledgers.values():
        assert ledger["budget"] == share and ledger["reserved"] == pytest.approx(share)
        assert ledger["spent"] == 0 and not ledger["closed"]
