"""The promotion policy behind the Policy protocol: holdout, A/B arms, decision records that
match the decisions topic's contract, one decision per cart, learning from rewards."""

from __future__ import annotations

import dataclasses
import json

import pytest
from jsonschema import Draft202012Validator

from schemas.events import DecisionRecord, RewardRecord
from schemas.json_schema import build_schemas
from schemas.keys import decision_id_for, offer_id_for
from streams.decisions import DecisionContext, Policy
from streams.promotion import rewards
from streams.promotion.experiments import HOLDOUT, Arm, Experiment, assign
from streams.promotion.policy import PromotionPolicy
from streams.state import customer_state
from tests.promo_fixtures import HOUR, SHOP, T0, cart_state, context, shop

SCHEMAS = build_schemas()


def validate(name: str, record: dict) -> None:
    Draft202012Validator(SCHEMAS[name]).validate(record)


class Signals:
    coupon_product_id = "SKU9"
    coupon_probability = 0.4
    purchase_propensity = 0.8
    coupon_price = 20.0


def test_is_a_policy_and_logs_every_decision():
    policy: Policy = PromotionPolicy(signals=lambda contexts: [Signals()] * len(contexts))
    merchant = shop()
    contexts = [context(merchant, 160.0, customer=str(i), event_id=f"e{i}") for i in range(40)]
    offers = policy.decide_batch(contexts)
    records, evicted = policy.drain_records()
    assert len(offers) == len(records) == 40 and evicted == []
    assert policy.drain_records() == ([], [])
    for ctx, offer, record in zip(contexts, offers, records, strict=True):
        validate("decisions.v1.json", record)
        DecisionRecord.from_data(record)
        assert record["decision_id"] == decision_id_for(ctx.customer_key, ctx.cart_event_id)
        assert record["arm"] == assign(policy.experiment, ctx.customer_key)
        options = {o["action"]: o["probability"] for o in record["options"]}
        assert sum(options.values()) == pytest.approx(1.0, abs=1e-5)
        assert options[record["action"]] == pytest.approx(record["propensity"], abs=1e-6)
        assert "product_coupon:coupon" in options
        if record["arm"] == HOLDOUT or record["action"] == "none":
            assert offer is None and not record["sent"] and record["offer_id"] is None
        else:
            assert record["sent"] and offer.key == record["action"]
            assert record["offer_id"] == offer_id_for(
                ctx.customer_key, ctx.cart_event_id, offer.key
            )
            assert record["max_discount"] > 0
    arms = {r["arm"] for r in records}
    assert arms == {"learned", HOLDOUT}
    # holdout decisions are computed (an action with its propensity) but nothing is sent
    held = [r for r in records if r["arm"] == HOLDOUT]
    assert held and all(0 < r["propensity"] <= 1 for r in held)


def test_one_decision_per_cart_until_the_allowed_actions_change():
    experiment = Experiment(id="t", holdout=0.0, arms=(Arm("all", 1.0, "static:percent_off"),))
    policy = PromotionPolicy(experiment, default_variant="static:percent_off")
    merchant = shop()
    ctx = context(merchant, 100.0, event_id="e1")
    (first,) = policy.decide([ctx])
    assert first.record is not None and first.offer.key == "percent_off:p10"
    state = cart_state(120.0, T0 + 60, "e2", ctx.state)  # same cart, a bit more
    (again,) = policy.decide(
        [type(ctx)(merchant, ctx.customer_key, state, 120.0, "GBP", T0 + 60, "e2")]
    )
    assert again.offer.key == "percent_off:p10" and again.action is None  # a repeat...
    repeat = again.record  # ...with a record of its own that opens no window
    validate("decisions.v1.json", repeat)
    assert repeat["decision_id"] == decision_id_for(ctx.customer_key, "e2")
    assert repeat["repeat_of"] == first.record["decision_id"] and first.record["repeat_of"] is None
    assert repeat["cart_event_id"] == "e2" and repeat["cart_value"] == 120.0
    for field in ("arm", "policy", "model_version", "action", "action_kind", "promotion_id"):
        assert repeat[field] == first.record[field]
    assert repeat["propensity"] == first.record["propensity"]
    assert not repeat["sent"] and repeat["offer_id"] is None and repeat["max_discount"] is None
    assert repeat["options"] == repeat["features"] == []
    assert first.record["cart_products"] == ["A1"] and first.record["country"] is None
    assert repeat["cart_products"] is None and repeat["country"] is None
    assert [p["decision_id"] for p in state["promo"]["pending"]] == [first.record["decision_id"]]
    # the reminder of the cart asks about its latest event: the repeat, logged already
    reminder = type(ctx)(merchant, ctx.customer_key, state, 120.0, "GBP", T0 + HOUR, "e2")
    (reminded,) = policy.decide([reminder])
    assert reminded.record is None and reminded.offer == again.offer
    state = cart_state(170.0, T0 + 120, "e3", state)  # now within reach of the 15% tier
    (new,) = policy.decide(
        [type(ctx)(merchant, ctx.customer_key, state, 170.0, "GBP", T0 + 120, "e3")]
    )
    assert new.record is not None and new.record["decision_id"] != first.record["decision_id"]
    assert new.record["repeat_of"] is None and new.action is not None
    assert len(state["promo"]["pending"]) == 2


