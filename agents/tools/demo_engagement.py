"""The demo's engagement actions: the shop ranks them on cart decisions (``combine: both``: an
offer carries the ranked actions, a cart without an offer gets the first one) and on journeys'
messages, and the live tail shows them beside the offers and messages."""

from __future__ import annotations

from collections import Counter


def demo_engagement(shop: dict) -> None:
    """The demo shop's config ranks its engagement actions on every cart decision and journey
    message."""
    shop.setdefault("engagement", {}).update(on_cart=True, combine="both", in_journeys=True)


def actions_line(offer: dict) -> str:
    """The ranked engagement actions of a promotion record, for the live tail ("" without)."""
    ranked = offer.get("engagement_actions") or ()
    if not ranked:
        return ""
    parts = [
        f"{a['action_id']} {a['p_take']:.3f} x {a['value']:g} = {a['expected_value']:.2f}"
        for a in ranked
    ]
    return f"\n{'':>27}actions  " + " · ".join(parts)


def count_actions(counts: Counter[str], record: dict) -> None:
    """Count the first-ranked action of a promotion or notification record (``action:<id>``),
    offers and journey messages that carried actions."""
    ranked = record.get("engagement_actions") or ()
    if ranked:
        counts[f"action:{ranked[0]['action_id']}"] += 1
        if "notification_id" in record:
            counts["messages_with_actions"] += 1
        else:
            counts["with_actions"] += record["offer_type"] != "engagement_action"
