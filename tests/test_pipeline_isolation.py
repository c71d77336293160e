"""Failure isolation in the pipeline: an event that makes its batch fail is dead-lettered and
the rest of the batch goes on; no state record or output exceeds its limit.

The unit tests drive `agents.pipeline.Pipeline` over in-memory topics and tables (the real
validation, state rules, policy, journeys and delivery rules); the integration tests run a real
worker on the embedded broker. Every input here passes validation: no valid input breaks a
stage after it today, so the re-run tests bring a failing collaborator (a policy, a journey
hook) through the pipeline's and the worker's real parameters, and the size tests set small
limits (`NEXTBEST_MAX_STATE_BYTES`, `NEXTBEST_PRODUCER_MAX_REQUEST_BYTES`)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from types import SimpleNamespace

import faust
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.outreach import Outreach
from agents.pipeline import RECORD_OVERHEAD, Pipeline
from agents.runtime.app import NextbestApp, faust_config
from agents.runtime.batch import CustomerEntry
from agents.runtime.settings import Settings
from schemas.limits import PRODUCT_ID_MAX_LENGTH
from schemas.records import EXCERPT_BYTES
from streams.decisions import DecisionContext, Offer, Policy, ThresholdRulesPolicy
from streams.merchants.catalog import MerchantRegistry
from tests.harness import Cluster, cart_add, event, key_of
from tests.poison_worker import POISON_KEY, PoisonedPolicy
from tests.test_contract_properties import any_valid_event
from tests.test_integration import profile
from tests.test_journeys import MemoryStore
from tests.test_records import valid

KINDS = ("clickstream", "cart", "orders", "profiles", "feedback", "action_feedback", "merges")
MiB = 1 << 20
POISON = POISON_KEY.rpartition(":")[2]  # the customer id


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
    """A `Pipeline` over in-memory topics and a dict as the customers table, with ``policy``
    (default the catalog rules), journeys by ``outreach`` and ``settings`` (overrides of the
    defaults, held to their bounds); the producer's limit is the one the Faust app gets."""

    def __init__(
        self,
        policy: Policy | None = None,
        outreach: type[Outreach] = Outreach,
        **settings: object,
    ) -> None:
        nb_settings = replace(Settings.from_env({}), **settings)
        nb_settings.validate()
        self.topics = {kind: Topic(f"nextbest.{kind}") for kind in KINDS}
        by_name = {topic.name: topic for topic in self.topics.values()}
        app = SimpleNamespace(  # the topics by name: the pipeline re-sends a misrouted input
            conf=SimpleNamespace(**faust_config(nb_settings)), topic=lambda name, **_: by_name[name]
        )
        self.table: dict[bytes, bytes] = {}
        self.promotions = Topic("nextbest.promotions")
        self.notifications = Topic("nextbest.notifications")
        self.dead_letters = Topic("nextbest.dead-letters")
        nb = NextbestApp(
            settings=nb_settings,
            app=app,
            registry=MerchantRegistry.from_file(nb_settings.merchants_path),
            inputs=None,
            topic_kinds={topic.name: kind for kind, topic in self.topics.items()},
            promotions=self.promotions,
            notifications=self.notifications,
            dead_letters=self.dead_letters,
            merges=self.topics["merges"],
            customers=self.table,
        )
        policy = policy or ThresholdRulesPolicy()
        self.pipeline = Pipeline(nb, policy, outreach(nb, policy, MemoryStore()))
        self.offsets = itertools.count()

    def message(self, kind: str, value: dict | bytes, key: bytes | None = None) -> Event:
        raw = value if isinstance(value, bytes) else orjson.dumps(value)
        if key is None:
            key = key_of(value) if isinstance(value, dict) else b"uci-gift-shop:c:raw"
        message = SimpleNamespace(
            topic=f"nextbest.{kind}",
            partition=0,
            offset=next(self.offsets),
            key=key,
            value=raw,
            timestamp=1.0,
        )
        message.tp = (message.topic, 0)
        return Event(message)

    def process(self, *events: tuple[str, dict | bytes]) -> None:
        """One batch of (topic kind, value) inputs, each keyed as its producer should."""
        self.process_messages(*(self.message(kind, value) for kind, value in events))

    def process_messages(self, *messages: Event) -> None:
        asyncio.run(self.pipeline.process(list(messages)))

    def state(self, key: str) -> dict | None:
        raw = self.table.get(key.encode())
        return orjson.loads(raw) if raw is not None else None


