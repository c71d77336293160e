"""A seeded replay decides what it decided before the promotion path was made cheaper.

`replay` drives `PromotionPolicy.decide` the way the worker does (micro-batches of carts of two
merchants, guard rails with budgets, holdout and rules arms, next-purchase signals on some carts,
offers recorded on the customer's state after each batch, rewards learned into per-partition
statistics with `PartitionedLearning` between batches) and returns every choice a variant made,
with its full-precision propensity and probabilities. ``tests/data/promotion_seeded_replay.json``
holds what the code before the batched promotion path (commit 3702f90) returned; it was written
with ``python -m tests.test_promotion_seeded_replay`` run on that commit's ``streams/promotion``,
and written again by the same command when the context features gained ``churn_risk``
(``promo-features/2``): a new feature changes the bandit's draws, so from then on the fixture holds
what the batched path decided with that feature (it was unchanged before the feature was added).
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from schemas.keys import decision_id_for
from streams.decisions import DecisionContext
from streams.merchants.catalog import Merchant, parse_merchant
from streams.promotion.experiments import Arm, Experiment
from streams.promotion.policy import PartitionedLearning, PromotionPolicy
from streams.state import customer_state
from tests.promo_fixtures import HOUR, SHOP, T0

FIXTURE = Path(__file__).parent / "data" / "promotion_seeded_replay.json"
PARTITIONS = 4
ROUNDS = 16
CARTS = 60
CUSTOMERS = 60
MERCHANTS = {
    "shop": {
        **SHOP,
        "promotions": [
            {"id": "fs", "type": "free_shipping", "min_spend": 30, "budget": 60},
            {"id": "p10", "type": "percent_off", "percent": 10, "min_spend": 0},
            {"id": "p15", "type": "percent_off", "percent": 15, "min_spend": 200, "budget": 90},
            {"id": "coupon", "type": "product_coupon", "percent": 20, "max_discount": 5},
        ],
    },
    "gifts": {
        **SHOP,
        "nudge_max_gap": 80,
        "margin_rate": 0.35,
        "promotions": [
            {"id": "ship-50", "type": "free_shipping", "min_spend": 50},
            {"id": "five-150", "type": "percent_off", "percent": 5, "min_spend": 150},
            {"id": "ten-300", "type": "percent_off", "percent": 10, "min_spend": 300},
            {"id": "twenty-600", "type": "percent_off", "percent": 20, "min_spend": 600},
        ],
    },
}


class Signals:
    """Next-purchase signals of a customer, from a hash of their key."""

    def __init__(self, customer_key: str) -> None:
        h = zlib.crc32(customer_key.encode())
        self.coupon_product_id = f"SKU{h % 13}"
        self.coupon_probability = (h % 97) / 200.0
        self.purchase_propensity = min(3.0 * self.coupon_probability, 1.0)
        self.coupon_price = 4.0 + h % 30


def signals(contexts: list[DecisionContext]) -> list[Signals | None]:
    return [
        Signals(c.customer_key) if zlib.crc32(c.customer_key.encode()) % 3 else None
        for c in contexts
    ]


def partition_of(customer_key: str) -> int:
    return zlib.crc32(customer_key.encode()) % PARTITIONS


def replay() -> list[dict]:
    """Every choice of a seeded replay, in decision order."""
    merchants: dict[str, Merchant] = {m: parse_merchant(m, c) for m, c in MERCHANTS.items()}
    experiment = Experiment(
        id="replay",
        holdout=0.1,
        arms=(Arm("learned", 3.0, "bandit"), Arm("rules", 1.0, "rules")),
    )
    policy = PromotionPolicy(
        experiment=experiment,
        partitions=PARTITIONS,
        partition_of=partition_of,
        signals=signals,
        seed=11,
    )
    learning = PartitionedLearning(policy)
    choices: list[dict] = []
    spy_on_choices(policy, choices)
    rng = np.random.default_rng(2024)
    states: dict[str, dict] = {}
    event_ids = iter(range(1_000_000))
    for round_ in range(ROUNDS):
        ts = T0 + round_ * 6 * HOUR
        contexts = []
        for _ in range(CARTS):
            merchant = merchants["shop" if rng.random() < 0.6 else "gifts"]
            key = f"{merchant.id}:c:{rng.integers(CUSTOMERS)}"
            state = states.setdefault(key, customer_state.new_state())
            ts += float(rng.integers(1, 120))
            if rng.random() < 0.15:  # an order some time ago: history features
                order = {
                    "event_id": f"o{next(event_ids)}",
                    "event_type": "order_placed",
                    "order_id": f"o{next(event_ids)}",
                    "lines": [{"product_id": "22423", "quantity": 1, "unit_price": 20.0}],
                    "total": round(float(rng.uniform(10, 400)), 2),
                    "_ts": ts - float(rng.integers(1, 60)) * 86400.0,
                }
                customer_state.apply_event(state, "orders", order)
            kind = "checkout" if rng.random() < 0.1 else "cart_add"
            value = state["cart"]["value"] + round(float(rng.uniform(5, 250)), 2)
            event = {
                "event_id": f"e{next(event_ids)}",
                "event_type": kind,
                "lines": [{"product_id": f"P{rng.integers(30)}", "quantity": 1, "unit_price": 1.0}],
                "cart_value": value if kind == "cart_add" else 0.0,
                "currency": "GBP",
                "_ts": ts,
            }
            customer_state.apply_event(state, "cart", event)
            if kind == "cart_add":
                contexts.append(
                    DecisionContext(
                        merchant,
                        key,
                        state,
                        event["cart_value"],
                        "GBP",
                        ts,
                        event["event_id"],
                        state["cart"]["generation"],
                    )
                )
        decisions = policy.decide(contexts)
        for ctx, decision in zip(contexts, decisions, strict=True):
            if decision.offer is not None:
                customer_state.record_offer(
                    ctx.state, ctx.generation, decision.offer.key, "offer", ctx.ts
                )
        # new decisions only: a repeat's record opens no attribution window, gets no reward
        records = [d.record for d in decisions if d.record and d.record.get("repeat_of") is None]
        learning.learn([reward(record, rng) for record in records], partition_of)
    return choices


def reward(record: dict, rng: np.random.Generator) -> dict:
    purchased = bool(rng.random() < 0.3 + 0.2 * (record["action"] != "none"))
    return {
        **record,
        "reason": "window_closed",
        "purchased": purchased,
        "redeemed": purchased and record["sent"] and bool(rng.random() < 0.7),
    }


def spy_on_choices(policy: PromotionPolicy, choices: list[dict]) -> None:
    """Keep every choice a variant makes, keyed by its decision id."""
    for name, chooser in policy.variants.items():
        choose = chooser.choose

        def spy(row, rng, choose=choose, name=name):  # noqa: ANN001, ANN202
            choice = choose(row, rng)
            ctx = row.context
            choices.append(
                {
                    "decision_id": decision_id_for(ctx.customer_key, ctx.cart_event_id),
                    "variant": name,
                    "action": row.actions[choice.index].id,
                    "propensity": choice.propensity,
                    "probabilities": list(choice.probabilities),
                    "version": choice.version,
                }
            )
            return choice

        chooser.choose = spy


def test_a_seeded_replay_decides_as_before():
    expected = json.loads(FIXTURE.read_text())
    got = replay()
    assert len(got) == len(expected) > 450
    assert {c["variant"] for c in got} == {"bandit", "rules"}
    assert max(int(c["version"].rsplit(":", 1)[1]) for c in got if c["variant"] == "bandit") > 100
    for now, before in zip(got, expected, strict=True):
        assert (now["decision_id"], now["variant"], now["action"], now["version"]) == (
            before["decision_id"],
            before["variant"],
            before["action"],
            before["version"],
        )
        assert now["propensity"] == pytest.approx(before["propensity"], abs=1e-12)
        assert now["probabilities"] == pytest.approx(before["probabilities"], abs=1e-12)


if __name__ == "__main__":
    FIXTURE.write_text("[\n" + ",\n".join(json.dumps(choice) for choice in replay()) + "\n]\n")
