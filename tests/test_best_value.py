"""``engagement.combine: best_value`` through `agents.pipeline.Pipeline` (in-memory topics, the
real promotion policy and engagement ranking): one record per cart, the action or the offer,
saying which won and both values; the decision log agrees."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from agents.engagement import Engagement
from schemas.json_schema import build_schemas
from streams.merchants.catalog import DEFAULT_MERCHANTS
from streams.promotion.actions import candidate_actions
from streams.promotion.bandit import ChoiceInput, LinearThompson
from streams.promotion.experiments import Arm, Experiment
from streams.promotion.features import FEATURE_NAMES
from streams.promotion.policy import PromotionPolicy
from tests.harness import cart_add
from tests.promo_fixtures import context, shop
from tests.test_pipeline_isolation import Stream
from tests.test_records import valid

SHOP = "uci-gift-shop"
CARTS = 30


def best_value_stream(
    tmp_path, variant: str, action_value: float
) -> tuple[Stream, PromotionPolicy]:
    """The demo merchant ranking its engagement actions on carts under ``best_value``, every
    action worth ``action_value``, with the promotion policy's ``variant`` for everyone."""
    merchants = yaml.safe_load(DEFAULT_MERCHANTS.read_text())
    merchant = merchants["merchants"][SHOP]
    merchant["engagement"].update(on_cart=True, combine="best_value")
    for action in merchant["engagement_actions"]:
        action["value"] = action_value
    path = tmp_path / "merchants.yaml"
    path.write_text(yaml.safe_dump(merchants))
    policy = PromotionPolicy(
        Experiment(id="bv", holdout=0.0, arms=(Arm("all", 1.0, variant),)), default_variant=variant
    )
    stream = Stream(policy, merchants_path=path)
    stream.pipeline.engagement = Engagement()
    return stream, policy


def carts() -> list[tuple[str, dict]]:
    return [("cart", cart_add(f"bv-{i}", 320.0, customer=f"b{i}")) for i in range(CARTS)]


def test_an_action_worth_more_than_the_offer_goes_out_alone(tmp_path):
    stream, policy = best_value_stream(tmp_path, "bandit", action_value=1000.0)
    stream.process(*carts())
    promotions = stream.promotions.records()
    decisions = {r["cart_event_id"]: r for r in policy.drain_records()[0]}
    assert len(promotions) == CARTS  # one decision per cart
    contested = [p for p in promotions if "value_contest" in p]
    assert contested  # the bandit chose an offer for some carts: they competed
    for record in promotions:
        valid("promotions", record)
        assert record["offer_type"] == "engagement_action"  # worth far more than any offer
        decision = decisions[record["cart_event_id"]]
        assert not decision["sent"]
        contest = record.get("value_contest")
        if contest is None:  # the policy chose no offer: nothing competed
            assert decision["action"] == "none" and decision["guard"] is None
            continue
        assert contest["winner"] == "action" and decision["guard"] == "engagement_action"
        assert contest["action_value"] == pytest.approx(
            record["engagement_actions"][0]["expected_value"], abs=1e-4
        )
        assert contest["offer_value"] < contest["action_value"]
    assert stream.notifications.records() == []  # an action goes out in session only


def test_an_offer_the_policy_does_not_score_goes_out_alone(tmp_path):
    stream, policy = best_value_stream(tmp_path, "static:percent_off", action_value=1000.0)
    stream.process(*carts())
    promotions = stream.promotions.records()
    assert len(promotions) == CARTS
    for record in promotions:
        valid("promotions", record)
        assert record["offer_type"] == "percent_off" and "engagement_actions" not in record
        assert record["value_contest"]["winner"] == "offer"
        assert record["value_contest"]["offer_value"] is None  # a static variant: no score
    assert all(d["sent"] and d["guard"] is None for d in policy.drain_records()[0])


def test_the_bandit_scores_each_allowed_action_over_no_offer():
    ctx = context(shop(), 160.0)
    actions = candidate_actions(ctx.merchant, 160.0, "GBP", ctx.ts)
    row = ChoiceInput(ctx, ctx.merchant, np.full(len(FEATURE_NAMES), 0.5), actions, 50.0)
    choice = LinearThompson().choose(row, np.random.default_rng(0))
    assert choice.values is not None and len(choice.values) == len(actions) > 1
    assert actions[0].id == "none" and choice.values[0] == 0.0  # the baseline
    assert all(v != 0.0 for v in choice.values[1:])  # an offer's cost and uplift, averaged
    for name in ("decisions.v1.json", "promotions.v1.json"):
        assert "value_contest" in build_schemas()[name]["properties"]
