"""Keys, ids and the time format every output record shares (plain Python, no Faust).

- `state_key`: the record key of a customer's inputs and state (and of every output about them),
  `parse_state_key` its inverse;
- `id_digest`: the deterministic ids (offer, decision, notification dedupe keys): the same inputs
  give the same id on every worker and every replay, so outputs deduplicate;
- `iso`: event and output timestamps, ISO 8601 in UTC with a ``Z``.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime


def state_key(merchant_id: str, customer_id: str | None, session_id: str | None) -> str:
    """Record key of inputs and state: ``<merchant>:c:<customer>`` or ``<merchant>:s:<session>``."""
    if customer_id is not None:
        return f"{merchant_id}:c:{customer_id}"
    return f"{merchant_id}:s:{session_id}"


def parse_state_key(key: str) -> tuple[str, str | None, str | None]:
    """``(merchant_id, customer_id, session_id)`` of a `state_key` (one of the two ids is None).

    The kind is the part after the merchant id, which holds no ``:`` (the merchants file
    refuses one): ``shop:s:guest:c:17850`` is the anonymous session ``guest:c:17850``.
    """
    merchant_id, _, rest = key.partition(":")
    kind, _, who = rest.partition(":")
    if not merchant_id or kind not in ("c", "s") or not who:
        raise ValueError(f"not a customer or session key: {key!r}")
    return (merchant_id, who, None) if kind == "c" else (merchant_id, None, who)


def is_customer_key(key: str) -> bool:
    """True for a known customer's key (``<merchant>:c:<customer>``), False for a session's."""
    return parse_state_key(key)[1] is not None


def id_digest(*parts: str) -> str:
    """A 24-hex-digit id: blake2b (12 bytes) of ``parts`` joined by ``|``."""
    return hashlib.blake2b("|".join(parts).encode(), digest_size=12).hexdigest()


def offer_id_for(customer_key: str, cart_event_id: str, offer_key: str) -> str:
    """The ``offer_id`` of an offer (``Offer.key``) for a cart event: the promotion record, the
    notification that carries it and the decision record name it alike, so feedback joins any."""
    return id_digest(customer_key, cart_event_id, offer_key)


def decision_id_for(customer_key: str, cart_event_id: str) -> str:
    """The promotion policy's ``decision_id`` for a cart event."""
    return id_digest(customer_key, cart_event_id, "decision")


def iso(ts: float) -> str:
    """Epoch seconds as ISO 8601 in UTC: ``2011-12-09T12:50:00Z`` (microseconds when not 0)."""
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