def test_a_sticky_decision_kept_before_repeats_were_logged_is_decided_again():
    """A cart's sticky decision stored by an older worker has no decision id for a repeat to
    name: the next cart change makes a new decision (a new record, its own window)."""
    experiment = Experiment(id="t", holdout=0.0, arms=(Arm("all", 1.0, "static:percent_off"),))
    policy = PromotionPolicy(experiment, default_variant="static:percent_off")
    merchant = shop()
    ctx = context(merchant, 100.0, event_id="e1")
    policy.decide([ctx])
    sticky = ctx.state["promo"]["cart"]
    ctx.state["promo"]["cart"] = {k: sticky[k] for k in ("generation", "candidates", "arm")} | {
        "action": sticky["action"],
        "sent": sticky["sent"],
    }
    state = cart_state(120.0, T0 + 60, "e2", ctx.state)
    (again,) = policy.decide(
        [type(ctx)(merchant, ctx.customer_key, state, 120.0, "GBP", T0 + 60, "e2")]
    )
    assert again.action is not None and again.record["repeat_of"] is None
    assert len(state["promo"]["pending"]) == 2


def test_a_decision_carries_the_carts_products_and_the_customers_country():
    policy = PromotionPolicy(Experiment(id="t", holdout=0.0))
    state = customer_state.new_state()
    profile = {"event_type": "profile", "event_id": "p1", "_ts": T0 - 60, "channels": {}}
    customer_state.apply_event(state, "profiles", {**profile, "country": "EIRE"})
    cart_state(40.0, T0 - 30, "e0", state)
    state["cart"]["lines"].insert(0, ["B2", 1, 5.0])
    (d,) = policy.decide([context(shop(), 100.0, event_id="e1", state=state)])
    validate("decisions.v1.json", d.record)
    DecisionRecord.from_data(d.record)
    assert d.record["cart_products"] == ["B2", "A1"] and d.record["country"] == "EIRE"
    # the cart as its event left it, when a later event of the batch emptied it (an order)
    ctx = context(shop(), 100.0, customer="2", event_id="e2")
    ctx = dataclasses.replace(ctx, as_of=customer_state.decision_view(ctx.state))
    ctx.state["cart"]["lines"] = []
    (d,) = policy.decide([ctx])
    assert d.record["cart_products"] == ["A1"]


def test_ab_arms_use_their_variant():
    experiment = Experiment(
        id="ab", holdout=0.0, arms=(Arm("rules", 1.0, "rules"), Arm("none", 1.0, "static:none"))
    )
    policy = PromotionPolicy(experiment)
    merchant = shop()
    for i in range(30):
        (d,) = policy.decide([context(merchant, 100.0, customer=str(i), event_id=f"e{i}")])
        expected = {"rules": "percent_off:p10", "none": "none"}[d.record["arm"]]
        assert d.record["action"] == expected and d.record["propensity"] == 1.0
        assert d.record["policy"] in ("threshold-rules/1", "static:none")