def good_carts(n: int) -> list[tuple[str, dict]]:
    return [("cart", cart_add(f"good-{i}", 70.0, customer=f"g{i}")) for i in range(n)]


def wide_lines(count: int, tag: str) -> list[dict]:
    """``count`` lines of one unit at 1.0 whose product ids are as long as the contract allows
    (and products by the UCI rule: five digits first)."""
    return [
        {
            "product_id": f"{10000 + i}-{tag}-".ljust(PRODUCT_ID_MAX_LENGTH, "x"),
            "quantity": 1,
            "unit_price": 1.0,
        }
        for i in range(count)
    ]


# -- failing collaborators ----------------------------------------------------------------------


@dataclass(frozen=True)
class ScoredOffer(Offer):
    """An offer whose extra field orjson cannot write (a `Decimal` where a float belongs)."""

    def event_fields(self) -> dict:
        return {"score": Decimal("0.5")}


class UnwritableOfferPolicy(ThresholdRulesPolicy):
    """The catalog rules; the offers for the poison customer's carts are `ScoredOffer`s."""

    def decide_batch(self, contexts: Sequence[DecisionContext]) -> list[Offer | None]:
        offers = super().decide_batch(contexts)
        return [
            ScoredOffer(**vars(offer)) if offer and c.customer_key == POISON_KEY else offer
            for c, offer in zip(contexts, offers, strict=True)
        ]


class StateSpoilingPolicy(ThresholdRulesPolicy):
    """The catalog rules; deciding the cart event ``event_id``, it leaves a `Decimal` in the
    customer's state, which orjson then cannot write."""

    def __init__(self, event_id: str) -> None:
        self.event_id = event_id

    def decide_batch(self, contexts: Sequence[DecisionContext]) -> list[Offer | None]:
        for context in contexts:
            if context.cart_event_id == self.event_id:
                context.state["score"] = Decimal("0.5")
        return super().decide_batch(contexts)


class FailingJourneys(Outreach):
    """The journeys; a cart change of the poison customer raises in their input hook."""

    def on_input(
        self, key: str, entry: CustomerEntry, kind: str, data: dict, event: faust.EventT
    ) -> None:
        if kind == "cart" and key == POISON_KEY:
            raise KeyError(f"no journey state for {key}")
        super().on_input(key, entry, kind, data, event)


# -- the batch re-run: one event at a time, the failing one dead-lettered ------------------------


@pytest.mark.parametrize(
    ("policy", "outreach", "error"),
    [
        (PoisonedPolicy(), Outreach, "PolicyFailure: no decision for uci-gift-shop:c:poison"),
        (
            UnwritableOfferPolicy(),
            Outreach,
            "TypeError: Type is not JSON serializable: decimal.Decimal",
        ),
        (ThresholdRulesPolicy(), FailingJourneys, "KeyError: 'no journey state for "),
    ],
    ids=["the policy raises", "the offer cannot be written", "a journey hook raises"],
)
def test_an_event_whose_later_stage_fails_is_dead_lettered_and_the_batch_goes_on(
    policy, outreach, error
):
    """A valid cart of a customer with consent, among six others, on which a later stage (the
    policy, the offer's record, the journeys) raises: the batch is re-run one event at a time
    and only that event is lost, to the dead letters; its state change is discarded."""
    stream = Stream(policy, outreach)
    stream.process(("profiles", profile(POISON)))
    poison = cart_add("poison-1", 70.0, customer=POISON)
    before = stream.state(POISON_KEY)
    stream.process(*good_carts(2), ("cart", poison), *good_carts(4)[2:])

    offers = stream.promotions.records()
    assert sorted(o["customer_id"] for o in offers) == ["g0", "g1", "g2", "g3"]  # each once
    [letter] = stream.dead_letters.records()
    assert letter["reason"] == "processing_error" and letter["error"].startswith(error)
    assert (letter["source_topic"], letter["partition"]) == ("nextbest.cart", 0)
    assert letter["key"] == POISON_KEY
    assert orjson.loads(letter["payload"]) == poison
    assert stream.state(POISON_KEY) == before  # its state change was discarded
    assert stream.state("uci-gift-shop:c:g3")["cart"]["value"] == 70.0


