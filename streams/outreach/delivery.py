"""Delivery rules for every message source (cart offers, reminders, journey steps), in one place.

`decide` is a pure function over the customer's state; the caller emits what it returns and
records a delivered message in state (``customer_state.record_message``), so a replayed input
finds its dedupe key already sent. The rules, in order:

1. **Opt-out and consent are hard constraints.** No profile, or no consent on any usable
   channel: ``Suppressed("no_consent")``; opted out: ``Suppressed("opted_out")``. The rules
   read the state at the moment of delivery, so an opt-out also stops a message that a journey
   scheduled before it.
2. **Channel.** A message that names its channel (a journey step: "then an SMS") goes on that
   channel only, and only with consent for it. Otherwise the customer's preferred channel when
   they consented to it, else the first consented channel in the merchant's ``channel_order``.
3. **Dedupe.** Every message carries a deterministic ``dedupe_key``; one already in the
   customer's sent list is ``Suppressed("duplicate")``.
4. **Quiet hours, in the customer's local time.** Push, SMS and e-mail (configurable) are not
   sent between ``quiet_hours.start`` and ``.end`` local time: the result is
   ``Held(until)``, the first moment outside quiet hours. The zone is the profile's
   ``time_zone``; when it is missing or not a valid IANA name, the customer is assumed to live
   in any of the merchant's ``delivery.time_zones`` and the message waits for a moment that is
   outside quiet hours in *all* of them (no common window within two days:
   ``Suppressed("no_safe_window")``). DST is handled by the zone database. In-app messages are
   only seen in the app and are never held.
5. **One global frequency cap** per customer: at most ``frequency_cap.max_messages`` messages
   from all sources together within ``period``; ``Suppressed("frequency_cap")``. Every message
   recorded after ``now - period`` counts, one recorded at a later event time too (a journey
   step fires on its partition's clock, a cart offer on its event's time; either may be
   processed first).

Cart offers are real-time: `plan_delivery` turns a ``Held`` offer into
``Suppressed("quiet_hours")`` (the offer would be stale by morning; the abandoned-cart journey
is the later touch). Journeys reschedule a held step at ``until`` and ask again then.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import time as local_time
from zoneinfo import ZoneInfo

from schemas.keys import id_digest
from streams.decisions import Offer
from streams.merchants.catalog import Merchant
from streams.merchants.options import QuietHours, time_zone

SAFE_WINDOW_HORIZON_S = 2 * 86400.0


@dataclass(frozen=True)
class Send:
    """Send the message now, on ``channel`` to ``address``."""

    channel: str
    address: str
    dedupe_key: str


@dataclass(frozen=True)
class Held:
    until: float  # epoch seconds: ask again then
    reason: str = "quiet_hours"


@dataclass(frozen=True)
class Suppressed:
    reason: str  # opted_out | no_consent | duplicate | frequency_cap | quiet_hours | no_safe_window


@dataclass(frozen=True)
class Message:
    """What a source wants to send; the rules decide whether, where and when."""

    source: str  # "offer" | "abandoned_cart" | "replenishment" | "follow_up"
    dedupe_key: str
    channel: str | None = None  # None: the customer's preferred channel


def dedupe_key(merchant_id: str, customer_key: str, offer: Offer, cart_event_id: str) -> str:
    """Same cart event + same offer -> same key, however often the event is replayed."""
    return id_digest(merchant_id, customer_key, offer.key, cart_event_id)


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


def quiet_end(ts: float, zone: ZoneInfo, quiet: QuietHours) -> float | None:
    """When ``ts`` falls in quiet hours in ``zone``, the moment they end; else None."""
    if quiet.start == quiet.end:
        return None
    local = datetime.fromtimestamp(ts, zone)
    minute = local.hour * 60 + local.minute
    if quiet.start < quiet.end:
        inside, end_day = quiet.start <= minute < quiet.end, local.date()
    else:  # wraps midnight, e.g. 21:00-08:00
        inside = minute >= quiet.start or minute < quiet.end
        end_day = local.date() if minute < quiet.end else local.date() + timedelta(days=1)
    if not inside:
        return None
    end = datetime.combine(end_day, local_time(quiet.end // 60, quiet.end % 60), tzinfo=zone)
    return max(end.timestamp(), ts + 1.0)  # a local end time skipped by DST still moves on


def safe_time(ts: float, zones: tuple[ZoneInfo, ...], quiet: QuietHours) -> float | None:
    """The first moment >= ``ts`` outside quiet hours in every zone (None: none within 2 days)."""
    moment = ts
    while moment - ts <= SAFE_WINDOW_HORIZON_S:
        ends = [end for zone in zones if (end := quiet_end(moment, zone, quiet)) is not None]
        if not ends:
            return moment
        moment = max(ends)
    return None


def customer_zones(profile: dict, merchant: Merchant) -> tuple[ZoneInfo, ...]:
    """The profile's zone, or every zone the merchant's customers live in when it is unknown."""
    zone = time_zone(profile.get("time_zone"))
    if zone is not None:
        return (zone,)
    return tuple(ZoneInfo(name) for name in merchant.options.delivery.time_zones)


def decide(
    state: dict, merchant: Merchant, message: Message, now: float
) -> Send | Held | Suppressed:
    """Apply the delivery rules (module docstring) to one message at event time ``now``."""
    profile = state.get("profile")
    if profile is None:
        return Suppressed("no_consent")
    if profile["opted_out"]:
        return Suppressed("opted_out")
    if message.channel is None:
        chosen = choose_channel(profile, merchant)
    else:
        address = consented_channels(profile).get(message.channel)
        chosen = (message.channel, address) if address else None
    if chosen is None:
        return Suppressed("no_consent")
    sent = state["sent"]
    if any(entry[2] == message.dedupe_key for entry in sent):
        return Suppressed("duplicate")
    quiet = merchant.options.delivery.quiet_hours
    if chosen[0] in quiet.channels:
        until = safe_time(now, customer_zones(profile, merchant), quiet)
        if until is None:
            return Suppressed("no_safe_window")
        if until > now:
            return Held(until)
    cap = merchant.frequency_cap
    # every recorded message counts, a later one too: a journey step recorded at its own (later)
    # clock time is no less a message to this customer than one sent before ``now``
    recent = sum(1 for entry in sent if entry[0] > now - cap.period_s)
    if recent >= cap.max_messages:
        return Suppressed("frequency_cap")
    return Send(channel=chosen[0], address=chosen[1], dedupe_key=message.dedupe_key)


def plan_delivery(
    state: dict, merchant: Merchant, customer_key: str, offer: Offer, cart_event_id: str, ts: float
) -> Send | Suppressed:
    """A cart offer's notification: now or never (a held offer is ``quiet_hours``)."""
    key = dedupe_key(merchant.id, customer_key, offer, cart_event_id)
    result = decide(state, merchant, Message("offer", key), ts)
    if isinstance(result, Held):
        return Suppressed(result.reason)
    return result
