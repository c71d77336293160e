"""Reward join: attribution window, redemption beats last touch, superseded decisions, profit
per offer kind, idempotency, order independence of feedback and orders."""

from __future__ import annotations

import copy

import pytest

from streams.promotion import rewards
from streams.state.customer_state import new_state
from tests.promo_fixtures import HOUR, T0

WINDOW = 48 * HOUR


def decision(decision_id: str, action_kind: str = "percent_off", sent: bool = True, **fields):
    record = {
        "decision_id": decision_id,
        "merchant_id": "shop",
        "customer_key": "shop:c:1",
        "experiment": "e",
        "arm": "learned",
        "policy": "linear-ts",
        "model_version": "v",
        "action": f"{action_kind}:p" if action_kind != "none" else "none",
        "action_kind": action_kind,
        "promotion_id": "p" if action_kind != "none" else None,
        "product_id": None,
        "propensity": 0.5,
        "sent": sent,
        "offer_id": f"offer-{decision_id}" if sent else None,
        "max_discount": 100.0 if sent else None,
        "feature_set": "promo-features/1",
        "features": [0.0],
        "event_time": "2012-01-02T00:00:00Z",
    }
    record.update(fields)
    return record


TERMS = {
    "tier_type": "percent_off",
    "percent": 10.0,
    "shipping_cost": 5.0,
    "margin_rate": 0.4,
    "ledger_key": None,
}


def order(order_id: str, ts: float, total: float, lines: dict | None = None) -> dict:
    lines = lines or {"A": total}
    return {
        "event_type": "order",
        "order_id": order_id,
        "total": total,
        "_ts": ts,
        "lines": [{"product_id": p, "quantity": 1, "unit_price": v} for p, v in lines.items()],
    }


def feedback(kind: str, decision_id: str, ts: float) -> dict:
    return {"event_type": f"offer_{kind}", "offer_id": f"offer-{decision_id}", "_ts": ts}


def test_redeemed_percent_off_order_in_the_window():
    state = new_state()
    rewards.open_decision(state, decision("d1"), T0, WINDOW, TERMS)
    assert rewards.next_due(state) == T0 + WINDOW
    assert rewards.on_feedback(state, feedback("delivered", "d1", T0 + 60), None) == "d1"
    rewards.on_feedback(state, feedback("redeemed", "d1", T0 + HOUR), None)
    assert rewards.on_order(state, order("o1", T0 + HOUR, 90.0))
    assert not rewards.on_order(state, order("o1", T0 + HOUR, 90.0))  # repeated order
    assert rewards.close_due(state, T0 + WINDOW - 1) == []
    (reward,) = rewards.close_due(state, T0 + WINDOW)
    assert reward["purchased"] and reward["redeemed"] and reward["delivered"]
    assert not reward["opened"]
    assert (reward["revenue"], reward["discount_cost"], reward["gross"]) == (90.0, 10.0, 100.0)
    assert reward["profit"] == pytest.approx(0.4 * 100 - 10)
    assert (reward["reason"], reward["order_id"], reward["record"]) == (
        "window_closed",
        "o1",
        "reward",
    )
    assert reward["order_products"] == [{"product_id": "A", "value": 90.0}]
    assert rewards.learnable(reward)
    assert rewards.close_due(state, T0 + 10 * WINDOW) == []  # once only
    assert rewards.next_due(state) is None
    # a replayed decision after its reward is ignored
    assert rewards.open_decision(state, decision("d1"), T0, WINDOW, TERMS) == []
    assert rewards.close_due(state, T0 + 10 * WINDOW) == []


def test_order_without_redemption_and_no_order():
    state = new_state()
    rewards.open_decision(state, decision("d1"), T0, WINDOW, TERMS)
    rewards.on_order(state, order("o1", T0 + HOUR, 90.0))
    (reward,) = rewards.close_due(state, T0 + WINDOW)
    assert reward["purchased"] and not reward["redeemed"]
    assert (reward["discount_cost"], reward["profit"]) == (0.0, pytest.approx(36.0))
    assert reward["order_products"] == [{"product_id": "A", "value": 90.0}]
    state = new_state()
    rewards.open_decision(state, decision("d2"), T0, WINDOW, TERMS)
    rewards.on_order(state, order("late", T0 + WINDOW + 1, 90.0))  # after the window
    (reward,) = rewards.close_due(state, T0 + WINDOW)
    assert not reward["purchased"] and reward["profit"] == 0.0
    assert reward["order_products"] is None


