"""The demo's promotion part: simulated responses, counterfactuals and the summary's figures."""

import math
from datetime import datetime

import pytest

from agents.tools.demo_promotion import (
    BanditMirror,
    budgets,
    closed,
    cumulative_profit,
    customer_conversion,
    decision_line,
    decisions_by_action,
    learned_per_action,
    proportion_interval,
)
from agents.tools.demo_responses import (
    Customer,
    Session,
    booked_profit,
    counterfactual,
    expected_profit,
    plan,
    record_action,
    redeems,
    rules_action,
)
from agents.tools.replay import EventBuilder, InvoiceLine, ReplayEvent
from models.promotion.simulator import offer_take_up
from streams.promotion.actions import Action, candidate_actions, no_offer
from streams.promotion.bandit import LinearThompson
from streams.promotion.objective import ObjectiveConfig
from streams.promotion.policy import PromotionPolicy
from tests.promo_fixtures import T0, context, shop

BASE = math.log(0.3 / 0.7)


def reward(arm, customer, purchased=False, profit=0.0, promotion=None, discount=0.0, **extra):
    return {
        "decision_id": extra.pop("decision_id", f"{arm}-{customer}-{profit}"),
        "arm": arm,
        "customer_key": f"shop:c:{customer}",
        "purchased": purchased,
        "profit": profit,
        "promotion_id": promotion,
        "discount_cost": discount,
        "event_time": extra.pop("event_time", "2011-11-14T09:00:00Z"),
        **extra,
    }


def decision(value=120.0, customer="1"):
    """A real decision record of the promotion policy on the fixtures' shop."""
    policy = PromotionPolicy()
    return policy.decide([context(shop(), value, customer)])[0].record


# -- statistics and grouping ------------------------------------------------------------------


def test_wilson_interval_of_a_share():
    half = proportion_interval(5, 10)
    assert half.value == 0.5
    assert half.low == pytest.approx(0.2366, abs=1e-4)
    assert half.high == pytest.approx(0.7634, abs=1e-4)
    # at 0 and 1 the interval keeps a width (the normal one would collapse to a point)
    none = proportion_interval(0, 10)
    assert none.value == 0.0 and none.low == pytest.approx(0.0, abs=1e-12)
    assert none.high == pytest.approx(0.2775, abs=1e-4)
    assert proportion_interval(36, 36).low < 1.0
    assert math.isnan(proportion_interval(0, 0).value)


def test_conversion_is_per_customer_any_reward_purchased():
    rewards = [
        reward("learned", "1", purchased=False, decision_id="a"),
        reward("learned", "1", purchased=True, decision_id="b"),  # same customer: converted
        reward("learned", "2", purchased=False, decision_id="c"),
        reward("holdout", "3", purchased=True, decision_id="d"),
    ]
    conversion = customer_conversion(rewards)
    assert conversion["learned"].value == 0.5
    assert conversion["holdout"].value == 1.0


def test_decisions_by_action_and_closed_windows():
    decisions = [
        {"decision_id": "a", "arm": "learned", "action": "none"},
        {"decision_id": "b", "arm": "learned", "action": "percent_off:p10"},
        {"decision_id": "c", "arm": "learned", "action": "none"},
        {"decision_id": "d", "arm": "holdout", "action": "percent_off:p10"},
    ]
    counts = decisions_by_action(decisions)
    assert counts["learned"] == {"none": 2, "percent_off:p10": 1}
    assert list(counts) == ["holdout", "learned"]
    assert [d["decision_id"] for d in closed(decisions, [reward("x", "1", decision_id="b")])] == [
        "b"
    ]


def test_budgets_count_booked_discounts_and_open_offers():
    decisions = [
        {"decision_id": "a", "sent": True, "promotion_id": "p10", "max_discount": 12.0},
        {"decision_id": "b", "sent": True, "promotion_id": "p10", "max_discount": 8.0},
        {"decision_id": "c", "sent": False, "promotion_id": "fs", "max_discount": None},
    ]
    rewards = [reward("learned", "1", promotion="p10", discount=10.5, decision_id="a")]
    rows = budgets({"fs": 100.0, "p10": 500.0, "p15": None}, decisions, rewards)
    # fs: only an unsent decision, p15: never offered -> left out
    assert [(b.promotion, b.budget, b.discount, b.held) for b in rows] == [
        ("p10", 500.0, 10.5, 8.0)
    ]


