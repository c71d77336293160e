"""Guard rails: budgets (reserve, settle, expire, replays), per-customer limits, minimum
margin, stacking -- alone and through the promotion policy, with a replay and a restart."""

from __future__ import annotations

import copy
import json
import random

import pytest

from streams.promotion import guardrails as g
from streams.promotion import rewards
from streams.promotion.actions import candidate_actions
from streams.promotion.experiments import Arm, Experiment
from streams.promotion.policy import PromotionPolicy
from tests.promo_fixtures import HOUR, T0, context, shop


def invariant(ledger: dict) -> None:
    reserved = sum(amount for amount, _ in ledger["open"].values())
    assert ledger["reserved"] == pytest.approx(reserved, abs=1e-6)
    assert ledger["spent"] + ledger["reserved"] <= ledger["budget"] + 1e-6


def test_reserve_settle_expire():
    ledger = g.new_ledger(100.0)
    assert g.reserve(ledger, "d1", 30.0, T0 + HOUR) == "reserved"
    assert g.reserve(ledger, "d2", 60.0, T0 + 2 * HOUR) == "reserved"
    assert g.reserve(ledger, "d3", 20.0, T0 + HOUR) == "over_budget"  # 10 left
    assert g.available(ledger) == pytest.approx(10.0)
    assert g.settle(ledger, "d1", T0, cost=25.0) == "settled"
    assert (ledger["spent"], ledger["reserved"]) == (25.0, 60.0)
    assert g.settle(ledger, "d1", T0) == "duplicate"
    assert g.settle(ledger, "nope", T0) == "unknown"
    assert g.expire(ledger, T0 + 2 * HOUR) == []  # expired, but a redemption may be on its way
    assert g.expire(ledger, T0 + 2 * HOUR + g.EXPIRY_GRACE_S) == ["d2"]
    assert (ledger["spent"], ledger["reserved"], g.available(ledger)) == (25.0, 0.0, 75.0)
    assert g.reserve(ledger, "d2", 60.0, T0 + 9 * HOUR) == "duplicate"  # closed ids are kept
    assert g.settle(ledger, "d2", T0 + 3 * HOUR) == "duplicate"  # redeemed after it expired
    g.expire(ledger, T0 + g.CLOSED_RETENTION_S + 4 * HOUR)
    assert ledger["closed"] == {} and ledger["expired"] == {}
    invariant(ledger)


def test_a_redemption_processed_after_its_reservation_was_released_is_still_spent():
    """Redeemed in time, processed after the grace: the ledger counts the money the shop gave,
    even where the budget it freed went to another offer meanwhile."""
    ledger = g.new_ledger(100.0)
    assert g.reserve(ledger, "d1", 60.0, T0 + HOUR) == "reserved"
    assert g.expire(ledger, T0 + HOUR + g.EXPIRY_GRACE_S) == ["d1"]
    assert g.reserve(ledger, "d2", 80.0, T0 + 9 * HOUR) == "reserved"
    assert g.settle(ledger, "d1", T0 + HOUR - 60, cost=50.0) == "settled_late"
    assert g.settle(ledger, "d1", T0 + HOUR - 60, cost=50.0) == "duplicate"  # a replay
    assert (ledger["spent"], ledger["reserved"]) == (50.0, 80.0)  # over the budget, recorded


def test_settle_never_spends_more_than_the_reservation():
    ledger = g.new_ledger(50.0)
    g.reserve(ledger, "d", 10.0, T0 + HOUR)
    g.settle(ledger, "d", T0, cost=99.0)
    assert ledger["spent"] == 10.0


def test_replaying_any_sequence_twice_changes_nothing_and_never_overspends():
    rng = random.Random(7)
    steps, reserved = [], []
    for k in range(400):
        kind = rng.choice(["reserve", "reserve", "settle", "expire"])
        if kind == "settle" and reserved:  # a redemption follows its offer
            decision = rng.choice(reserved)
        else:
            kind = "reserve" if kind == "settle" else kind
            decision = f"d{rng.randrange(120)}"
            if kind == "reserve":
                reserved.append(decision)
        steps.append((kind, decision, rng.uniform(1, 30), T0 + k * 60.0))

    def run(ledger: dict, sequence: list) -> dict:
        for kind, decision, amount, ts in sequence:
            if kind == "reserve":
                g.reserve(ledger, decision, amount, ts + 2 * HOUR)
            elif kind == "settle":
                g.settle(ledger, decision, ts)
            else:
                g.expire(ledger, ts)
            invariant(ledger)
        return ledger

    once = run(g.new_ledger(500.0), steps)
    snapshot = copy.deepcopy(once)
    # the same events again (a replay), and a restart from the JSON the table would hold
    again = run(once, [s for s in steps if s[0] != "expire"])
    assert again == snapshot
    restored = run(json.loads(json.dumps(snapshot)), [s for s in steps if s[0] != "expire"])
    assert restored == snapshot


