"""Guard rails on offers: budgets, per-customer limits, minimum margin, stacking. Pure functions
over plain dicts, so the state can live in RocksDB tables and survive replays and restarts.

Budgets. A promotion's ``budget`` is split evenly over the input partitions, and each
partition's share is a *ledger* (``new_ledger``), keyed ``<merchant>:<promotion>:<partition>``
(`ledger_key`). Only the worker that owns a partition touches its ledger, and it writes the
ledger while processing an event of that partition, so the ledger's changelog record lands on
the partition it belongs to and moves with it on a rebalance: no cross-worker coordination,
and the sum of the shares never exceeds the budget. A ledger::

    {"budget": share, "spent": money, "reserved": money,
     "open": {decision_id: [amount, expires_at]},   # reserved, not settled yet
     "closed": {decision_id: closed_at},            # settled or expired, kept for dedupe
     "expired": {decision_id: [amount, expires_at]},  # released unredeemed, kept too
     "rejected": {decision_id: expires_at}}         # refused for lack of budget, kept too

An offer reserves its maximum cost at issue (`reserve`); a redemption settles it
(`settle`: spent += the cost, at most the reservation); an offer not redeemed by its expiry
gives the reservation back (`expire`), `EXPIRY_GRACE_S` of event time after it expired, as a
redemption made in time may be processed later (feedback and carts are separate topics).
Everything is keyed by decision id: reserving or settling the same decision twice (a replay)
changes nothing, and a decision refused once stays refused. ``spent + reserved <= budget``
holds, with one exception the ledger records rather than hides: a redemption made before its
offer expired but processed more than `EXPIRY_GRACE_S` later still counts as spent
(``settled_late``), after its reservation may have gone to another offer. Closed, expired and
refused ids are kept for ``CLOSED_RETENTION_S``.

Customer side, in the customer's state under ``state["promo"]`` (`promo_state`)::

    "open": {decision_id: [promotion_id, group, exclusive, expires_at]},  # issued offers
    "redeemed": {promotion_id: [[ts, decision_id], ...]}                   # last MAX_REDEEMED

`blocked_reason` applies, per candidate action: minimum margin (``merchant.min_margin_rate``
of the basket must remain after the discount), the promotion's per-customer limit
(redemptions in its window plus open offers of it), stacking (an exclusive offer never
coexists with another open offer; one open offer per non-empty group) and the budget.
"""

from __future__ import annotations

from collections.abc import MutableMapping

from streams.merchants.catalog import Merchant, Promotion
from streams.promotion.actions import Action

DAY_S = 86400.0
CLOSED_RETENTION_S = 14 * DAY_S
EXPIRY_GRACE_S = 3600.0
MAX_REDEEMED = 20
REASONS = ("min_margin", "customer_limit", "exclusive", "group", "budget")


def promo_state(state: dict) -> dict:
    """The promotion policy's part of a customer's state, created on first use."""
    promo = state.get("promo")
    if promo is None:
        promo = state["promo"] = {}
    for key in ("open", "redeemed"):
        promo.setdefault(key, {})
    return promo


# --- ledgers ---------------------------------------------------------------------------------


def ledger_key(merchant_id: str, promotion_id: str, partition: int) -> str:
    return f"{merchant_id}:{promotion_id}:{partition}"


def partition_budget(budget: float, partitions: int) -> float:
    """One partition's share of a promotion's budget."""
    if partitions < 1:
        raise ValueError("partitions must be >= 1")
    return budget / partitions


def new_ledger(budget: float) -> dict:
    return {
        "budget": float(budget),
        "spent": 0.0,
        "reserved": 0.0,
        "open": {},
        "closed": {},
        "rejected": {},
    }


def ensure_ledger(ledgers: MutableMapping[str, dict], key: str, budget_share: float) -> dict:
    """The ledger under ``key``, created empty if missing; its budget follows the catalog (a
    lowered budget blocks new offers, it never cancels reservations already made)."""
    ledger = ledgers.get(key)
    if ledger is None:
        ledger = new_ledger(budget_share)
    elif ledger["budget"] != budget_share:
        ledger = {**ledger, "budget": float(budget_share)}
    else:
        return ledger
    ledgers[key] = ledger
    return ledger


def available(ledger: dict) -> float:
    return ledger["budget"] - ledger["spent"] - ledger["reserved"]


def reserve(ledger: dict, decision_id: str, amount: float, expires_at: float) -> str:
    """Reserve ``amount`` for a decision: ``reserved``, ``duplicate`` or ``over_budget``."""
    if decision_id in ledger["open"] or decision_id in ledger["closed"]:
        return "duplicate"
    rejected = ledger.setdefault("rejected", {})
    if decision_id in rejected or amount > available(ledger) + 1e-9:
        rejected[decision_id] = float(expires_at)
        return "over_budget"
    ledger["open"][decision_id] = [float(amount), float(expires_at)]
    ledger["reserved"] += amount
    return "reserved"


def settle(ledger: dict, decision_id: str, ts: float, cost: float | None = None) -> str:
    """A redemption at ``ts``: spend ``cost`` (default: the reservation; never more than it)
    and release the rest. ``settled``; ``settled_late`` (its reservation had been released,
    but it was redeemed before the offer expired: spent all the same); ``duplicate`` (already
    closed) or ``unknown`` (never reserved)."""
    late = ledger.setdefault("expired", {}).get(decision_id)
    if late is not None and ts <= late[1]:
        del ledger["expired"][decision_id]
        ledger["spent"] += _cost(late[0], cost)
        ledger["closed"][decision_id] = ts
        return "settled_late"
    if decision_id in ledger["closed"]:
        return "duplicate"
    entry = ledger["open"].pop(decision_id, None)
    if entry is None:
        return "unknown"
    amount = entry[0]
    ledger["reserved"] = max(ledger["reserved"] - amount, 0.0)
    ledger["spent"] += _cost(amount, cost)
    ledger["closed"][decision_id] = ts
    return "settled"