def test_rewards_teach_the_bandit_and_validate_against_the_contract():
    policy = PromotionPolicy(Experiment(id="t", holdout=0.0))
    merchant = shop()
    decided = []
    for i in range(30):
        ctx = context(merchant, 160.0, customer=str(i), event_id=f"e{i}")
        (d,) = policy.decide([ctx])
        decided.append((ctx, d))
    closed = []
    for k, (ctx, d) in enumerate(decided):
        if k % 2 and d.record["sent"]:
            feedback = {
                "event_type": "offer_redeemed",
                "offer_id": d.record["offer_id"],
                "_ts": T0 + 60,
            }
            rewards.on_feedback(ctx.state, feedback, policy.ledgers)
        if k % 2:
            rewards.on_order(
                ctx.state,
                {
                    "event_type": "order",
                    "order_id": f"o{k}",
                    "total": 150.0,
                    "_ts": T0 + 120,
                    "lines": [{"product_id": "A1", "quantity": 1, "unit_price": 150.0}],
                },
            )
        closed += rewards.close_due(ctx.state, T0 + 49 * HOUR)
    assert len(closed) == 30
    for reward in closed:
        validate("rewards.v1.json", reward)
        RewardRecord.from_data(reward)
        bought = [{"product_id": "A1", "value": 150.0}] if reward["purchased"] else None
        assert reward["order_products"] == bought
    assert sum(r["purchased"] for r in closed) == 15
    before = policy.variants["bandit"].model("shop").version
    assert policy.learn(closed) == 30
    assert policy.learn(closed) == 0  # replayed rewards
    assert policy.variants["bandit"].model("shop").version != before
    state = json.loads(json.dumps(policy.state_dict()))
    fresh = PromotionPolicy(Experiment(id="t", holdout=0.0))
    fresh.load_state_dict(state)
    assert fresh.variants["bandit"].model("shop").updates == 30


def test_unknown_variant_is_an_error():
    with pytest.raises(ValueError, match="unknown policy variant"):
        PromotionPolicy(Experiment(id="x", arms=(Arm("a", 1.0, "magic"),)))


# -- replays: one decision per decision id, the same draws in any batch ----------------------


def bandit_contexts(merchant, count: int) -> list:
    return [context(merchant, 160.0, customer=str(i), event_id=f"e{i}") for i in range(count)]


def test_a_decisions_draws_do_not_depend_on_the_batch_it_comes_in():
    """A crash replays a cart in another batch: the decision draws the same (its own random
    stream, seeded by its decision id), so it decides the same on the same statistics."""
    merchant = shop()
    one_batch = PromotionPolicy(Experiment(id="t", holdout=0.0)).decide(
        bandit_contexts(merchant, 40)
    )
    alone = []
    policy = PromotionPolicy(Experiment(id="t", holdout=0.0))
    for ctx in reversed(bandit_contexts(merchant, 40)):
        alone.extend(policy.decide([ctx]))
    alone.reverse()
    first = [(d.record["action"], d.record["propensity"]) for d in one_batch]
    assert first == [(d.record["action"], d.record["propensity"]) for d in alone]
    assert len({action for action, _ in first}) > 1  # the draws do matter
    other_seed = PromotionPolicy(Experiment(id="t", holdout=0.0), seed=1).decide(
        bandit_contexts(merchant, 40)
    )
    assert first != [(d.record["action"], d.record["propensity"]) for d in other_seed]


def test_a_decision_id_is_decided_once_a_reminder_gets_its_offer():
    """The abandoned-cart journey asks again for the cart event's offer, later (other
    candidates): the decision is not made again, nothing more is logged."""
    experiment = Experiment(id="t", holdout=0.0, arms=(Arm("all", 1.0, "static:percent_off"),))
    policy = PromotionPolicy(experiment, default_variant="static:percent_off")
    merchant = shop()
    ctx = context(merchant, 100.0, event_id="e1")
    (first,) = policy.decide([ctx])
    assert first.record["sent"] and first.offer.key == "percent_off:p10"
    later = type(ctx)(merchant, ctx.customer_key, ctx.state, 100.0, "GBP", T0 + HOUR, "e1")
    signals = PromotionPolicy(
        experiment, default_variant="static:percent_off", signals=lambda c: [Signals()] * len(c)
    )
    signals.ledgers = policy.ledgers
    (again,) = signals.decide([later])  # a coupon candidate now: other candidates
    assert again.record is None and again.offer == first.offer
    none = Experiment(id="n", holdout=0.0, arms=(Arm("all", 1.0, "static:none"),))
    quiet = PromotionPolicy(none, default_variant="static:none")
    other = context(merchant, 100.0, customer="2", event_id="e2")
    (nothing,) = quiet.decide([other])
    assert nothing.record["action"] == "none"
    (still,) = policy.decide(
        [type(other)(merchant, other.customer_key, other.state, 100.0, "GBP", T0 + HOUR, "e2")]
    )
    assert still.record is None and still.offer is None  # decided `none`: stays so


