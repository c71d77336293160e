"""Per-customer rolling state: plain dicts, updated by pure functions, stored as JSON in RocksDB.

One record per customer (or anonymous session), keyed ``<merchant>:c:<customer_id>`` or
``<merchant>:s:<session_id>``. Every list is bounded, so a record stays small whatever the
customer does (see ``docs/architecture.md`` for measured bytes per customer):

- ``offsets``: per input topic, ``[partition, offset]`` of the last input applied (`mark_offset`):
  a redelivered input (at or below it) is skipped however many inputs the redelivery re-reads;
  written in the same state write as the input's effects;
- ``seen``: ids of the last ``SEEN_IDS`` events applied — the same event sent twice (another
  offset) is recognised and skipped (at-least-once delivery, idempotent effect);
- ``views``: last ``MAX_VIEWS`` viewed products ``[product_id, ts]``;
- ``cart``: current cart ``{lines: [[product_id, qty, unit_price]], value, currency, ts,
  generation}``: the last ``MAX_CART_LINES`` lines, ``value`` from the event's cart_value,
  ``generation`` counting carts. Only cart-topic events (checkout, clear) move it on: Kafka
  orders events per key within one topic, not across topics, so decisions that depend on it
  stay the same however the topics interleave (an order only empties the lines);
- ``session``: current session ``{id, start, last, events}``; ``sessions`` counts them
  (a session ends after ``SESSION_GAP_S`` of inactivity, in event time);
- ``orders``: the most recent orders ``[ts, order_id, total, [product_id, ...]]``, time-ordered,
  products as ``streams.state.products`` keeps them (at most ``MAX_ORDERS`` orders and
  ``MAX_HISTORY_PRODUCTS`` product ids; the same rule the next-purchase model trains on).
  Which lines are products is the merchant's rule (``product_pattern``, default the UCI
  stock codes), passed to `apply_event` as ``products``;
- ``rfm``: ``{first, last, frequency, monetary, cancellations}`` over the whole history;
- ``offers``: ``{received, delivered, opened, clicked, redeemed, dismissed, last}``;
- ``last_offer``: ``[cart generation, offer key]`` of the last offer, so an unchanged offer
  is not emitted again for the same cart;
- ``sent``: last ``MAX_SENT`` notifications ``[ts, channel, dedupe_key]`` (frequency cap and
  dedupe); ``last_message``: time of the last message per channel;
- ``engagement`` (absent until the first engagement action is shown or its feedback came):
  per engagement action ``{shown, taken, dismissed, last, taken_at, dismissed_at}`` (the last
  ``MAX_ENGAGEMENT_ACTIONS`` actions touched), ``open`` take windows and ``last`` shown
  (``streams.engagement.rewards``);
- ``profile``: consent and preferences, or None; ``claimed``: anonymous sessions claimed;
  ``absorbed``: the session keys whose state was merged in (a re-sent absorb is skipped).
"""

from __future__ import annotations

import re

from schemas.limits import MAX_QUANTITY
from streams.state.products import MAX_ORDERS as MAX_ORDERS  # noqa: PLC0414 - part of the state API
from streams.state.products import order_products, orders_to_keep, product_rule

SESSION_GAP_S = 30 * 60
SEEN_IDS = 64
MAX_VIEWS = 20
MAX_SENT = 20
MAX_CLAIMED = 8
MAX_CART_LINES = 200
CHANNEL_FIELDS = ("email", "sms", "push", "in_app")
FEEDBACK_COUNTERS = {
    "offer_delivered": "delivered",
    "offer_opened": "opened",
    "offer_clicked": "clicked",
    "offer_redeemed": "redeemed",
    "offer_dismissed": "dismissed",
}

#: engagement action feedback (``action_feedback`` topic) -> its counter
ENGAGEMENT_INTERACTIONS = {
    "action_shown": "shown",
    "action_taken": "taken",
    "action_dismissed": "dismissed",
}
MAX_ENGAGEMENT_ACTIONS = 32
MAX_OPEN_WINDOWS = 8  # engagement take windows kept (``streams.engagement.rewards``)


