"""Keys, ids and the time format every output record shares (plain Python, no Faust).

- `state_key`: the record key of a customer's inputs and state (and of every output about them);
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