def test_partition_shares_sum_to_the_budget_and_ensure_follows_the_catalog():
    assert sum(g.partition_budget(100.0, 8) for _ in range(8)) == pytest.approx(100.0)
    with pytest.raises(ValueError):
        g.partition_budget(100.0, 0)
    ledgers: dict = {}
    ledger = g.ensure_ledger(ledgers, "m:p:0", 12.5)
    assert ledgers["m:p:0"] is ledger and ledger["budget"] == 12.5
    g.reserve(ledger, "d", 10.0, T0)
    lowered = g.ensure_ledger(ledgers, "m:p:0", 5.0)
    assert lowered["budget"] == 5.0 and lowered["reserved"] == 10.0  # kept, blocks new offers
    assert g.available(lowered) < 0


def _action(merchant, action_id: str, value: float = 160.0):
    return next(a for a in candidate_actions(merchant, value, "GBP", T0) if a.id == action_id)


def test_minimum_margin():
    merchant = shop(min_margin_rate=0.33)
    promo = g.promo_state({})
    # 10% off leaves 0.4 - 0.1 = 0.30 of the basket < 0.33; free shipping leaves 0.37
    assert g.blocked_reason(_action(merchant, "percent_off:p10"), merchant, promo, None, T0) == (
        "min_margin"
    )
    assert (
        g.blocked_reason(_action(merchant, "free_shipping:fs"), merchant, promo, None, T0) is None
    )
    assert g.blocked_reason(_action(merchant, "none"), merchant, promo, None, T0) is None


def test_per_customer_limit_counts_open_offers_and_redemptions_in_the_window():
    merchant = shop(
        promotions=[
            {
                "id": "p10",
                "type": "percent_off",
                "percent": 10,
                "max_per_customer": 2,
                "per_customer_days": 30,
            }
        ]
    )
    action = _action(merchant, "percent_off:p10")
    promo = g.promo_state({})
    assert g.issue(promo, None, None, "d1", action, T0 + HOUR) == "unbudgeted"
    assert g.blocked_reason(action, merchant, promo, None, T0) is None
    assert g.record_redemption(promo, "d1", "p10", T0)
    assert not g.record_redemption(promo, "d1", "p10", T0)  # a repeated redemption
    assert g.issue(promo, None, None, "d2", action, T0 + HOUR) == "unbudgeted"
    assert g.blocked_reason(action, merchant, promo, None, T0) == "customer_limit"
    g.expire_customer(promo, T0 + 2 * HOUR)  # d2 expired unredeemed: one redemption left
    assert g.blocked_reason(action, merchant, promo, None, T0 + 2 * HOUR) is None
    later = T0 + 31 * 86400.0  # the redemption left the 30-day window
    assert g.redemptions(promo, merchant.promotions[0], later) == 0
    assert g.issue(promo, None, None, "d1", action, T0 + HOUR) == "duplicate"  # redeemed before


def test_stacking_exclusive_and_groups():
    merchant = shop(
        promotions=[
            {"id": "fs", "type": "free_shipping", "exclusive": True},
            {"id": "p5", "type": "percent_off", "percent": 5, "group": "pct"},
            {"id": "p10", "type": "percent_off", "percent": 10, "group": "pct"},
        ]
    )
    fs, p5, p10 = (
        _action(merchant, i) for i in ("free_shipping:fs", "percent_off:p5", "percent_off:p10")
    )
    promo = g.promo_state({})
    g.issue(promo, None, None, "d1", p5, T0 + HOUR)
    assert g.blocked_reason(p10, merchant, promo, None, T0) == "group"
    assert g.blocked_reason(fs, merchant, promo, None, T0) == "exclusive"
    assert g.blocked_reason(p10, merchant, promo, None, T0 + HOUR) is None  # p5 has expired
    promo = g.promo_state({})
    g.issue(promo, None, None, "d2", fs, T0 + HOUR)
    assert g.blocked_reason(p5, merchant, promo, None, T0) == "exclusive"