def new_state() -> dict:
    return {
        "v": 1,
        "offsets": {},
        "seen": [],
        "views": [],
        "cart": {"lines": [], "value": 0.0, "currency": None, "ts": None, "generation": 0},
        "session": None,
        "sessions": 0,
        "orders": [],
        "rfm": {"first": None, "last": None, "frequency": 0, "monetary": 0.0, "cancellations": 0},
        "offers": {"received": 0, **dict.fromkeys(FEEDBACK_COUNTERS.values(), 0), "last": None},
        "last_offer": None,
        "sent": [],
        "last_message": {},
        "profile": None,
        "claimed": [],
        "absorbed": [],
    }


#: The parts of a customer's state a cart decision reads: the promotion policy's features and
#: objective, the coupon candidate's cart check, the decision record's products and country, the
#: next-purchase model's history (`decision_view`).
DECISION_PARTS = ("rfm", "cart", "session", "sessions", "views", "orders", "offers", "profile")


def decision_view(state: dict) -> dict:
    """The `DECISION_PARTS` of ``state`` as they are now, for a cart decision made after later
    events of its micro-batch were applied: each part's dict or list is copied one level deep.
    That is enough because the rules here replace what those hold (a cart's lines, an order,
    a view, ``offers["last"]``) instead of changing it in place."""
    view = {}
    for part in DECISION_PARTS:
        value = state.get(part)
        view[part] = value.copy() if isinstance(value, dict | list) else value
    return view


def _push(items: list, item: object, limit: int) -> None:
    items.append(item)
    if len(items) > limit:
        del items[: len(items) - limit]


def mark_offset(state: dict, topic: str, partition: int, offset: int) -> bool:
    """Record the input at ``offset`` of ``topic``'s ``partition``; False when an input at or
    above it was applied already (a redelivery to skip).

    A key's records of one topic all land on one partition, in offset order, so one offset per
    topic suffices. An offset of another partition (the topic's partition count changed) is no
    evidence: the new one replaces it and the event-id window (`mark_seen`) alone dedupes.
    """
    offsets = state.setdefault("offsets", {})
    last = offsets.get(topic)
    if last is not None and last[0] == partition and offset <= last[1]:
        return False
    offsets[topic] = [partition, offset]
    return True


def mark_seen(state: dict, event_id: str) -> bool:
    """Record ``event_id``; False when it was already applied (a duplicate to skip)."""
    seen = state["seen"]
    if event_id in seen:
        return False
    _push(seen, event_id, SEEN_IDS)
    return True


def touch_session(state: dict, session_id: str | None, ts: float) -> None:
    session = state["session"]
    if (
        session is None
        or ts - session["last"] > SESSION_GAP_S
        or (session_id is not None and session["id"] not in (None, session_id))
    ):
        state["session"] = {"id": session_id, "start": ts, "last": ts, "events": 1}
        state["sessions"] += 1
        return
    session["last"] = max(session["last"], ts)
    session["events"] += 1
    if session["id"] is None:
        session["id"] = session_id


def _reset_cart(state: dict, ts: float) -> None:
    cart = state["cart"]
    cart.update(lines=[], value=0.0, ts=ts, generation=cart["generation"] + 1)


def apply_click(state: dict, event: dict) -> None:
    product_id = event.get("product_id")
    if event["event_type"] == "product_view" and product_id:
        _push(state["views"], [product_id, event["_ts"]], MAX_VIEWS)