def budgeted_shop():
    promotions = [{**p, "budget": 1000} if p["id"] == "p10" else p for p in SHOP["promotions"]]
    return shop(promotions=promotions)


@pytest.mark.parametrize("one_batch", [True, False])
def test_an_offer_the_cart_already_got_reserves_nothing(one_batch):
    """A new decision (other candidates) for the same cart that picks the offer the cart got:
    the agent would not emit it again, so the ledger must not reserve it again."""
    experiment = Experiment(id="t", holdout=0.0, arms=(Arm("all", 1.0, "static:percent_off"),))
    policy = PromotionPolicy(experiment, default_variant="static:percent_off")
    merchant = budgeted_shop()
    state = cart_state(100.0, T0, "e1")
    generation = state["cart"]["generation"]
    first = DecisionContext(merchant, "shop:c:1", state, 100.0, "GBP", T0, "e1", generation)
    second = DecisionContext(merchant, "shop:c:1", state, 170.0, "GBP", T0 + 60, "e3", generation)
    if one_batch:
        decisions = policy.decide([first, second])
    else:
        decisions = policy.decide([first])
        customer_state.record_offer(state, generation, decisions[0].offer.key, "o1", T0)
        decisions += policy.decide([second])
    sent, repeated = decisions
    assert sent.record["sent"] and sent.offer.key == "percent_off:p10"
    assert repeated.record is not None and repeated.record["options"] != sent.record["options"]
    assert repeated.record["action"] == "percent_off:p10"
    assert not repeated.record["sent"] and repeated.record["guard"] == "repeated"
    assert repeated.offer is None and repeated.record["offer_id"] is None
    [ledger] = policy.ledgers.values()
    assert set(ledger["open"]) == {sent.record["decision_id"]}
    assert ledger["reserved"] == pytest.approx(sent.record["max_discount"])
    validate("decisions.v1.json", repeated.record)
    # a new cart (generation) may get the same offer again: reserved again
    state["cart"]["generation"] += 1
    third = DecisionContext(
        merchant, "shop:c:1", state, 100.0, "GBP", T0 + 120, "e4", generation + 1
    )
    (new_cart,) = policy.decide([third])
    assert new_cart.record["sent"] and len(ledger["open"]) == 2


def test_a_merchant_with_no_promotions_gets_a_logged_none_decision_for_every_cart():
    """The default policy (no settings: the default experiment, its holdout, the bandit's
    prior) on a merchant whose catalog is empty: nothing to offer, every cart logged."""
    policy = PromotionPolicy()
    merchant = shop(promotions=[])
    contexts = [context(merchant, 80.0, customer=str(i), event_id=f"e{i}") for i in range(40)]
    offers = policy.decide_batch(contexts)
    records, _ = policy.drain_records()
    assert offers == [None] * 40 and len(records) == 40
    assert {r["cart_event_id"] for r in records} == {f"e{i}" for i in range(40)}
    assert {r["arm"] for r in records} == {"learned", HOLDOUT}  # the default 10% holdout
    for record in records:
        validate("decisions.v1.json", record)
        assert record["action"] == "none" and record["propensity"] == 1.0
        assert not record["sent"] and record["repeat_of"] is None


def test_a_new_customer_without_a_model_gets_the_priors_decision_logged():
    """A first event of a customer with no history, no model signals and no rewards learned
    yet: the bandit's prior chooses among the catalog's actions and the decision is logged."""
    policy = PromotionPolicy()  # no signals: no model
    merchant = shop()
    contexts = [context(merchant, 160.0, customer=str(i), event_id=f"e{i}") for i in range(60)]
    assert all(not ctx.state["orders"] for ctx in contexts)
    offers = policy.decide_batch(contexts)
    records, _ = policy.drain_records()
    assert len(records) == 60
    learned = [r for r in records if r["arm"] == "learned"]
    assert learned and all(r["model_version"].endswith(":0") for r in learned)  # the prior
    for ctx, offer, record in zip(contexts, offers, records, strict=True):
        validate("decisions.v1.json", record)
        assert record["cart_event_id"] == ctx.cart_event_id
        kinds = {o["action_kind"] for o in record["options"]}
        assert {"none", "free_shipping", "percent_off"} <= kinds
        assert "product_coupon" not in kinds  # a coupon needs the model's candidate
        assert 0 < record["propensity"] <= 1
        assert (offer is not None) == record["sent"]
    assert any(r["sent"] for r in learned)  # the prior explores offers from the first cart