def test_learned_per_action_reports_counts_and_uplift():
    model = LinearThompson()
    features = [0.0] * (model.dim - 1)
    for i in range(40):
        model.update(f"n{i}", features, "none", i % 4 == 0, False)  # 25% bought
        model.update(f"o{i}", features, "percent_off:p10", i % 2 == 0, i % 4 == 0)  # 50%
    rows = {row.action: row for row in learned_per_action(model)}
    assert rows["none"].rewards == 40 and rows["none"].bought == 0.25
    assert rows["none"].redeemed is None and rows["none"].uplift == 0.0
    offer = rows["percent_off:p10"]
    assert offer.bought == 0.5 and offer.redeemed == 0.5
    assert offer.uplift > 0 and offer.p_buy > rows["none"].p_buy
    assert learned_per_action(LinearThompson()) == []


def test_cumulative_profit_per_arm_in_event_time_order():
    rewards = [
        reward("learned", "1", profit=5.0, event_time="2011-11-14T10:00:00Z"),
        reward("learned", "2", profit=-2.0, event_time="2011-11-14T09:00:00Z"),
        reward("holdout", "3", profit=4.0, event_time="2011-11-14T11:00:00Z"),
    ]
    series = cumulative_profit(rewards)
    assert list(series) == ["holdout", "learned"]
    times, totals = series["learned"]
    assert totals == [-2.0, 3.0]
    assert times[0] == datetime.fromisoformat("2011-11-14T09:00:00Z")


# -- the simulated customers ------------------------------------------------------------------


def test_take_up_grows_with_the_discount_and_is_zero_without():
    assert offer_take_up(BASE, 0.63, 0.0) == 0.0
    ten, twenty = offer_take_up(BASE, 0.63, 0.10), offer_take_up(BASE, 0.63, 0.20)
    assert 0 < ten < twenty < 1
    p0, p = 0.3, 1 / (1 + math.exp(-(BASE + 0.63)))
    assert ten == pytest.approx((p - p0) / (1 - p0))


def test_customers_are_reproducible_by_key_and_seed():
    assert Customer.draw("shop:c:1", 0.63, 0) == Customer.draw("shop:c:1", 0.63, 0)
    assert Customer.draw("shop:c:1", 0.63, 0) != Customer.draw("shop:c:2", 0.63, 0)
    assert Customer.draw("shop:c:1", 0.63, 0) != Customer.draw("shop:c:1", 0.63, 1)


def test_a_buyer_redeems_tiers_nudges_reaching_the_tier_and_coupons_bought():
    merchant = shop()
    order = {"total": 180.0, "lines": [{"product_id": "A1", "quantity": 1, "unit_price": 180}]}
    actions = {a.kind: a for a in candidate_actions(merchant, 160.0, "GBP", T0)}
    assert redeems(actions["percent_off"], order)
    assert not redeems(actions["none"], order)
    nudge = actions["threshold_nudge"]  # to the 200 tier
    assert not redeems(nudge, order)
    assert redeems(nudge, {**order, "total": 205.0})
    coupon = Action("product_coupon:coupon", "product_coupon", 160.0, 170.0, 2.0, product_id="A1")
    assert redeems(coupon, order)
    assert not redeems(coupon, {**order, "lines": [{"product_id": "B2"}]})


def order_event(total: float, abandoned: bool) -> Session:
    value = {
        "event_type": "order",
        "order_id": "536365",
        "lines": [{"product_id": "A1", "quantity": 1, "unit_price": total}],
        "total": total,
        "customer_id": "1",
        "session_id": "web-536365",
    }
    event = ReplayEvent(T0, "orders", "shop:c:1", value)
    return Session("536365", "shop:c:1", T0, event, abandoned)


def test_booked_profit_is_the_reward_joins_pricing():
    merchant = shop()  # margin 0.4
    record = decision(120.0)
    order = order_event(100.0, False).order.value
    ten = next(
        a for a in candidate_actions(merchant, 100.0, "GBP", T0) if a.id == "percent_off:p10"
    )
    # the customer paid 100 after 10% off, at most the offer's stated cap (10% of the cart)
    discount = min(100.0 * 10 / 90, ten.discount)
    assert discount == 10.0
    assert booked_profit(record, ten, order, merchant) == pytest.approx(
        0.4 * (100.0 + discount) - discount, abs=0.01
    )
    assert booked_profit(record, no_offer(100.0), order, merchant) == pytest.approx(40.0)