def apply_cart(state: dict, event: dict) -> None:
    ts = event["_ts"]
    event_type = event["event_type"]
    if event_type in ("checkout", "cart_clear"):
        _reset_cart(state, ts)
        return
    cart = state["cart"]
    lines = {line[0]: line for line in cart["lines"]}
    for changed in event["lines"]:
        product_id, quantity = changed["product_id"], changed["quantity"]
        current = lines.get(product_id)
        if event_type == "cart_add":  # a running sum: capped like one line's quantity
            new_quantity = min(quantity + (current[1] if current else 0), MAX_QUANTITY)
        elif event_type == "cart_remove":
            new_quantity = (current[1] if current else 0) - quantity
        else:
            new_quantity = quantity
        lines.pop(product_id, None)
        if new_quantity > 0:
            lines[product_id] = [product_id, new_quantity, changed["unit_price"]]
    cart["lines"] = list(lines.values())[-MAX_CART_LINES:]
    cart["value"] = float(event["cart_value"])
    cart["currency"] = event["currency"]
    cart["ts"] = ts


def apply_order(state: dict, event: dict, products: re.Pattern[str] | None = None) -> None:
    """An order or cancellation; ``products``: the merchant's product rule (default UCI)."""
    ts = event["_ts"]
    rfm = state["rfm"]
    if event["event_type"] == "order_cancel":
        rfm["cancellations"] += 1
        rfm["monetary"] = round(rfm["monetary"] + event["total"], 2)
        return
    rule = products if products is not None else product_rule()
    kept = order_products((line["product_id"] for line in event["lines"]), rule)
    if kept:  # an order of postage or fees only tells nothing about what the customer buys
        orders = state["orders"]
        orders.append([ts, event["order_id"], event["total"], kept])
        orders.sort(key=lambda order: order[0])
        del orders[: len(orders) - orders_to_keep([len(order[3]) for order in orders])]
    rfm["first"] = ts if rfm["first"] is None else min(rfm["first"], ts)
    rfm["last"] = ts if rfm["last"] is None else max(rfm["last"], ts)
    rfm["frequency"] += 1
    rfm["monetary"] = round(rfm["monetary"] + event["total"], 2)
    state["cart"].update(lines=[], value=0.0, ts=ts)


def apply_profile(state: dict, event: dict) -> None:
    channels = event["channels"]  # the contract's fields only: unknown ones pass the door
    state["profile"] = {
        "channels": {name: channels[name] for name in CHANNEL_FIELDS if name in channels},
        "preferred": event.get("preferred_channel"),
        "time_zone": event.get("time_zone"),
        "opted_out": bool(event.get("opted_out", False)),
        "country": event.get("country"),
    }


def apply_feedback(state: dict, event: dict) -> None:
    offers = state["offers"]
    offers[FEEDBACK_COUNTERS[event["event_type"]]] += 1


def engagement_state(state: dict) -> dict:
    """The customer's engagement record (created on first use: older states lack it)."""
    return state.setdefault("engagement", {"actions": {}, "open": [], "last": None})


def apply_action_feedback(state: dict, event: dict) -> None:
    """Count a customer's interaction with an engagement action, with its time."""
    actions = engagement_state(state)["actions"]
    action_id, ts = event["action_id"], event["_ts"]
    record = actions.pop(action_id, None) or {
        "shown": 0,
        "taken": 0,
        "dismissed": 0,
        "last": ts,
        "taken_at": None,
        "dismissed_at": None,
    }
    interaction = ENGAGEMENT_INTERACTIONS[event["event_type"]]
    record[interaction] += 1
    record["last"] = max(record["last"], ts)
    if interaction != "shown":
        stamp = f"{interaction}_at"
        record[stamp] = ts if record[stamp] is None else max(record[stamp], ts)
    actions[action_id] = record  # the most recently touched last
    while len(actions) > MAX_ENGAGEMENT_ACTIONS:
        del actions[next(iter(actions))]


APPLY = {
    "clickstream": apply_click,
    "cart": apply_cart,
    "orders": apply_order,
    "profiles": apply_profile,
    "feedback": apply_feedback,
    "action_feedback": apply_action_feedback,
}