class SignalsWithAddOns(Signals):
    add_ons = ("CUP", "SKU9", "SAUCER")
    add_on_sources = ("bought_together", "bought_together", "next_purchase")


def test_offers_carry_the_carts_add_ons_and_decide_as_without_them():
    """The add-ons ride on the offer after the decision: the same records, offers and
    ledgers as with signals that have none; a coupon's product stays first."""
    merchant = shop()
    decided = []
    for signals in (Signals, SignalsWithAddOns):
        policy = PromotionPolicy(signals=lambda c, s=signals: [s()] * len(c))
        contexts = [context(merchant, 160.0, customer=str(i), event_id=f"e{i}") for i in range(40)]
        decided.append((policy.decide(contexts), policy.ledgers, [c.state for c in contexts]))
    (plain, plain_ledgers, plain_states), (added, added_ledgers, added_states) = decided
    assert [d.record for d in plain] == [d.record for d in added]
    assert plain_ledgers == added_ledgers and plain_states == added_states
    kinds = set()
    for before, after in zip(plain, added, strict=True):
        if before.offer is None:
            assert after.offer is None
            continue
        assert after.offer.key == before.offer.key and after.offer.message == before.offer.message
        kinds.add(after.offer.offer_type)
        if before.offer.offer_type == "product_coupon":  # its product, then the others
            assert after.offer.recommendations == ("SKU9", "CUP", "SAUCER")
            assert after.offer.recommendation_sources == (
                "next_purchase",
                "bought_together",
                "next_purchase",
            )
        else:
            assert after.offer.recommendations == SignalsWithAddOns.add_ons
            assert after.offer.recommendation_sources == SignalsWithAddOns.add_on_sources
    assert "product_coupon" in kinds and len(kinds) > 1


def test_an_offer_worth_less_than_the_competing_action_is_not_issued():
    """``combine: best_value``: the chosen offer's expected incremental value (the bandit's
    objective over its draws) against the action's; the loser is not sent, nothing reserved."""
    from streams.decisions import ValueContest

    def decide(contest: ValueContest | None, customer: str) -> tuple:
        policy = PromotionPolicy(
            Experiment(id="bv", holdout=0.0, arms=(Arm("all", 1.0, "bandit"),)),
            signals=lambda contexts: [Signals()] * len(contexts),
        )
        ctx = context(shop(), 160.0, customer=customer, event_id=f"e{customer}")
        ctx = dataclasses.replace(ctx, contest=contest)
        (decision,) = policy.decide([ctx])
        return decision, ctx

    offered = []
    for customer in (str(i) for i in range(60)):
        plain, _ = decide(None, customer)
        if plain.offer is not None:
            offered.append((customer, plain))
    assert len(offered) >= 3
    for customer, plain in offered:
        high = ValueContest(action_value=1e6)
        lost, ctx = decide(high, customer)
        assert lost.action.id == plain.action.id  # the contest does not change the choice
        assert high.winner == "action" and high.offer_value is not None
        assert lost.offer is None and not lost.record["sent"] and lost.record["offer_id"] is None
        assert lost.record["guard"] == "engagement_action"
        assert lost.record["decision_id"] not in ctx.state["promo"]["open"]  # nothing issued
        validate("decisions.v1.json", lost.record)
        assert not rewards.learnable({**lost.record, "reason": "window_closed"})
        # just below the offer's value: the offer goes out as it would without a contest
        low = ValueContest(action_value=high.offer_value - 1e-9)
        won, ctx = decide(low, customer)
        assert low.winner == "offer" and low.offer_value == high.offer_value
        assert won.offer == plain.offer and won.record["sent"] and won.record["guard"] is None
        assert won.record["decision_id"] in ctx.state["promo"]["open"]
