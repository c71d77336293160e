"""A cart decision's inputs are as of its cart event, not as of the end of its micro-batch.

The pipeline applies a batch's events to the customers' states first and decides the batch's
cart changes after; each decision reads `DecisionContext.view`, the parts of the state its cart
event left (`customer_state.decision_view`). So the promotion policy's features of a cart change
are those of the same cart change in a batch that ends with it, whatever comes after it in its
own batch. Driven through `agents.pipeline.Pipeline` over in-memory topics and a dict table
(`tests.test_pipeline_isolation.Stream`), with the real promotion policy and state rules.
"""

from __future__ import annotations

from datetime import UTC, datetime

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.engagement import Engagement
from models.next_purchase.serving import _identity, cart_products, served_history
from streams.decisions import DecisionContext
from streams.engagement.ranking import ACTION_FEATURE_NAMES
from streams.merchants.catalog import DEFAULT_MERCHANTS
from streams.promotion.experiments import Experiment
from streams.promotion.features import FEATURE_NAMES
from streams.promotion.policy import PromotionPolicy
from streams.state import customer_state
from tests.harness import cart_add, event, order_placed
from tests.promo_fixtures import shop
from tests.test_pipeline_isolation import Stream

MERCHANT = "uci-gift-shop"
T0 = datetime(2011, 11, 14, 10, tzinfo=UTC).timestamp()
FEATURE = {name: i for i, name in enumerate(FEATURE_NAMES)}


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def promotion_stream() -> tuple[Stream, PromotionPolicy]:
    policy = PromotionPolicy(Experiment(id="t", holdout=0.0))
    return Stream(policy), policy


def decided(stream: Stream, policy: PromotionPolicy, *batches: list[tuple[str, dict]]) -> dict:
    """Each batch through the pipeline in turn; the decision records by cart event id."""
    records = {}
    for batch in batches:
        stream.process(*batch)
        logged, _ = policy.drain_records()
        records.update((r["cart_event_id"], r) for r in logged)
    return records


def order(event_id: str, ts: float, product: str, customer: str = "c1") -> tuple[str, dict]:
    placed = order_placed(
        event_id, f"o-{event_id}", 30.0, product, customer=customer, merchant=MERCHANT, time=iso(ts)
    )
    return ("orders", placed)


def cart(event_id: str, ts: float, product: str, customer: str = "c1") -> tuple[str, dict]:
    return ("cart", cart_add(event_id, 60.0, product=product, customer=customer, time=iso(ts)))


def test_an_order_later_in_the_batch_is_not_in_the_cart_decisions_features():
    """A cart change and the order it turns into, in one batch: the decision's features are
    those of the cart change decided alone (the order of a week ago is the last one, the cart
    holds its line), and so are the record's cart products."""
    history = [order("past", T0 - 7 * 86400, "22423")]
    visit = [cart("cart-1", T0, "85123A"), order("buy-1", T0 + 600, "85123A")]

    together, policy = promotion_stream()
    batch = decided(together, policy, history, visit)["cart-1"]
    alone, policy = promotion_stream()
    one = decided(alone, policy, history, visit[:1], visit[1:])["cart-1"]

    assert batch["features"] == one["features"]
    assert batch["cart_products"] == one["cart_products"] == ["85123A"]
    features = one["features"]
    assert features[FEATURE["has_orders"]] == 1.0
    assert features[FEATURE["recency"]] > 0.3  # a week since the last order, not 0
    assert features[FEATURE["cart_lines"]] > 0  # the cart before the order emptied it
    assert together.state(f"{MERCHANT}:c:c1")["rfm"]["frequency"] == 2  # the order was applied


def test_the_next_purchase_history_and_cart_are_those_of_the_cart_event():
    """The model's history, cache identity and cart of a decision made after an order of the
    same batch was applied (placed at the cart's second): the cart event's, not the order's."""
    state = customer_state.new_state()
    placed = {
        "event_id": "o1",
        "event_type": "order",
        "order_id": "o1",
        "total": 10.0,
        "lines": [{"product_id": "22423", "quantity": 1, "unit_price": 10.0}],
        "_ts": T0 - 86400,
    }
    customer_state.apply_event(state, "orders", placed)
    lines = [{"product_id": "85123A", "quantity": 1, "unit_price": 5.0}]
    added = {"event_id": "c1", "event_type": "cart_add", "lines": lines, "_ts": T0}
    customer_state.apply_event(state, "cart", {**added, "cart_value": 5.0, "currency": "GBP"})
    view = customer_state.decision_view(state)
    later = {**placed, "event_id": "o2", "order_id": "o2", "_ts": T0}
    customer_state.apply_event(state, "orders", {**later, "lines": lines, "total": 5.0})
    ctx = DecisionContext(shop(), "shop:c:1", state, 5.0, "GBP", T0, "c1", 1, as_of=view)

    assert cart_products(ctx) == {"85123A"}
    assert _identity(ctx) == ((T0 - 86400, "o1"),)
    assert served_history(ctx.view, ctx.ts) == [(T0 - 86400, ["22423"])]
    assert len(state["orders"]) == 2 and not state["cart"]["lines"]  # the state moved on


