"""Reward join: decisions + offer feedback + orders within an attribution window -> rewards.

Pure functions over the customer's ``state["promo"]`` (see ``streams.promotion.guardrails``), which
holds,
next to the guard rails' part::

    "pending": [decision entries whose window is open, oldest first]  (at most MAX_PENDING)
    "orders":  [[ts, order_id, total, {product_id: list-price value}, attributed decision id]]
    "closed":  [ids of decisions already turned into rewards]          (last MAX_CLOSED)

The agent calls, for the customer of each event (all on the customer's partition):

* `open_decision` -- done by the promotion policy when it decides (holdout and no-offer
  decisions included);
* `on_feedback` -- delivered / opened / clicked / redeemed / dismissed, matched by offer id; a
  redemption also settles the promotion's budget ledger and counts against the customer's limit;
* `on_order` -- stored until the windows that may claim it close;
* `close_due` -- with the current event time: every decision whose window has ended becomes a
  reward (`RewardRecord` in ``schemas/events.py``). A decision id becomes a reward at most once.

`reward_windows` finds the customers whose windows ended without an event of theirs (a customer
who never comes back still gets a reward): per partition, who is due when, kept in a table so
that it survives restarts and rebalances.

Attribution: an order placed in a decision's window ``[decided, decided + window)`` belongs to
the decision whose offer it redeemed, else to the latest decision made before it; each order
counts for one decision and each decision takes its first order. A decision that got no order
but was followed by another decision within its window is ``superseded``: learning and
off-policy evaluation leave it out (its cart got a newer decision). Rewards are closed at the
window's end, not at the order, so feedback that arrives after the order (topics are not
ordered with each other) still counts.

Profit of an attributed order (``total`` is what the customer paid for the goods)::

    redeemed %-off (or a nudge to a %-off tier): discount = total * p / (100 - p), capped
    redeemed free shipping (or a nudge to it):   discount = shipping cost, capped
    redeemed product coupon: discount = p% of the product's line value in the order, capped
    gross  = total + discount (free shipping: total)
    profit = margin_rate * gross - discount          (no order: 0)
"""

from __future__ import annotations

import time
from collections.abc import Callable, MutableMapping

from schemas.keys import iso
from schemas.records import SCHEMA_VERSION
from streams.promotion import guardrails
from streams.timers import PartitionTimers, TimerStore

MAX_PENDING = 16
MAX_ORDERS = 16
MAX_CLOSED = 64
FLAGS = ("delivered", "opened", "clicked", "redeemed", "dismissed")
FEEDBACK_FLAGS = {f"offer_{flag}": flag for flag in FLAGS}


def _promo(state: dict) -> dict:
    promo = guardrails.promo_state(state)
    promo.setdefault("pending", [])
    promo.setdefault("orders", [])
    promo.setdefault("closed", [])
    return promo


def open_decision(state: dict, record: dict, ts: float, window_s: float, terms: dict) -> list[dict]:
    """Start the attribution window of a decision (a `DecisionRecord` dict) made at ``ts``.

    ``terms`` are what pricing its reward needs: ``tier_type`` (the promotion's type),
    ``percent``, ``shipping_cost``, ``margin_rate``, ``ledger_key`` (or None). Returns the
    rewards of decisions pushed out when more than ``MAX_PENDING`` are open (reason
    ``evicted``); a decision seen before is ignored.
    """
    promo = _promo(state)
    decision_id = record["decision_id"]
    if decision_id in promo["closed"] or any(
        p["decision_id"] == decision_id for p in promo["pending"]
    ):
        return []
    promo["pending"].append(
        {
            "decision_id": decision_id,
            "ts": ts,
            "expires": ts + window_s,
            "record": {k: record[k] for k in _CARRIED},
            "terms": terms,
            "flags": dict.fromkeys(FLAGS, False),
        }
    )
    promo["pending"].sort(key=lambda p: p["ts"])
    evicted = []
    while len(promo["pending"]) > MAX_PENDING:
        evicted.append(_close(promo, promo["pending"][0], ts, "evicted"))
    return evicted


def decision_made(state: dict, decision_id: str) -> dict | None:
    """The decision's carried fields (`_CARRIED`: ``action``, ``sent``...) if the customer's state
    remembers it (window open; a closed one as a no-offer), else None."""
    promo = state.get("promo") or {}
    pending = next((p for p in promo.get("pending", ()) if p["decision_id"] == decision_id), None)
    if pending is not None:
        return pending["record"]
    if decision_id in promo.get("closed", ()):
        return {"action": None, "sent": False}
    return None


#: Decision fields a reward repeats, so the learner needs the reward only.
_CARRIED = (
    "merchant_id",
    "customer_key",
    "experiment",
    "arm",
    "policy",
    "model_version",
    "action",
    "action_kind",
    "promotion_id",
    "product_id",
    "propensity",
    "sent",
    "offer_id",
    "max_discount",
    "feature_set",
    "features",
    "event_time",
)


def on_feedback(
    state: dict, event: dict, ledgers: MutableMapping[str, dict] | None = None
) -> str | None:
    """Apply one offer-feedback event; returns the decision id it matched (None: no match).

    A redemption settles the ledger (written back to ``ledgers``) and counts against the
    customer's per-promotion limit; repeating it changes nothing.
    """
    promo = _promo(state)
    flag = FEEDBACK_FLAGS.get(event["event_type"])
    pending = next(
        (p for p in promo["pending"] if p["record"]["offer_id"] == event["offer_id"]), None
    )
    if flag is None or pending is None:
        return None
    pending["flags"][flag] = True
    if flag == "redeemed":
        record = pending["record"]
        guardrails.record_redemption(
            promo, pending["decision_id"], record["promotion_id"], event["_ts"]
        )
        key = pending["terms"].get("ledger_key")
        if key is not None and ledgers is not None and key in ledgers:
            ledger = ledgers[key]
            settled = guardrails.settle(ledger, pending["decision_id"], event["_ts"])
            if settled in ("settled", "settled_late"):
                ledgers[key] = ledger
    return pending["decision_id"]


