"""Shared data for the promotion-policy tests: a small merchant and cart contexts."""

from __future__ import annotations

from streams.decisions import DecisionContext
from streams.merchants.catalog import Merchant, parse_merchant
from streams.state.customer_state import apply_event, new_state

T0 = 1_325_462_400.0  # 2012-01-02 00:00 UTC
HOUR = 3600.0

SHOP = {
    "currency": "GBP",
    "shipping_cost": 5.0,
    "nudge_max_gap": 50,
    "margin_rate": 0.4,
    "offer_ttl_hours": 48,
    "promotions": [
        {"id": "fs", "type": "free_shipping", "min_spend": 30},
        {"id": "p10", "type": "percent_off", "percent": 10, "min_spend": 0},
        {"id": "p15", "type": "percent_off", "percent": 15, "min_spend": 200},
        {"id": "coupon", "type": "product_coupon", "percent": 20, "max_discount": 5},
    ],
}


def shop(**changes: object) -> Merchant:
    return parse_merchant("shop", {**SHOP, **changes})


def cart_state(value: float, ts: float = T0, event_id: str = "cart-1", state: dict | None = None):
    state = state if state is not None else new_state()
    apply_event(
        state,
        "cart",
        {
            "event_id": event_id,
            "event_type": "cart_add",
            "lines": [{"product_id": "A1", "quantity": 2, "unit_price": value / 2}],
            "cart_value": value,
            "currency": "GBP",
            "_ts": ts,
        },
    )
    return state


def context(
    merchant: Merchant,
    value: float,
    customer: str = "1",
    ts: float = T0,
    event_id: str = "cart-1",
    state: dict | None = None,
) -> DecisionContext:
    state = cart_state(value, ts, event_id, state)
    return DecisionContext(merchant, f"shop:c:{customer}", state, value, "GBP", ts, event_id)
