"""Context features of a cart decision: a pure function of the customer's state and the cart.

The promotion policy's response model reads these, and every decision logs them (feature set
``FEATURE_SET``), so the uplift model can be rebuilt from the decision log. Each feature is a
fixed transform (log1p scaled to roughly [0, 1], rates, indicators), so no scaler has to be
fitted and stored. A customer with no history gets zeros plus ``has_orders = 0``.

Next-purchase model outputs are optional inputs: anything with the attributes
``purchase_propensity`` and ``coupon_probability``
(e.g. ``models.next_purchase.serving.ModelSignals``); without them the two features are 0 and
``has_signals`` is 0.
"""

from __future__ import annotations

import math
from typing import Protocol

from streams.state import churn

DAY_S = 86400.0
FEATURE_SET = "promo-features/2"
FEATURE_NAMES = (
    "has_orders",  # 1 if the customer has ordered before
    "recency",  # log1p(days since the last order) / log1p(365), 1 without orders
    "frequency",  # log1p(orders) / log1p(100)
    "monetary",  # log1p(average order value) / 10
    "tenure",  # log1p(days since the first order) / log1p(365)
    "cart_value",  # log1p(cart value) / 10
    "cart_vs_usual",  # log(cart value / average order value) / 3, clipped to [-1, 1]
    "cart_lines",  # log1p(distinct products in the cart) / log1p(200)
    "cart_units",  # log1p(units in the cart) / 10
    "session_events",  # log1p(events in the current session) / log1p(200)
    "sessions",  # log1p(sessions) / log1p(1000)
    "recent_views",  # recently viewed products / 20
    "offers_received",  # log1p(offers received) / log1p(100)
    "redeem_rate",  # (redeemed + 0.1) / (received + 1)
    "open_rate",  # (opened + clicked + 0.1) / (delivered + 1), clipped to 1
    "dismiss_rate",  # (dismissed) / (delivered + 1)
    "days_since_offer",  # log1p(days since the last offer) / log1p(365), 1 without one
    "has_signals",  # 1 if next-purchase outputs were given
    "propensity",  # next-purchase propensity (P(next pick is a recommended product))
    "coupon_probability",  # P(next pick is the coupon candidate)
    "churn_risk",  # P(no order within 90 days), streams.state.churn; 0 without orders
)
#: the names of every feature set a decision log may hold: older logs stay readable
FEATURE_SETS = {"promo-features/1": FEATURE_NAMES[:-1], FEATURE_SET: FEATURE_NAMES}
_LOG_YEAR = math.log1p(365.0)


class NextPurchaseSignals(Protocol):
    """What the next-purchase model provides per cart
    (``models.next_purchase.serving.ModelSignals``)."""

    @property
    def purchase_propensity(self) -> float | None: ...

    @property
    def coupon_probability(self) -> float | None: ...


def _days(ts: float, then: float | None) -> float | None:
    return None if then is None else max(ts - then, 0.0) / DAY_S


def _log_scaled(value: float, scale: float) -> float:
    return math.log1p(max(value, 0.0)) / scale


def _unit(value: float | None) -> float:
    if value is None or not math.isfinite(value):
        return 0.0
    return min(max(float(value), 0.0), 1.0)


def context_features(
    state: dict,
    cart_value: float,
    ts: float,
    signals: NextPurchaseSignals | None = None,
) -> list[float]:
    """``FEATURE_NAMES`` for one cart decision, as floats."""
    rfm = state.get("rfm") or {}
    frequency = rfm.get("frequency") or 0
    has_orders = frequency > 0 and rfm.get("last") is not None
    average_order = max(rfm.get("monetary", 0.0), 0.0) / frequency if frequency else 0.0
    since_last = _days(ts, rfm.get("last")) if has_orders else None
    since_first = _days(ts, rfm.get("first")) if has_orders else None
    cart = state.get("cart") or {}
    lines = cart.get("lines") or []
    units = sum(max(line[1], 0) for line in lines)
    session = state.get("session") or {}
    offers = state.get("offers") or {}
    received = offers.get("received", 0)
    delivered = offers.get("delivered", 0)
    last_offer = (offers.get("last") or {}).get("ts")
    since_offer = _days(ts, last_offer)
    if has_orders and average_order > 0 and cart_value > 0:
        cart_vs_usual = max(-1.0, min(1.0, math.log(cart_value / average_order) / 3.0))
    else:
        cart_vs_usual = 0.0
    propensity = getattr(signals, "purchase_propensity", None) if signals is not None else None
    coupon = getattr(signals, "coupon_probability", None) if signals is not None else None
    return [
        1.0 if has_orders else 0.0,
        1.0 if since_last is None else min(_log_scaled(since_last, _LOG_YEAR), 1.5),
        _log_scaled(frequency, math.log1p(100.0)),
        _log_scaled(average_order, 10.0),
        0.0 if since_first is None else min(_log_scaled(since_first, _LOG_YEAR), 1.5),
        _log_scaled(cart_value, 10.0),
        cart_vs_usual,
        _log_scaled(len(lines), math.log1p(200.0)),
        _log_scaled(units, 10.0),
        _log_scaled(session.get("events", 0), math.log1p(200.0)),
        _log_scaled(state.get("sessions", 0), math.log1p(1000.0)),
        min(len(state.get("views") or []), 20) / 20.0,
        _log_scaled(received, math.log1p(100.0)),
        (offers.get("redeemed", 0) + 0.1) / (received + 1.0),
        min((offers.get("opened", 0) + offers.get("clicked", 0) + 0.1) / (delivered + 1.0), 1.0),
        min(offers.get("dismissed", 0) / (delivered + 1.0), 1.0),
        1.0 if since_offer is None else min(_log_scaled(since_offer, _LOG_YEAR), 1.5),
        0.0 if signals is None else 1.0,
        _unit(propensity),
        _unit(coupon),
        churn.risk(state, ts) or 0.0,
    ]