def test_an_event_whose_state_cannot_be_serialised_is_dead_lettered():
    """A policy leaves a value in the customer's state that orjson cannot write, on the second
    of two carts: serialising the state fails before anything is sent, and that cart is
    dead-lettered instead of the worker crashing; the first cart's state is kept."""
    stream = Stream(StateSpoilingPolicy("q-2"))
    first = cart_add("q-1", 70.0, customer="q")
    second = cart_add("q-2", 80.0, customer="q")
    stream.process(*good_carts(3), ("cart", first), ("cart", second))

    assert sorted(o["cart_event_id"] for o in stream.promotions.records()) == [
        "good-0",
        "good-1",
        "good-2",
        "q-1",
    ]
    [letter] = stream.dead_letters.records()
    assert letter["reason"] == "processing_error"
    assert letter["error"] == "TypeError: Type is not JSON serializable: decimal.Decimal"
    assert orjson.loads(letter["payload"]) == second
    state = stream.state("uci-gift-shop:c:q")
    assert state["cart"]["lines"] == [["P-q-1", 1, 1.0]] and "score" not in state


@given(st.lists(any_valid_event(foreign=False), min_size=1, max_size=12), st.booleans())
def test_no_valid_event_breaks_a_stage_after_validation(events, consent):
    """Valid events of every type (any time from 2000 to 2099: no limit on the future) for one
    customer, with consent or without: none is dead-lettered after validation, which is why
    the tests above bring failing collaborators of their own."""
    stream = Stream(max_future_s=0)
    if consent:
        stream.process(("profiles", profile("h")))
    batch = []
    for kind, valid_event in events:
        valid_event["merchant_id"] = "uci-gift-shop"
        if valid_event.get("customer_id") is not None:
            valid_event["customer_id"] = "h"
        batch.append((kind, valid_event))
    stream.process(*batch)
    assert [d["error"] for d in stream.dead_letters.records()] == []


# -- size limits --------------------------------------------------------------------------------


def test_a_state_record_never_grows_past_the_limit():
    """With ``NEXTBEST_MAX_STATE_BYTES`` at 4 KiB, each valid cart change adds eight lines with
    64-character product ids: the change that would take the customer's record past the limit
    is dead-lettered (``state_too_large``), and so is each one after it; those before it are
    kept."""
    stream = Stream(max_state_bytes=4096)
    adds = [
        ("cart", {**cart_add(f"big-{i}", 1.0 + i, customer="big"), "lines": wide_lines(8, f"{i}")})
        for i in range(8)
    ]
    stream.process(*good_carts(1), *adds)

    letters = stream.dead_letters.records()
    assert letters and all(d["reason"] == "state_too_large" for d in letters)
    assert all("NEXTBEST_MAX_STATE_BYTES=4096" in d["error"] for d in letters)
    kept = len(adds) - len(letters)
    assert kept >= 2
    assert [orjson.loads(d["payload"])["event_id"] for d in letters] == [
        f"big-{i}" for i in range(kept, len(adds))
    ]
    state = stream.state("uci-gift-shop:c:big")
    assert len(orjson.dumps(state)) <= 4096
    assert state["cart"]["value"] == float(kept)  # the last change that fitted
    assert len(state["cart"]["lines"]) == 8 * kept
    assert stream.state("uci-gift-shop:c:g0") is not None
    assert all(len(value) <= 4096 for value in stream.table.values())


def test_the_producer_limit_is_the_faust_apps():
    settings = replace(Settings.from_env({}), producer_max_request_bytes=65536)
    app = faust.App("nextbest-test", **faust_config(settings))
    assert app.conf.producer_max_request_size == 65536
    assert Settings.from_env({}).producer_max_request_bytes == 1_000_000  # Faust's default