# -- any sequence of a few customers' events ----------------------------------------------------

PRODUCTS = ("85123A", "22423", "47566", "84879")


@st.composite
def visits(draw: st.DrawFn) -> list[tuple[str, dict]]:
    """A batch of 2..10 events of two customers, in event-time order (ties included): cart
    additions and removals, orders, product views, offer feedback and profiles."""
    count = draw(st.integers(2, 10))
    gaps = draw(st.lists(st.sampled_from((0, 30, 600, 86400, 40 * 86400)), min_size=count))
    events = []
    ts = T0
    for i, gap in enumerate(gaps[:count]):
        ts += gap
        customer = draw(st.sampled_from(("c1", "c2")))
        product = draw(st.sampled_from(PRODUCTS))
        kind = draw(st.sampled_from(("add", "add", "remove", "order", "view", "opened", "profile")))
        envelope = {"customer": customer, "time": iso(ts)}
        if kind in ("add", "remove"):
            line = {"product_id": product, "quantity": draw(st.integers(1, 3)), "unit_price": 4.0}
            value = draw(st.sampled_from((0.0, 12.0, 48.0, 130.0)))
            events.append(
                (
                    "cart",
                    event(
                        f"cart_{kind}",
                        f"e{i}",
                        lines=[line],
                        cart_value=value,
                        currency="GBP",
                        **envelope,
                    ),
                )
            )
        elif kind == "order":
            events.append(order(f"e{i}", ts, product, customer))
        elif kind == "view":
            events.append(
                ("clickstream", event("product_view", f"e{i}", product_id=product, **envelope))
            )
        elif kind == "opened":
            events.append(("feedback", event("offer_opened", f"e{i}", offer_id="o", **envelope)))
        else:
            channels = {"email": f"{customer}@example.com", "sms": None, "push": None}
            profile = event(
                "profile",
                f"e{i}",
                channels=channels,
                country=draw(st.sampled_from(("EIRE", "France"))),
                **envelope,
            )
            events.append(("profiles", profile))
    return events


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=visits(), batch=visits())
def test_each_cart_decisions_inputs_are_those_of_the_batch_cut_at_its_event(history, batch):
    """For any history and batch, every cart decision of the batch logs the features, cart
    products and country it logs when the batch ends at its cart event."""
    batch = [(kind, {**e, "event_id": f"b-{e['event_id']}"}) for kind, e in batch]
    whole, policy = promotion_stream()
    records = decided(whole, policy, history, batch)
    for i, (kind, cart_event) in enumerate(batch):
        if kind != "cart" or cart_event["event_id"] not in records:
            continue
        cut, cut_policy = promotion_stream()
        expected = decided(cut, cut_policy, history, batch[: i + 1])[cart_event["event_id"]]
        got = records[cart_event["event_id"]]
        for field in ("features", "cart_products", "country", "horizon_margin", "repeat_of"):
            assert got[field] == expected[field], field


def ranking_stream(tmp_path) -> tuple[Stream, PromotionPolicy]:
    """The demo merchant ranking its engagement actions on carts (``combine: both``), with the
    promotion policy for everyone."""
    merchants = yaml.safe_load(DEFAULT_MERCHANTS.read_text())
    merchants["merchants"][MERCHANT]["engagement"].update(on_cart=True, combine="both")
    path = tmp_path / "merchants.yaml"
    path.write_text(yaml.safe_dump(merchants))
    policy = PromotionPolicy(Experiment(id="t", holdout=0.0))
    stream = Stream(policy, merchants_path=path)
    stream.pipeline.engagement = Engagement()
    return stream, policy


def test_a_carts_engagement_ranking_reads_the_customer_as_of_the_cart_event(tmp_path):
    """The take window a cart's first action opens keeps the action features of the cart change
    decided alone, though the order the cart turned into was applied before the decision."""
    history = [order("past", T0 - 7 * 86400, "22423")]
    visit = [cart("cart-1", T0, "85123A"), order("buy-1", T0 + 600, "85123A")]
    windows = []
    for batches in ((history, visit), (history, visit[:1], visit[1:])):
        stream, policy = ranking_stream(tmp_path)
        decided(stream, policy, *batches)
        state = stream.state(f"{MERCHANT}:c:c1")
        [window] = state["engagement"]["open"]  # the cart's first action's
        windows.append(window)
    together, alone = windows
    assert together == alone
    features = dict(zip(ACTION_FEATURE_NAMES, together[6], strict=True))
    assert features["recency"] > 0.3 and features["cart_lines"] > 0  # not the order's