def on_order(state: dict, event: dict) -> bool:
    """Keep an order for attribution; False for a repeated or cancelled one."""
    if event["event_type"] != "order":
        return False
    promo = _promo(state)
    if any(order[1] == event["order_id"] for order in promo["orders"]):
        return False
    values: dict[str, float] = {}
    for line in event["lines"]:
        value = line["quantity"] * line["unit_price"]
        values[line["product_id"]] = round(values.get(line["product_id"], 0.0) + value, 2)
    promo["orders"].append([event["_ts"], event["order_id"], float(event["total"]), values, None])
    promo["orders"].sort(key=lambda order: order[0])
    del promo["orders"][:-MAX_ORDERS]
    return True


def _owner(pending: list[dict], order_ts: float) -> dict | None:
    covering = [p for p in pending if p["ts"] <= order_ts < p["expires"]]
    redeemed = [p for p in covering if p["flags"]["redeemed"] and p["record"]["sent"]]
    candidates = redeemed or covering
    return max(candidates, key=lambda p: p["ts"]) if candidates else None


def _discount(pending: dict, total: float, values: dict[str, float]) -> float:
    terms, record = pending["terms"], pending["record"]
    percent = terms.get("percent") or 0.0
    if record["action_kind"] == "product_coupon":
        amount = values.get(record["product_id"] or "", 0.0) * percent / 100.0
    elif terms.get("tier_type") == "free_shipping":
        amount = terms.get("shipping_cost") or 0.0
    else:
        amount = total * percent / (100.0 - percent) if percent < 100 else 0.0
    cap = record.get("max_discount")
    return round(min(amount, cap) if cap is not None else amount, 2)


def _close(promo: dict, pending: dict, now: float, reason: str) -> dict:
    promo["pending"].remove(pending)
    promo["closed"].append(pending["decision_id"])
    del promo["closed"][:-MAX_CLOSED]
    record, terms, flags = pending["record"], pending["terms"], pending["flags"]
    order = None
    if reason != "evicted":
        for candidate in promo["orders"]:
            owner = _owner([*promo["pending"], pending], candidate[0])
            if candidate[4] is None and owner is pending:
                order = candidate
                break
    superseded = order is None and any(
        p["ts"] > pending["ts"] and p["ts"] < pending["expires"] for p in promo["pending"]
    )
    revenue = discount = gross = profit = 0.0
    redeemed = bool(flags["redeemed"] and record["sent"])
    if order is not None:
        order[4] = pending["decision_id"]
        revenue = order[2]
        discount = _discount(pending, revenue, order[3]) if redeemed else 0.0
        shipping_only = terms.get("tier_type") == "free_shipping" and record["action_kind"] in (
            "free_shipping",
            "threshold_nudge",
        )
        gross = revenue if shipping_only else revenue + discount
        profit = round(terms["margin_rate"] * gross - discount, 2)
    if reason == "window_closed" and superseded:
        reason = "superseded"
    return {
        "record": "reward",
        "schema_version": SCHEMA_VERSION,
        "decision_id": pending["decision_id"],
        **record,
        "closed_at": iso(now),
        "reason": reason,
        **{flag: bool(flags[flag]) for flag in FLAGS},
        "redeemed": redeemed,
        "purchased": order is not None,
        "order_id": order[1] if order is not None else None,
        "revenue": round(revenue, 2),
        "gross": round(gross, 2),
        "discount_cost": discount,
        "profit": profit,
        "order_products": (
            [{"product_id": p, "value": v} for p, v in order[3].items()] if order else None
        ),
    }


def close_due(state: dict, now: float) -> list[dict]:
    """Rewards of every decision whose window ended by ``now`` (event time), oldest first."""
    promo = _promo(state)
    rewards = []
    for pending in [p for p in promo["pending"] if p["expires"] <= now]:
        rewards.append(_close(promo, pending, now, "window_closed"))
    horizon = min((p["ts"] for p in promo["pending"]), default=now)
    promo["orders"] = [o for o in promo["orders"] if o[0] >= horizon and o[4] is None]
    return rewards


def next_due(state: dict) -> float | None:
    """When the customer's next window closes (for a per-partition sweep index)."""
    pending = (state.get("promo") or {}).get("pending") or []
    return min((p["expires"] for p in pending), default=None)


def learnable(reward: dict) -> bool:
    """Rewards the bandit learns from and OPE reads: offers actually applied (the holdout's
    and unsent decisions are not), not superseded or evicted."""
    applied = reward["sent"] or reward["action_kind"] == "none"
    return reward["reason"] == "window_closed" and applied and reward["arm"] != "holdout"


def reward_windows(
    store: TimerStore, lateness_s: float, wall: Callable[[], float] = time.time
) -> PartitionTimers:
    """The sweep's index of when each customer's next window ends (`next_due`), per partition,
    kept in ``store`` (the ``reward-due`` table) so that windows still close by the sweep after
    a restart or a rebalance, on another worker too. A customer's time is stored whenever it
    changes (a first window opened, the earliest one closed) and deleted when no window is
    open. The clock moves with event time only: an idle partition's windows wait for its next
    event."""
    return PartitionTimers(
        store, next_due, lateness_s, idle_advance=False, earlier_only=False, wall=wall
    )