def _cost(reserved: float, cost: float | None) -> float:
    return reserved if cost is None else min(max(cost, 0.0), reserved)


def expire(ledger: dict, now: float) -> list[str]:
    """Release the reservations of offers expired `EXPIRY_GRACE_S` before ``now``; forget old
    closed, expired and refused ids."""
    released = ledger.setdefault("expired", {})
    expired = [
        d for d, (_, expires_at) in ledger["open"].items() if expires_at + EXPIRY_GRACE_S <= now
    ]
    for decision_id in expired:
        released[decision_id] = ledger["open"].pop(decision_id)
        ledger["reserved"] = max(ledger["reserved"] - released[decision_id][0], 0.0)
        ledger["closed"][decision_id] = now
    for kept in (ledger["closed"], ledger.setdefault("rejected", {})):
        for decision_id in [d for d, ts in kept.items() if ts + CLOSED_RETENTION_S < now]:
            del kept[decision_id]
    for decision_id in [d for d in released if d not in ledger["closed"]]:
        del released[decision_id]
    if not ledger["open"]:
        ledger["reserved"] = 0.0  # no float drift once nothing is reserved
    return expired


# --- customer side ---------------------------------------------------------------------------


def expire_customer(promo: dict, now: float) -> list[str]:
    """Forget the customer's offers that expired by ``now`` (their reservations expire in the
    ledger by themselves)."""
    expired = [d for d, entry in promo["open"].items() if entry[3] <= now]
    for decision_id in expired:
        del promo["open"][decision_id]
    return expired


def redemptions(promo: dict, promotion: Promotion, now: float) -> int:
    """The customer's redemptions of ``promotion`` within its per-customer window."""
    times = promo["redeemed"].get(promotion.id, [])
    if promotion.per_customer_days is None:
        return len(times)
    since = now - promotion.per_customer_days * DAY_S
    return sum(1 for ts, _ in times if ts >= since)


def blocked_reason(
    action: Action,
    merchant: Merchant,
    promo: dict,
    ledger: dict | None,
    now: float,
) -> str | None:
    """Why the action may not be offered now (one of ``REASONS``), or None when it may.

    ``ledger`` is the promotion's ledger for this partition (None: the promotion has no
    budget). Expired offers still in ``promo`` are ignored.
    """
    promotion = action.promotion
    if promotion is None:
        return None
    if action.margin(merchant.margin_rate) < merchant.min_margin_rate * action.basket - 1e-9:
        return "min_margin"
    open_offers = [entry for entry in promo["open"].values() if entry[3] > now]
    if promotion.max_per_customer is not None:
        issued = sum(1 for entry in open_offers if entry[0] == promotion.id)
        if redemptions(promo, promotion, now) + issued >= promotion.max_per_customer:
            return "customer_limit"
    if open_offers and (promotion.exclusive or any(entry[2] for entry in open_offers)):
        return "exclusive"
    if promotion.group and any(entry[1] == promotion.group for entry in open_offers):
        return "group"
    if promotion.budget is not None and (ledger is None or action.discount > available(ledger)):
        return "budget"
    return None


def record_issue(promo: dict, decision_id: str, promotion: Promotion, expires_at: float) -> bool:
    """Remember an issued offer for stacking and limits; False if it was recorded before."""
    if decision_id in promo["open"]:
        return False
    promo["open"][decision_id] = [promotion.id, promotion.group, promotion.exclusive, expires_at]
    return True


def record_redemption(promo: dict, decision_id: str, promotion_id: str, ts: float) -> bool:
    """Count a redemption against the customer's limits; False for a repeated one."""
    times = promo["redeemed"].setdefault(promotion_id, [])
    if any(d == decision_id for _, d in times):
        return False
    times.append([ts, decision_id])
    times.sort(key=lambda entry: entry[0])
    del times[:-MAX_REDEEMED]
    promo["open"].pop(decision_id, None)
    return True


def issue(
    promo: dict,
    ledgers: MutableMapping[str, dict] | None,
    key: str | None,
    decision_id: str,
    action: Action,
    expires_at: float,
) -> str:
    """Issue an offer: reserve its cost (budgeted promotions) and record it for the customer.

    Returns ``reserved`` / ``unbudgeted`` (issued), ``duplicate`` (this decision was issued
    before: nothing changes) or ``over_budget`` (not issued). A reservation is written back to
    ``ledgers[key]``.
    """
    promotion = action.promotion
    if promotion is None:
        raise ValueError("no offer to issue")
    if decision_id in promo["open"] or any(
        d == decision_id for times in promo["redeemed"].values() for _, d in times
    ):
        return "duplicate"
    outcome = "unbudgeted"
    if promotion.budget is not None:
        ledger = ledgers.get(key) if ledgers is not None and key is not None else None
        if ledger is None:
            return "over_budget"
        outcome = reserve(ledger, decision_id, action.discount, expires_at)
        if outcome != "reserved":
            return outcome
        ledgers[key] = ledger  # type: ignore[index]
    record_issue(promo, decision_id, promotion, expires_at)
    return outcome
