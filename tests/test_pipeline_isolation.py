"""Failure isolation in the pipeline: an event that makes its batch fail is dead-lettered and
the rest of the batch goes on; no state record or output exceeds its limit.

The unit tests drive `agents.pipeline.Pipeline` over in-memory topics and tables (the real
validation, state rules, policy, journeys and delivery rules); the integration tests run a real
worker on the embedded broker."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
from dataclasses import replace
from types import SimpleNamespace

import orjson
import pytest

from agents.outreach import Outreach
from agents.pipeline import RECORD_OVERHEAD, Pipeline
from agents.runtime.app import NextbestApp
from agents.runtime.settings import Settings
from schemas.records import EXCERPT_BYTES
from streams.decisions import ThresholdRulesPolicy
from streams.merchants.catalog import MerchantRegistry
from tests.harness import Cluster, cart_add, key_of
from tests.test_integration import profile
from tests.test_journeys import MemoryStore
from tests.test_records import valid

KINDS = ("clickstream", "cart", "orders", "profiles", "feedback", "merges")
MiB = 1 << 20


class Topic:
    """An output topic that keeps what is sent to it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sent: list[tuple[bytes | None, bytes]] = []

    def get_topic_name(self) -> str:
        return self.name

    def send_soon(self, *, key: bytes | None, value: bytes) -> None:
        self.sent.append((key, value))

    def records(self) -> list[dict]:
        return [orjson.loads(value) for _, value in self.sent]


class Event:
    """An input event (the pipeline pins events by weak reference)."""

    def __init__(self, message: SimpleNamespace) -> None:
        self.message = message


class Stream:
    """A `Pipeline` over in-memory topics and a dict as the customers table."""

    def __init__(self, max_state_bytes: int = 262144, max_request_bytes: int = MiB) -> None:
        settings = replace(Settings.from_env({}), max_state_bytes=max_state_bytes)
        topics = {kind: Topic(f"nextbest.{kind}") for kind in (*KINDS, "out")}
        app = SimpleNamespace(conf=SimpleNamespace(producer_max_request_size=max_request_bytes))
        self.table: dict[bytes, bytes] = {}
        self.promotions = Topic("nextbest.promotions")
        self.notifications = Topic("nextbest.notifications")
        self.dead_letters = Topic("nextbest.dead-letters")
        nb = NextbestApp(
            settings=settings,
            app=app,
            registry=MerchantRegistry.from_file(settings.merchants_path),
            inputs=None,
            topic_kinds={topics[kind].name: kind for kind in KINDS},
            promotions=self.promotions,
            notifications=self.notifications,
            dead_letters=self.dead_letters,
            merges=topics["merges"],
            customers=self.table,
        )
        policy = ThresholdRulesPolicy()
        self.pipeline = Pipeline(nb, policy, Outreach(nb, policy, MemoryStore()))
        self.offsets = itertools.count()

    def message(self, kind: str, value: dict | bytes) -> Event:
        raw = value if isinstance(value, bytes) else orjson.dumps(value)
        message = SimpleNamespace(
            topic=f"nextbest.{kind}",
            partition=0,
            offset=next(self.offsets),
            key=key_of(value) if isinstance(value, dict) else b"uci-gift-shop:c:raw",
            value=raw,
            timestamp=1.0,
        )
        message.tp = (message.topic, 0)
        return Event(message)

    def process(self, *events: tuple[str, dict | bytes]) -> None:
        asyncio.run(self.pipeline.process([self.message(kind, value) for kind, value in events]))

    def state(self, key: str) -> dict | None:
        raw = self.table.get(key.encode())
        return orjson.loads(raw) if raw is not None else None


def good_carts(n: int) -> list[tuple[str, dict]]:
    return [("cart", cart_add(f"good-{i}", 70.0, customer=f"g{i}")) for i in range(n)]