def test_expected_profit_converts_abandoned_carts_with_the_take_up():
    merchant = shop()
    record = decision(120.0)
    who = Customer(BASE, 0.63)
    ten = next(
        a for a in candidate_actions(merchant, 100.0, "GBP", T0) if a.id == "percent_off:p10"
    )
    bought = order_event(100.0, False)
    abandoned = order_event(100.0, True)
    full = booked_profit(record, ten, bought.order.value, merchant)
    assert expected_profit(record, bought, ten, who, merchant) == pytest.approx(full)
    assert expected_profit(record, abandoned, ten, who, merchant) == pytest.approx(
        offer_take_up(BASE, 0.63, ten.depth) * full
    )
    assert expected_profit(record, abandoned, no_offer(100.0), who, merchant) == 0.0


def test_rules_action_is_the_threshold_rules_offer():
    merchant = shop()
    low = {**decision(20.0), "event_time": "2012-01-02T00:00:00Z"}
    assert rules_action(low, merchant).id == "threshold_nudge:fs"  # 20 -> 30 within reach
    high = {**decision(250.0), "event_time": "2012-01-02T00:00:00Z"}
    assert rules_action(high, merchant).id == "percent_off:p15"


def test_counterfactual_prices_the_same_visits_three_ways():
    merchant = shop()
    record = {**decision(100.0), "arm": "learned", "sent": False, "action": "none"}
    sessions = {"536365": order_event(100.0, True), "536366": order_event(100.0, False)}
    answered = {"536365": record, "536366": record}
    result = counterfactual(answered, sessions, merchant, lambda key: Customer(BASE, 0.63))
    cf = result["learned"]
    assert cf.carts == 2
    assert cf.policy == cf.no_offer == pytest.approx(40.0)  # only the bought visit earns
    rules = rules_action(record, merchant)
    expected = sum(
        expected_profit(record, s, rules, Customer(BASE, 0.63), merchant) for s in sessions.values()
    )
    assert cf.rules == pytest.approx(expected)


def test_record_action_keeps_the_options_economics():
    merchant = shop()
    record = decision(250.0)
    action = record_action(record, merchant)
    option = next(o for o in record["options"] if o["action"] == record["action"])
    assert (action.id, action.basket, action.discount) == (
        record["action"],
        option["basket"],
        option["discount"],
    )


def test_plan_holds_back_the_abandoned_visits_orders():
    when = datetime(2011, 11, 14, 9)

    def rows(invoice: str, customer: str) -> list[InvoiceLine]:
        return [InvoiceLine(invoice, "85123A", "HEART", 2, when, 2.55, customer, "United Kingdom")]

    builder = EventBuilder("shop")
    events = builder.invoice_events(rows("536365", "1")) + builder.invoice_events(
        rows("536366", "2")
    )
    abandon = EventBuilder("shop", abandon_share=1.0)  # every known customer's visit
    sent, sessions, cart_invoice = plan(events, abandon)
    assert not [e for e in sent if e.value["event_type"] in ("order", "checkout")]
    assert sessions["536365"].abandoned and sessions["536365"].order is not None
    assert sessions["536365"].end == max(e.ts for e in sent if e.topic_kind == "cart")
    assert set(cart_invoice.values()) == {"536365", "536366"}
    kept, sessions, _ = plan(events, EventBuilder("shop"))
    assert len(kept) == len(events) and not sessions["536366"].abandoned
    assert sessions["536366"].end == sessions["536366"].order.ts


# -- the tail ---------------------------------------------------------------------------------


def test_decision_line_shows_arm_action_propensity_value_and_sent():
    record = decision(120.0)
    values = BanditMirror(ObjectiveConfig()).expected_incremental(record)
    assert values["none"] == 0.0 and set(values) == {o["action"] for o in record["options"]}
    line = decision_line(record, values)
    assert record["arm"] in line and record["action"] in line
    assert f"p={record['propensity']:.2f}" in line and "E[Δprofit] £" in line
    assert ("not sent" in line) != record["sent"]


def test_the_tail_keeps_decisions_and_passes_over_repeats_of_them():
    """A cart event that repeats its cart's decision has its own record (``repeat_of``, no
    options or features): the tail neither counts it as a decision nor prices it (it crashed
    the tail's thread on the empty features)."""
    from agents.runtime.settings import Settings
    from agents.tools.demo import Tail

    tail = Tail(Settings(), echo=True, bandit=BanditMirror(ObjectiveConfig()))
    try:
        first = decision(120.0)
        repeat = {
            **first,
            "decision_id": "r-1",
            "repeat_of": first["decision_id"],
            "options": [],
            "features": [],
            "sent": False,
        }
        tail._promotion("decide", first)
        tail._promotion("decide", repeat)
    finally:
        tail.consumer.close()
    assert list(tail.decisions) == [first["decision_id"]]
    assert tail.counts["repeat"] == 1
