"""From an offer to a notification: consent, channel choice, frequency cap and dedupe.

Pure function over the customer's state; the agent emits what it returns and records the
message in state, so a replayed cart event finds its dedupe key already sent.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from streams.catalog import Merchant
from streams.policy import Offer


@dataclass(frozen=True)
class Delivery:
    channel: str
    address: str
    dedupe_key: str


@dataclass(frozen=True)
class Suppressed:
    reason: str  # "opted_out" | "no_consent" | "frequency_cap" | "duplicate"


def dedupe_key(merchant_id: str, customer_key: str, offer: Offer, cart_event_id: str) -> str:
    """Same cart event + same offer -> same key, however often the event is replayed."""
    raw = f"{merchant_id}|{customer_key}|{offer.key}|{cart_event_id}".encode()
    return hashlib.blake2b(raw, digest_size=12).hexdigest()


def consented_channels(profile: dict) -> dict[str, str]:
    """Channel -> address for every channel with consent (in-app needs no address)."""
    channels = profile.get("channels") or {}
    consented = {name: channels[name] for name in ("push", "email", "sms") if channels.get(name)}
    if channels.get("in_app"):
        consented["in_app"] = "in-app"
    return consented


def choose_channel(profile: dict, merchant: Merchant) -> tuple[str, str] | None:
    consented = consented_channels(profile)
    preferred = profile.get("preferred")
    if preferred in consented:
        return preferred, consented[preferred]
    for channel in merchant.channel_order:
        if channel in consented:
            return channel, consented[channel]
    return None


def plan_delivery(
    state: dict, merchant: Merchant, customer_key: str, offer: Offer, cart_event_id: str, ts: float
) -> Delivery | Suppressed:
    profile = state.get("profile")
    if profile is None:
        return Suppressed("no_consent")
    if profile["opted_out"]:
        return Suppressed("opted_out")
    chosen = choose_channel(profile, merchant)
    if chosen is None:
        return Suppressed("no_consent")
    key = dedupe_key(merchant.id, customer_key, offer, cart_event_id)
    sent = state["sent"]
    if any(entry[2] == key for entry in sent):
        return Suppressed("duplicate")
    cap = merchant.frequency_cap
    recent = sum(1 for entry in sent if ts - cap.period_s < entry[0] <= ts)
    if recent >= cap.max_messages:
        return Suppressed("frequency_cap")
    return Delivery(channel=chosen[0], address=chosen[1], dedupe_key=key)