def test_an_event_that_breaks_the_offer_is_dead_lettered_and_the_batch_goes_on():
    """A year-1 cart of a customer with consent overflows in the delivery rules (quiet hours),
    after parsing and the state update: only that event is lost to the dead letters."""
    stream = Stream()
    stream.process(("profiles", profile("p1")))
    poison = cart_add("year-1", 70.0, customer="p1", time="0001-01-01T00:00:00Z")
    before = stream.state("uci-gift-shop:c:p1")
    stream.process(*good_carts(2), ("cart", poison), *good_carts(4)[2:])

    offers = stream.promotions.records()
    assert sorted(o["customer_id"] for o in offers) == ["g0", "g1", "g2", "g3"]
    [letter] = stream.dead_letters.records()
    assert letter["reason"] == "processing_error" and "OverflowError" in letter["error"]
    assert (letter["source_topic"], letter["partition"]) == ("nextbest.cart", 0)
    assert orjson.loads(letter["payload"]) == poison
    assert stream.state("uci-gift-shop:c:p1") == before  # its state change was discarded
    assert stream.state("uci-gift-shop:c:g3")["cart"]["value"] == 70.0


def test_an_event_whose_state_cannot_be_serialised_is_dead_lettered():
    """Two lines of 2**63 sum past 64 bits: the state cannot be written as JSON."""
    stream = Stream()
    huge = {"product_id": "85123A", "quantity": 2**63, "unit_price": 1.0}
    first = {**cart_add("q-1", 1.0, customer="q"), "lines": [huge]}
    second = {**cart_add("q-2", 1.0, customer="q"), "lines": [huge]}
    stream.process(*good_carts(3), ("cart", first), ("cart", second))

    assert sorted(o["customer_id"] for o in stream.promotions.records()) == ["g0", "g1", "g2"]
    [letter] = stream.dead_letters.records()
    assert letter["reason"] == "processing_error"
    assert letter["error"] == "TypeError: Integer exceeds 64-bit range"
    assert orjson.loads(letter["payload"])["event_id"] == "q-2"
    assert stream.state("uci-gift-shop:c:q")["cart"]["lines"] == [["85123A", 2**63, 1.0]]


def test_a_state_record_never_grows_past_the_limit():
    """Each cart change adds a 2 KB product id: the change that would take the customer's
    record past ``NEXTBEST_MAX_STATE_BYTES`` is dead-lettered, the ones before it are kept."""
    stream = Stream(max_state_bytes=8192)
    adds = [
        ("cart", cart_add(f"big-{i}", 1.0 + i, customer="big", product=f"{i}" + "x" * 2000))
        for i in range(6)
    ]
    stream.process(*good_carts(1), *adds)

    letters = stream.dead_letters.records()
    assert letters and all(d["reason"] == "state_too_large" for d in letters)
    kept = len(adds) - len(letters)
    assert kept >= 2
    assert [orjson.loads(d["payload"])["event_id"] for d in letters] == [
        f"big-{i}" for i in range(kept, len(adds))
    ]
    state = stream.state("uci-gift-shop:c:big")
    assert len(orjson.dumps(state)) <= 8192
    assert state["cart"]["value"] == float(kept)  # the last change that fitted
    assert stream.state("uci-gift-shop:c:g0") is not None
    assert all(len(value) <= 8192 for value in stream.table.values())


def test_an_output_over_the_producers_limit_is_never_sent():
    """A 39.6 KB address makes the cart's notification larger than a 40 KB producer limit: the
    cart event is dead-lettered (``output_too_large``) and nothing of its batch is sent twice."""
    stream = Stream(max_request_bytes=40_000)
    wide = profile("wide")
    wide["channels"]["email"] = "x" * 39_600 + "@example.com"
    stream.process(("profiles", wide))
    stream.process(*good_carts(2), ("cart", cart_add("wide-cart", 70.0, customer="wide")))

    [letter] = stream.dead_letters.records()
    assert letter["reason"] == "output_too_large"
    assert orjson.loads(letter["payload"])["event_id"] == "wide-cart"
    assert sorted(o["customer_id"] for o in stream.promotions.records()) == ["g0", "g1"]
    for topic in (stream.promotions, stream.notifications, stream.dead_letters):
        assert all(len(k or b"") + len(v) + RECORD_OVERHEAD <= 40_000 for k, v in topic.sent)