def test_an_output_over_the_producers_limit_is_never_sent():
    """A valid cart of 1,000 lines (about 100 KB, under a ``NEXTBEST_MAX_EVENT_BYTES`` of
    128 KiB) keyed by another customer must be sent again under its own key; with a 64 KiB
    ``NEXTBEST_PRODUCER_MAX_REQUEST_BYTES`` it cannot be: the cart is dead-lettered
    (``output_too_large``, an excerpt of it), the rest of its batch goes on and nothing is
    sent twice or over the limit."""
    stream = Stream(max_event_bytes=131072, producer_max_request_bytes=65536)
    wide = {**cart_add("wide-cart", 70.0, customer="wide"), "lines": wide_lines(1000, "w")}
    raw = orjson.dumps(wide)
    assert 65536 < len(raw) <= 131072
    misrouted = stream.message("cart", raw, key=b"uci-gift-shop:c:someone-else")
    stream.process_messages(*(stream.message(*cart) for cart in good_carts(2)), misrouted)

    [letter] = stream.dead_letters.records()
    assert letter["reason"] == "output_too_large"
    assert "a record for nextbest.cart would be" in letter["error"]
    assert letter["key"] == "uci-gift-shop:c:someone-else"
    assert letter["payload_truncated"] and letter["payload_bytes"] == len(raw)
    assert letter["payload_sha256"] == hashlib.sha256(raw).hexdigest()
    assert sorted(o["customer_id"] for o in stream.promotions.records()) == ["g0", "g1"]
    assert len(stream.notifications.sent) == 0  # g0 and g1 have no profile: no consent
    for topic in (stream.promotions, stream.notifications, stream.dead_letters):
        assert all(len(k or b"") + len(v) + RECORD_OVERHEAD <= 65536 for k, v in topic.sent)
    assert stream.state("uci-gift-shop:c:wide") is None  # re-sent to its key: never applied


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
    """A worker whose policy fails on one customer's carts (`tests.poison_worker`): a valid cart
    of that customer among four good ones. The good ones produce their offers, the poison one
    is dead-lettered (``processing_error``) with its origin, no offset moves past an event that
    was neither, and the agent never restarts."""
    cluster.start_worker("a", command=("tests.poison_worker",))
    cluster.send("profiles", profile(POISON))
    cluster.flush()
    cluster.wait_processed(1)
    poison = cart_add("poison-1", 70.0, customer=POISON)
    for i in range(4):
        cluster.send("cart", cart_add(f"good-{i}", 70.0, customer=f"g{i}"))
        if i == 1:
            cluster.send("cart", poison)
    cluster.flush()
    cluster.wait_processed(1 + 5, timeout=90)
    cluster.send("cart", cart_add("later", 70.0, customer="g9"))  # the agent's stream goes on
    cluster.flush()
    cluster.wait_processed(1 + 5 + 1, timeout=90)

    offers = cluster.read("promotions", min_count=5)  # the poisoned policy is the rules
    assert sorted(o["cart_event_id"] for o in offers) == [
        "good-0",
        "good-1",
        "good-2",
        "good-3",
        "later",
    ]
    [letter] = cluster.read("dead_letters", min_count=1)
    assert letter["reason"] == "processing_error"
    assert letter["error"] == f"PolicyFailure: no decision for {POISON_KEY}"
    assert letter["source_topic"] == cluster.settings.topics.cart
    assert letter["partition"] >= 0 and letter["offset"] >= 0
    assert letter["key"] == POISON_KEY
    assert orjson.loads(letter["payload"]) == poison
    assert cluster.metric("a", "nextbest_events_total") == 1 + 4 + 1
    assert cluster.crashes("a") == []


@pytest.mark.integration
def test_a_record_the_producer_refuses_is_counted_and_the_worker_goes_on(cluster):
    """With a 64 KiB ``NEXTBEST_PRODUCER_MAX_REQUEST_BYTES`` and the default 256 KiB state limit
    (a misconfiguration), four valid orders of 250 products with 64-character ids grow one
    customer's record to about 68 KB: its changelog record is refused. The worker logs and
    counts it instead of crashing, and keeps processing (without `RefusalTolerantProducer` it
    exited, and every restart exited again on the same customer)."""
    # the rules decide the carts: the offers below are theirs (the refusal is policy-blind)
    cluster.settings = replace(cluster.settings, producer_max_request_bytes=65536, policy="rules")
    port = cluster.start_worker("a")
    for i in range(4):
        order = event(
            "order",
            f"order-{i}",
            customer="wide",
            time=f"2011-11-1{i}T10:00:00Z",
            order_id=f"o-{i}",
            lines=wide_lines(250, f"o{i}"),
            total=250.0,
            currency="GBP",
        )
        cluster.send("orders", order)
    cluster.send("cart", cart_add("wide-cart", 100.0, customer="wide"))
    cluster.flush()
    cluster.wait_processed(5, timeout=120)
    cluster.send("cart", cart_add("after", 70.0, customer="wide"))
    cluster.send("cart", cart_add("other", 70.0, customer="other"))
    cluster.flush()
    cluster.wait_processed(7, timeout=90)

    assert cluster.metric("a", "nextbest_output_errors_total") >= 1
    assert cluster.metric("a", "nextbest_events_total") == 7
    assert cluster.metric("a", "nextbest_dead_letters_total") == 0  # every input was valid
    offers = cluster.read("promotions", min_count=2)
    assert {o["cart_event_id"] for o in offers} == {"wide-cart", "other"}  # "after": same offer
    state = cluster.state(port, "uci-gift-shop:c:wide")
    assert state["cart"]["value"] == 70.0 and len(state["orders"]) == 4
    assert cluster.crashes("a") == []
