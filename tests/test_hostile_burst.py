"""A burst of valid events mixed with mutated ones through a real worker on the embedded broker:
every event is either processed (counted in ``nextbest_events_total``) or dead-lettered (one
letter per bad event, with its reason and origin), the counts add up to what was sent, and the
worker's agent never restarts.

The mutations come from a small deterministic mutator (seeded): wrong types, huge numbers,
huge strings, dates out of range, invalid JSON, binary garbage, oversize records up to 900 KB;
each must come back as a dead letter (`MUST_FAIL`). Others stay just within the contract's
bounds (a 256-character event id, a million units, a cart worth 1e9, a thousand lines): each
must be processed, through every stage after validation, and never dead-lettered
(`AT_THE_BOUNDS`).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

import orjson
import pytest

from agents.tools.processes import PROCESSED
from tests.harness import Cluster, cart_add
from tests.test_integration import profile

pytestmark = pytest.mark.integration

VALID_CUSTOMERS = [f"c{i}" for i in range(20)]
MUTATED_CUSTOMERS = [f"m{i}" for i in range(5)]  # mutations never touch a valid customer
VALID_EVENTS = 300
REASONS = {
    "malformed_json",
    "schema_violation",
    "unknown_event_type",
    "oversize_payload",
    "unknown_merchant",
    "unsupported_schema_version",
    "processing_error",
    "state_too_large",
    "output_too_large",
}

Mutation = Callable[[random.Random, dict], bytes]


def with_fields(**fields: object) -> Mutation:
    return lambda rng, base: orjson.dumps({**base, **fields})


def with_line(**fields: object) -> Mutation:
    def mutate(rng: random.Random, base: dict) -> bytes:
        line = {"product_id": "85123A", "quantity": 1, "unit_price": 1.0, **fields}
        return orjson.dumps({**base, "lines": [line]})

    return mutate


def with_lines(count: int) -> Mutation:
    """``count`` lines of distinct products."""
    lines = [{"product_id": f"{i:05d}", "quantity": 1, "unit_price": 1.0} for i in range(count)]
    return with_fields(lines=lines)


def raw(data: bytes) -> Mutation:
    return lambda rng, base: data


def padded(size: int) -> Mutation:
    return lambda rng, base: orjson.dumps({**base, "note": "x" * size})


#: mutations that can never be used: each must come back as a dead letter
MUST_FAIL: dict[str, Mutation] = {
    "cart_value: string": with_fields(cart_value="ten"),
    "lines: string": with_fields(lines="85123A"),
    "event_time: number": with_fields(event_time=1321264800),
    "customer_id: number": with_fields(customer_id=17),
    "quantity: string": with_line(quantity="2"),
    "unit_price: negative": with_line(unit_price=-1.0),
    "quantity: 2**63": with_line(quantity=2**63),
    "cart_value: 1e308": with_fields(cart_value=1e308),
    "product_id: 60 KB": with_line(product_id="P" * 60_000),
    "currency: 10 KB": with_fields(currency="G" * 10_000),
    "quantity: 2**70": lambda rng, base: with_line()(rng, base).replace(
        b'"quantity":1,', b'"quantity":' + str(2**70).encode() + b","
    ),
    "event_id: 10 KB": with_fields(event_id="e" * 10_000),
    "event_time: month 13": with_fields(event_time="2011-13-45T00:00:00Z"),
    "event_time: year 9999": with_fields(event_time="9999-12-31T23:59:59Z"),
    "event_time: words": with_fields(event_time="yesterday"),
    "event_time: no zone": with_fields(event_time="2011-11-14T10:00:00"),
    "event_time: year 1": with_fields(event_time="0001-01-01T00:00:00Z"),
    "event_type: unknown": with_fields(event_type="teleport"),
    "event_type: list": with_fields(event_type=["cart_add"]),
    "merchant_id: unknown": with_fields(merchant_id="nope"),
    "schema_version: 9": with_fields(schema_version=9),
    "json: truncated": lambda rng, base: orjson.dumps(base)[:40],
    "json: empty": raw(b""),
    "json: null": raw(b"null"),
    "json: list": raw(b"[1, 2]"),
    "json: NaN": raw(b'{"cart_value": NaN}'),
    "binary: 64 B": lambda rng, base: b"\xff" + rng.randbytes(63),
    "binary: 800 KB": lambda rng, base: b"\xfe" + rng.randbytes(800_000),
    "oversize: 100 KB": padded(100_000),
    "oversize: 500 KB": padded(500_000),
    "oversize: 900 KB": padded(900_000),
}
#: mutations at the edge of the contract: each must be processed, never dead-lettered
AT_THE_BOUNDS: dict[str, Mutation] = {
    "event_id: 256 characters": with_fields(event_id="e" * 256),
    "event_time: year 2000": with_fields(event_time="2000-01-01T00:00:00Z"),
    "event_time: offset -23:59": with_fields(event_time="2011-11-14T00:00:00-23:59"),
    "quantity: 1e6": with_line(quantity=1_000_000),
    "unit_price: 1e9": with_line(unit_price=1e9),
    "cart_value: 1e9": with_fields(cart_value=1e9),
    "product_id: 64 characters": with_line(product_id="8" * 64),
    "currency: unknown": with_fields(currency="XYZ"),
    "lines: 1000": with_lines(1000),
}


def burst(rng: random.Random) -> tuple[list[tuple[bytes, bytes]], set[str], set[str]]:
    """Shuffled (key, value) cart records: the valid events and every mutation once;
    returns them with the SHA-256 of the mutated values that must fail and of those at the
    bounds."""
    records = []
    for i in range(VALID_EVENTS):
        customer = rng.choice(VALID_CUSTOMERS)
        value = cart_add(f"v-{i}", round(rng.uniform(5, 200), 2), customer=customer)
        records.append((f"uci-gift-shop:c:{customer}".encode(), orjson.dumps(value)))
    must_fail, at_the_bounds = set(), set()
    for n, (name, mutate) in enumerate([*MUST_FAIL.items(), *AT_THE_BOUNDS.items()]):
        customer = MUTATED_CUSTOMERS[n % len(MUTATED_CUSTOMERS)]
        base = cart_add(f"m-{n}", 70.0, customer=customer)
        value = mutate(rng, base)
        digest = hashlib.sha256(value).hexdigest()
        assert digest not in must_fail | at_the_bounds, name  # every letter can be told apart
        (must_fail if name in MUST_FAIL else at_the_bounds).add(digest)
        records.append((f"uci-gift-shop:c:{customer}".encode(), value))
    rng.shuffle(records)
    return records, must_fail, at_the_bounds


def test_a_hostile_burst_is_processed_or_dead_lettered_and_the_agent_never_restarts(tmp_path):
    cluster = Cluster(tmp_path)
    try:
        cluster.start_worker("a")
        for customer in VALID_CUSTOMERS + MUTATED_CUSTOMERS:  # consent: the delivery rules run
            cluster.send("profiles", profile(customer))
        cluster.flush()
        profiles = len(VALID_CUSTOMERS) + len(MUTATED_CUSTOMERS)
        cluster.wait_processed(profiles)

        records, must_fail, at_the_bounds = burst(random.Random(15))
        for key, value in records:
            cluster.send("cart", value, key=key)
        cluster.flush()
        sent = profiles + len(records)
        cluster.wait_processed(sent, timeout=240)
        letters = cluster.read("dead_letters", min_count=len(must_fail), timeout=60)
        totals = {name: cluster.metric("a", name) for name in PROCESSED}
        output_errors = cluster.metric("a", "nextbest_output_errors_total")
        crashes = cluster.crashes("a")
    finally:
        cluster.close()

    # every event counted once: processed, dead-lettered (or a duplicate: none here)
    assert sum(totals.values()) == sent
    assert totals["nextbest_duplicate_events_total"] == 0
    assert totals["nextbest_events_total"] == profiles + VALID_EVENTS + len(at_the_bounds)
    assert totals["nextbest_dead_letters_total"] == len(must_fail)
    # one letter per bad event, with its reason and origin; no valid event among them
    assert len(letters) == totals["nextbest_dead_letters_total"]
    origins = {(d["source_topic"], d["partition"], d["offset"]) for d in letters}
    assert len(origins) == len(letters)
    for letter in letters:
        assert letter["reason"] in REASONS and letter["error"]
        assert letter["source_topic"] == cluster.settings.topics.cart
        assert letter["partition"] >= 0 and letter["offset"] >= 0
        assert letter["key"].startswith("uci-gift-shop:c:m")
    digests = [d["payload_sha256"] for d in letters]
    assert sorted(digests) == sorted(must_fail)  # each bad event once, none at the bounds
    truncated = [d for d in letters if d["payload_truncated"]]
    assert truncated and all(d["payload_bytes"] > 790_000 for d in truncated)
    # nothing refused by the producer, no crash, no restart
    assert output_errors == 0
    assert crashes == []
