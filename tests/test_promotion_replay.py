"""A seeded replay of cart events through the promotion policy, as the pipeline feeds it (micro-
batches, cart generations, offers recorded after each batch, windows closed and learned from
between batches): every cart event gets exactly one decision record, and the offers and actions
are those recorded in ``tests/data/promo_replay.json`` (written by the policy before decision
records for repeats existed: logging repeats changes nothing that is decided; written again
when the context features gained ``churn_risk``, which changes the bandit's propensities).

``python -m tests.test_promotion_replay`` rewrites the file (only when a change of what is
decided is intended and explained)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from streams.decisions import DecisionContext
from streams.promotion import rewards
from streams.promotion.policy import PromotionPolicy
from streams.state import customer_state
from tests.promo_fixtures import HOUR, T0, shop

EXPECTED = Path(__file__).parent / "data" / "promo_replay.json"
CUSTOMERS = 40
BATCHES = 30
PRODUCTS = ("A1", "B2", "C3")


class Signals:
    coupon_product_id = "SKU9"
    coupon_probability = 0.4
    purchase_propensity = 0.6
    coupon_price = 20.0


def _signals(contexts):
    return [Signals() if ctx.cart_event_id.endswith(("1", "4")) else None for ctx in contexts]


def replay() -> tuple[list[dict], list[dict]]:
    """(one row per cart event: its id, offer key and the decision it got; the records logged)."""
    rng = np.random.default_rng(7)
    policy = PromotionPolicy(signals=_signals, seed=3)
    merchant = shop()
    states = {f"shop:c:{i}": customer_state.new_state() for i in range(CUSTOMERS)}
    rows, records = [], []
    ts = T0
    for b in range(BATCHES):
        contexts = []
        for n, key in enumerate(rng.choice(sorted(states), size=12, replace=True)):
            ts += float(rng.uniform(300, 3000))
            state = states[key]
            if state["cart"]["lines"] and rng.random() < 0.15:  # an order: a new cart next
                order = {
                    "event_id": f"o{b}-{n}", "event_type": "order", "order_id": f"o{b}-{n}",
                    "lines": [{"product_id": p, "quantity": q, "unit_price": u}
                              for p, q, u in state["cart"]["lines"]],
                    "total": state["cart"]["value"], "currency": "GBP", "_ts": ts,
                }  # fmt: skip
                customer_state.apply_event(state, "orders", order)
                rewards.on_order(state, order)
                customer_state.apply_event(
                    state, "cart", {"event_id": f"x{b}-{n}", "event_type": "checkout",
                                    "lines": [], "cart_value": 0.0, "currency": "GBP", "_ts": ts}
                )  # fmt: skip
                continue
            lines = [
                {"product_id": p, "quantity": int(rng.integers(1, 3)), "unit_price": 40.0}
                for p in PRODUCTS[: int(rng.integers(1, 4))]
            ]
            value = sum(line["quantity"] * line["unit_price"] for line in lines)
            event_id = f"e{b}-{n}"
            event = {
                "event_id": event_id, "event_type": "cart_add", "lines": lines,
                "cart_value": value, "currency": "GBP", "_ts": ts,
            }  # fmt: skip
            customer_state.apply_event(state, "cart", event)
            generation = state["cart"]["generation"]
            contexts.append(
                DecisionContext(merchant, key, state, value, "GBP", ts, event_id, generation)
            )
        offers = policy.decide_batch(contexts)
        batch_records, evicted = policy.drain_records()
        records += batch_records
        by_event = {r["cart_event_id"]: r for r in batch_records}
        for ctx, offer in zip(contexts, offers, strict=True):
            record = by_event.get(ctx.cart_event_id)
            new = record is not None and not record.get("repeat_of")
            rows.append(
                {
                    "cart_event_id": ctx.cart_event_id,
                    "offer": offer.key if offer is not None else None,
                    "decision": [record["action"], record["propensity"], record["sent"]]
                    if new
                    else None,
                }
            )
            if offer is not None:
                customer_state.record_offer(ctx.state, ctx.generation, offer.key, "o", ts)
        closed = evicted
        for state in states.values():
            if "promo" in state:
                closed += rewards.close_due(state, ts - 2 * HOUR)
        policy.learn(closed)
    return rows, records


def test_every_cart_event_gets_one_record_and_the_decisions_stay_the_same():
    rows, records = replay()
    ids = [r["decision_id"] for r in records]
    assert len(ids) == len(set(ids)) == len(rows)
    assert [r["cart_event_id"] for r in records] == [row["cart_event_id"] for row in rows]
    repeats = [r for r in records if r["repeat_of"]]
    assert repeats and len(repeats) < len(records)
    assert json.loads(EXPECTED.read_text()) == rows


if __name__ == "__main__":
    EXPECTED.write_text(json.dumps(replay()[0], indent=0) + "\n")