def apply_event(
    state: dict, topic_kind: str, event: dict, products: re.Pattern[str] | None = None
) -> bool:
    """Apply one validated input event; False (and no change) if it was seen before.

    ``products`` is the merchant's product rule (``merchant.options.products``); None: the UCI
    stock-code rule.
    """
    if not mark_seen(state, event["event_id"]):
        return False
    if topic_kind != "profiles":
        touch_session(state, event.get("session_id"), event["_ts"])
    if topic_kind == "orders":
        apply_order(state, event, products)
    else:
        APPLY[topic_kind](state, event)
    return True


def repeats_offer(last_offer: list | None, generation: int, offer_key: str) -> bool:
    """Whether an offer is the one cart ``generation`` got last (``last_offer``): not emitted."""
    return last_offer == [generation, offer_key]


def record_offer(state: dict, generation: int, offer_key: str, offer_id: str, ts: float) -> bool:
    """Remember the offer for cart ``generation``; False when that cart already had this offer."""
    if repeats_offer(state["last_offer"], generation, offer_key):
        return False
    state["last_offer"] = [generation, offer_key]
    offers = state["offers"]
    offers["received"] += 1
    offers["last"] = {"offer_id": offer_id, "key": offer_key, "ts": ts}
    return True


def record_message(state: dict, channel: str, dedupe_key: str, ts: float) -> None:
    _push(state["sent"], [ts, channel, dedupe_key], MAX_SENT)
    state["last_message"][channel] = ts


def claim_session(state: dict, session_id: str) -> bool:
    """True when this anonymous session has not yet been claimed by the customer."""
    if session_id in state["claimed"]:
        return False
    _push(state["claimed"], session_id, MAX_CLAIMED)
    return True


def mark_absorbed(state: dict, session_key: str) -> bool:
    """Record that ``session_key``'s state was merged in; False when it was before (an absorb
    sent again: the session's deletion was lost in a crash and its claim redelivered)."""
    absorbed = state.setdefault("absorbed", [])
    if session_key in absorbed:
        return False
    _push(absorbed, session_key, MAX_CLAIMED)
    return True


def merge_anonymous(customer: dict, anonymous: dict) -> None:
    """Fold an anonymous session's state into the customer's, which wins on conflicts.

    The session's ``offsets`` are not merged: they are positions on the session key's
    partitions, not on the customer's.
    """
    for event_id in anonymous["seen"]:
        if event_id not in customer["seen"]:
            _push(customer["seen"], event_id, SEEN_IDS)
    views = sorted(customer["views"] + anonymous["views"], key=lambda view: view[1])
    customer["views"] = views[-MAX_VIEWS:]
    if not customer["cart"]["lines"] and anonymous["cart"]["lines"]:
        generation = customer["cart"]["generation"]
        customer["cart"] = {**anonymous["cart"], "generation": generation}
    customer["sessions"] += anonymous["sessions"]
    for key, value in anonymous["offers"].items():
        if key != "last":
            customer["offers"][key] += value
    if "engagement" in anonymous:
        _merge_engagement(engagement_state(customer), anonymous["engagement"])


def _merge_engagement(customer: dict, anonymous: dict) -> None:
    """The session's engagement counters added to the customer's, and its open take windows
    for actions the customer has none open for (at most ``MAX_OPEN_WINDOWS``, oldest out)."""
    actions = customer["actions"]
    for action_id, theirs in anonymous["actions"].items():
        mine = actions.pop(action_id, None)
        if mine is not None:
            theirs = {
                **{k: mine[k] + theirs[k] for k in ENGAGEMENT_INTERACTIONS.values()},
                **{
                    k: max((t for t in (mine[k], theirs[k]) if t is not None), default=None)
                    for k in ("last", "taken_at", "dismissed_at")
                },
            }
        actions[action_id] = theirs
    while len(actions) > MAX_ENGAGEMENT_ACTIONS:
        del actions[next(iter(actions))]
    open_ids = {window[1] for window in customer["open"]}
    customer["open"].extend(w for w in anonymous["open"] if w[1] not in open_ids)
    customer["open"].sort(key=lambda window: window[2])
    del customer["open"][: max(0, len(customer["open"]) - MAX_OPEN_WINDOWS)]