def test_budget_blocks_and_issue_reserves_once():
    merchant = shop(promotions=[{"id": "p10", "type": "percent_off", "percent": 10, "budget": 20}])
    action = _action(merchant, "percent_off:p10")  # costs 16
    ledgers = {"k": g.new_ledger(20.0)}
    promo = g.promo_state({})
    assert g.blocked_reason(action, merchant, promo, None, T0) == "budget"  # no ledger
    assert g.blocked_reason(action, merchant, promo, ledgers["k"], T0) is None
    assert g.issue(promo, ledgers, "k", "d1", action, T0 + HOUR) == "reserved"
    assert g.issue(promo, ledgers, "k", "d1", action, T0 + HOUR) == "duplicate"
    assert ledgers["k"]["reserved"] == 16.0
    other = g.promo_state({})
    assert g.blocked_reason(action, merchant, other, ledgers["k"], T0) == "budget"
    assert g.issue(other, ledgers, "k", "d2", action, T0 + HOUR) == "over_budget"
    assert other["open"] == {}


# --- through the policy: replays and restarts -------------------------------------------------


def budgeted_policy(ledgers: dict) -> PromotionPolicy:
    experiment = Experiment(id="t", holdout=0.0, arms=(Arm("all", 1.0, "static:percent_off"),))
    return PromotionPolicy(
        experiment,
        default_variant="static:percent_off",
        ledgers=ledgers,
        partitions=2,
        partition_of=lambda key: int(key[-1]) % 2,
    )


def test_policy_never_overspends_and_replays_do_not_double_reserve():
    merchant = shop(promotions=[{"id": "p10", "type": "percent_off", "percent": 10, "budget": 100}])
    ledgers: dict = {}
    policy = budgeted_policy(ledgers)
    contexts = [context(merchant, 160.0, customer=str(c), event_id=f"e{c}") for c in range(10)]
    offers = policy.decide_batch(contexts)
    # 50 per partition, 16 per offer: 3 offers per partition, the rest get nothing
    assert sum(o is not None for o in offers) == 6
    assert {k: round(v["reserved"], 2) for k, v in ledgers.items()} == {
        "shop:p10:0": 48.0,
        "shop:p10:1": 48.0,
    }
    records, _ = policy.drain_records()
    assert len(records) == 10
    snapshot = copy.deepcopy(ledgers)
    states = [copy.deepcopy(c.state) for c in contexts]
    # replay: the same cart events reach the policy again (same states: a redelivered batch)
    policy.decide_batch(contexts)
    assert ledgers == snapshot
    # restart: a new policy on the tables' JSON, and the same events once more
    restored = json.loads(json.dumps(snapshot))
    restarted = budgeted_policy(restored)
    for ctx, state in zip(contexts, states, strict=True):
        replayed = type(ctx)(**{**ctx.__dict__, "state": json.loads(json.dumps(state))})
        restarted.decide_batch([replayed])
    assert restored == snapshot
    for ledger in ledgers.values():
        invariant(ledger)


def test_redemption_settles_once_and_expiry_gives_the_budget_back():
    merchant = shop(promotions=[{"id": "p10", "type": "percent_off", "percent": 10, "budget": 64}])
    ledgers: dict = {}
    policy = budgeted_policy(ledgers)  # 32 per partition; customers 2, 4, 6, 8: partition 0
    first = context(merchant, 160.0, customer="2", event_id="e1")
    second = context(merchant, 160.0, customer="4", event_id="e2")
    (d1,) = policy.decide([first])
    (d2,) = policy.decide([second])
    assert d1.offer and d2.offer
    ledger = ledgers["shop:p10:0"]
    assert ledger["reserved"] == 32.0
    feedback = {"event_type": "offer_redeemed", "offer_id": d1.record["offer_id"], "_ts": T0 + HOUR}
    for _ in range(2):  # redelivered feedback
        rewards.on_feedback(first.state, feedback, ledgers)
    ledger = ledgers["shop:p10:0"]
    assert (ledger["spent"], ledger["reserved"]) == (16.0, 16.0)
    third = context(merchant, 160.0, customer="6", ts=T0 + 2 * HOUR, event_id="e3")
    assert policy.decide([third])[0].offer is None  # budget exhausted
    fourth = context(merchant, 160.0, customer="8", ts=T0 + 49 * HOUR, event_id="e4")
    assert policy.decide([fourth])[0].offer is not None  # d2 expired unredeemed
    assert ledgers["shop:p10:0"]["spent"] == 16.0