def test_profit_per_offer_kind_and_cap():
    cases = [
        ("free_shipping", {**TERMS, "tier_type": "free_shipping"}, {}, 100.0, 5.0, 100.0),
        ("threshold_nudge", {**TERMS, "tier_type": "free_shipping"}, {}, 100.0, 5.0, 100.0),
        ("threshold_nudge", {**TERMS, "percent": 20.0}, {}, 80.0, 20.0, 100.0),
        ("percent_off", {**TERMS, "percent": 20.0}, {"max_discount": 12.0}, 80.0, 12.0, 92.0),
        (
            "product_coupon",
            {**TERMS, "tier_type": "product_coupon", "percent": 20.0},
            {"product_id": "SKU"},
            96.0,
            2.0,
            98.0,
        ),
    ]
    for kind, terms, fields, total, discount, gross in cases:
        state = new_state()
        rewards.open_decision(state, decision("d", kind, **fields), T0, WINDOW, terms)
        rewards.on_feedback(state, feedback("redeemed", "d", T0 + 1), None)
        rewards.on_order(state, order("o", T0 + 2, total, {"A": 88.0, "SKU": 10.0}))
        (reward,) = rewards.close_due(state, T0 + WINDOW)
        assert (reward["discount_cost"], reward["gross"]) == (discount, gross), kind
        assert reward["profit"] == pytest.approx(0.4 * gross - discount), kind


def test_redemption_beats_last_touch_and_superseded_decisions():
    state = new_state()
    rewards.open_decision(state, decision("d1"), T0, WINDOW, TERMS)
    rewards.open_decision(state, decision("d2", "none", sent=False), T0 + HOUR, WINDOW, TERMS)
    rewards.on_feedback(state, feedback("redeemed", "d1", T0 + 2 * HOUR), None)
    rewards.on_order(state, order("o1", T0 + 2 * HOUR, 90.0))
    first = rewards.close_due(state, T0 + WINDOW)
    second = rewards.close_due(state, T0 + WINDOW + HOUR)
    assert [r["decision_id"] for r in first + second] == ["d1", "d2"]
    assert first[0]["purchased"] and first[0]["order_id"] == "o1"
    assert not second[0]["purchased"] and second[0]["reason"] == "window_closed"
    # without a redemption the latest decision before the order takes it; the earlier one
    # (a newer decision came within its window, and the order went to it) is superseded
    state = new_state()
    rewards.open_decision(state, decision("d1"), T0, WINDOW, TERMS)
    rewards.open_decision(state, decision("d2"), T0 + HOUR, WINDOW, TERMS)
    rewards.on_order(state, order("o1", T0 + 2 * HOUR, 90.0))
    first = rewards.close_due(state, T0 + WINDOW)
    assert first[0]["reason"] == "superseded" and not rewards.learnable(first[0])
    (second,) = rewards.close_due(state, T0 + WINDOW + HOUR)
    assert second["purchased"] and second["order_id"] == "o1"


def test_feedback_after_the_order_gives_the_same_reward():
    events = [
        ("feedback", feedback("delivered", "d1", T0 + 60)),
        ("feedback", feedback("redeemed", "d1", T0 + 2 * HOUR)),
        ("order", order("o1", T0 + HOUR, 90.0)),
    ]

    def reward_of(sequence) -> dict:
        state = new_state()
        rewards.open_decision(state, decision("d1"), T0, WINDOW, TERMS)
        for kind, event in sequence:
            if kind == "order":
                rewards.on_order(state, event)
            else:
                rewards.on_feedback(state, event, None)
        (reward,) = rewards.close_due(state, T0 + WINDOW)
        return reward

    assert reward_of(events) == reward_of(list(reversed(events)))


def test_unknown_offer_feedback_is_ignored_and_holdout_is_not_learned():
    state = new_state()
    rewards.open_decision(state, decision("d1", sent=False, arm="holdout"), T0, WINDOW, TERMS)
    assert rewards.on_feedback(state, feedback("opened", "zzz", T0), None) is None
    (reward,) = rewards.close_due(state, T0 + WINDOW)
    assert reward["arm"] == "holdout" and not rewards.learnable(reward)


def test_full_windows_evict_the_oldest():
    state = new_state()
    evicted = []
    for k in range(rewards.MAX_PENDING + 2):
        evicted += rewards.open_decision(state, decision(f"d{k}"), T0 + k, WINDOW, TERMS)
    assert [r["decision_id"] for r in evicted] == ["d0", "d1"]
    assert all(r["reason"] == "evicted" and not rewards.learnable(r) for r in evicted)
    assert len(state["promo"]["pending"]) == rewards.MAX_PENDING


def test_state_survives_json_and_due_index():
    import json

    state = new_state()
    rewards.open_decision(state, decision("d1"), T0, WINDOW, TERMS)
    rewards.on_order(state, order("o1", T0 + 1, 90.0))
    restored = json.loads(json.dumps(state))
    assert rewards.close_due(copy.deepcopy(restored), T0 + WINDOW) == rewards.close_due(
        state, T0 + WINDOW
    )