@pytest.mark.parametrize(
    ("payload", "encoding"),
    [
        (b"\xfe" * 800_000, "base64"),  # 1.07 MB in base64
        (b'{"x": "' + b"\x01" * 200_000, "utf-8"),  # 1.2 MB of JSON escapes
    ],
)
def test_a_dead_letter_too_large_for_the_producer_keeps_an_excerpt(payload, encoding):
    """A letter that would exceed the producer's 1 MiB keeps the first 4 KiB of its payload."""
    stream = Stream()
    stream.process(("cart", payload))
    [(key, value)] = stream.dead_letters.sent
    assert len(value) + len(key or b"") + RECORD_OVERHEAD <= MiB
    letter = orjson.loads(value)
    assert letter["reason"] == "oversize_payload" and letter["source_topic"] == "nextbest.cart"
    assert letter["payload_truncated"] is True and valid("dead-letters", letter)
    assert letter["payload_bytes"] == len(payload)
    assert letter["payload_sha256"] == hashlib.sha256(payload).hexdigest()
    assert letter["payload_encoding"] == encoding
    if encoding == "base64":
        assert base64.b64decode(letter["payload"]) == payload[:EXCERPT_BYTES]
    else:
        assert letter["payload"].encode() == payload[:EXCERPT_BYTES]


def test_a_small_dead_letter_keeps_the_payload_whole():
    stream = Stream()
    stream.process(("cart", b"{not json"))
    [letter] = stream.dead_letters.records()
    assert (letter["payload"], letter["payload_truncated"], letter["payload_bytes"]) == (
        "{not json",
        False,
        9,
    )


# -- a real worker on the embedded broker -------------------------------------------------------


@pytest.fixture
def cluster(tmp_path):
    cluster = Cluster(tmp_path)
    yield cluster
    cluster.close()


@pytest.mark.integration
def test_a_poison_event_is_dead_lettered_with_its_origin_and_the_agent_goes_on(cluster):
    """A year-1 cart (it passes validation and breaks the delivery rules) among four good ones:
    the good ones get their decisions, the poison one is dead-lettered with its origin, no
    offset moves past an event that was neither, and the agent never restarts."""
    cluster.start_worker("a")
    cluster.send("profiles", profile("p1"))
    cluster.flush()
    cluster.wait_processed(1)
    poison = cart_add("year-1", 70.0, customer="p1", time="0001-01-01T00:00:00Z")
    for i in range(4):
        cluster.send("cart", cart_add(f"good-{i}", 70.0, customer=f"g{i}"))
        if i == 1:
            cluster.send("cart", poison)
    cluster.flush()
    cluster.wait_processed(1 + 5, timeout=90)
    cluster.send("cart", cart_add("later", 70.0, customer="g9"))  # the agent's stream goes on
    cluster.flush()
    cluster.wait_processed(1 + 5 + 1, timeout=90)

    decisions = cluster.read("decisions", min_count=5)  # one per cart (the default policy)
    assert sorted(d["cart_event_id"] for d in decisions) == [
        "good-0",
        "good-1",
        "good-2",
        "good-3",
        "later",
    ]
    [letter] = cluster.read("dead_letters", min_count=1)
    # (bounds on event_time at validation may turn this into a schema_violation: still a letter)
    assert letter["reason"] in ("processing_error", "schema_violation")
    assert letter["source_topic"] == cluster.settings.topics.cart
    assert letter["partition"] >= 0 and letter["offset"] >= 0
    assert letter["key"] == "uci-gift-shop:c:p1"
    assert orjson.loads(letter["payload"]) == poison
    assert cluster.metric("a", "nextbest_events_total") == 1 + 4 + 1
    assert cluster.crashes("a") == []


@pytest.mark.integration
def test_a_record_the_producer_refuses_is_counted_and_the_worker_goes_on(cluster):
    """With a state limit above the producer's (a misconfiguration), 25 cart changes with 60 KB
    product ids grow one customer's record past 1 MiB: its changelog record is refused. The
    worker logs and counts it instead of crashing, and keeps processing (before: it exited,
    and every restart exited again on the same customer)."""
    cluster.settings = replace(cluster.settings, max_state_bytes=4 * MiB)
    cluster.start_worker("a")
    for i in range(25):
        product = f"{i:02d}" + "x" * 60_000
        cluster.send("cart", cart_add(f"wide-{i}", 1.0 + i, customer="wide", product=product))
    cluster.flush()
    cluster.wait_processed(25, timeout=120)
    cluster.send("cart", cart_add("after", 70.0, customer="wide"))
    cluster.send("cart", cart_add("other", 70.0, customer="other"))
    cluster.flush()
    cluster.wait_processed(27, timeout=90)

    assert cluster.metric("a", "nextbest_output_errors_total") >= 1
    decisions = cluster.read("decisions", min_count=2)  # one per cart (the default policy)
    assert {"after", "other"} <= {d["cart_event_id"] for d in decisions}
    assert cluster.crashes("a") == []
