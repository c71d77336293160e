"""Engagement actions: catalog validation, feedback in state, eligibility, Thompson ranking,
take windows and rewards, and how a cart serves a ranking (pure, no Kafka)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from schemas.validation import InvalidEvent, parse_event
from streams.engagement import rewards, serving
from streams.engagement.ranking import (
    TakeModel,
    action_features,
    eligible,
    ranking_rng,
)
from streams.merchants.catalog import CatalogError, parse_merchant
from streams.state.customer_state import apply_event, new_state
from tests.probes import sample

ACTIONS = [
    {"id": "join-loyalty", "kind": "loyalty", "title": "Join", "value": 10.0},
    {"id": "get-app", "kind": "app", "title": "App", "value": 2.0, "prior_take_rate": 0.2},
    {
        "id": "explore-candles",
        "kind": "category",
        "title": "Candles",
        "value": 4.0,
        "eligibility": {"not_bought": "^CANDLE"},
    },
]


def merchant(**engagement: object):
    config = {"currency": "GBP", "engagement_actions": ACTIONS, "engagement": engagement}
    return parse_merchant("shop", config)


def errors(actions: list, engagement: dict | None = None) -> list[str]:
    config = {"currency": "GBP", "engagement_actions": actions}
    if engagement is not None:
        config["engagement"] = engagement
    with pytest.raises(CatalogError) as caught:
        parse_merchant("shop", config)
    return list(caught.value.errors)


def feedback(event_type: str, action_id: str, ts: str, event_id: str) -> dict:
    return {
        "schema_version": 1,
        "event_id": event_id,
        "merchant_id": "shop",
        "customer_id": "c1",
        "event_time": ts,
        "event_type": event_type,
        "action_id": action_id,
    }


def parsed(event: dict) -> dict:
    import orjson

    return parse_event(orjson.dumps(event), "action_feedback", 100_000)


def event_of(partition: int) -> SimpleNamespace:
    """A stand-in for a Faust event of an input partition (the hooks read its partition)."""
    return SimpleNamespace(message=SimpleNamespace(partition=partition))


# -- catalog ------------------------------------------------------------------------------


def test_catalog_builds_actions_and_options():
    shop = merchant(ranking="propensity", combine="both", on_cart=True, take_window_hours=24)
    loyalty, app, category = shop.engagement_actions
    assert (loyalty.kind, loyalty.value, loyalty.prior_take_rate) == ("loyalty", 10.0, 0.05)
    assert loyalty.eligibility.once and app.eligibility.once and not category.eligibility.once
    assert category.eligibility.not_bought_rule.match("candle-12")  # ignores case
    assert shop.engagement.ranking == "propensity" and shop.engagement.combine == "both"
    assert shop.engagement.take_window_s == 24 * 3600.0
    assert parse_merchant("plain", {"currency": "GBP"}).engagement_actions == ()


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ({"kind": "loyal"}, "engagement_actions[0].kind: must be one of"),
        ({"value": 0}, "engagement_actions[0].value: expected a number > 0, got 0"),
        ({"value": "5"}, "engagement_actions[0].value: expected a number, got '5'"),
        ({"prior_take_rate": 1.5}, "engagement_actions[0].prior_take_rate: expected a number < 1"),
        ({"channels": ["fax"]}, "engagement_actions[0].channels[0]: must be one of"),
        ({"titel": "x"}, "engagement_actions[0].titel: unknown field (did you mean 'title'?)"),
        ({"id": "a:b"}, "engagement_actions[0].id:"),
        ({"kind": "category"}, "engagement_actions[0].eligibility: a category action needs"),
        (
            {"eligibility": {"not_bought": "("}},
            "engagement_actions[0].eligibility.not_bought: not a regular expression",
        ),
        (
            {"eligibility": {"min_orders": 3, "max_orders": 1}},
            "engagement_actions[0].eligibility: max_orders (1) is below min_orders",
        ),
    ],
)
def test_bad_action_definitions_name_the_field(bad: dict, expected: str):
    action = {"id": "a", "kind": "app", "title": "t", "value": 1.0, **bad}
    found = errors([action])
    assert any(line.startswith(f"merchants.shop.{expected}") for line in found), found


def test_duplicate_ids_and_bad_options_are_rejected():
    action = {"id": "a", "kind": "app", "title": "t", "value": 1.0}
    found = errors([action, action], {"combine": "best", "attach": 0})
    assert "merchants.shop.engagement_actions: duplicate engagement action ids ['a']" in found
    assert any(
        line.startswith("merchants.shop.engagement.combine: must be one of") for line in found
    )
    assert any(line.startswith("merchants.shop.engagement.attach:") for line in found)


# -- the feedback event and state ---------------------------------------------------------


def test_feedback_event_is_validated_and_applied_once():
    event = parsed(feedback("action_taken", "join-loyalty", "2011-12-01T10:00:00Z", "e1"))
    with pytest.raises(InvalidEvent, match="action_id"):
        parsed({**feedback("action_taken", "", "2011-12-01T10:00:00Z", "e2")})
    with pytest.raises(InvalidEvent, match="not accepted here"):
        parse_event(b'{"schema_version":1,"event_type":"action_taken"}', "feedback", 1000)
    with pytest.raises(InvalidEvent, match="channel"):
        parsed({**feedback("action_shown", "a", "2011-12-01T10:00:00Z", "e3"), "channel": "fax"})
    state = new_state()
    assert apply_event(state, "action_feedback", event)
    assert not apply_event(state, "action_feedback", event)  # the same event id: skipped
    record = state["engagement"]["actions"]["join-loyalty"]
    assert (record["taken"], record["shown"], record["taken_at"]) == (1, 0, event["_ts"])
    assert sample("action_dismissed")["action_id"] == "join-loyalty"


def test_eligibility_from_state():
    loyalty, _, category = merchant().engagement_actions
    state = new_state()
    assert eligible(loyalty, state, 0.0) and eligible(category, state, 0.0)
    state["orders"].append([0.0, "o1", 12.0, ["CANDLE-1"]])
    assert not eligible(category, state, 0.0)  # the category was bought
    taken = parsed(feedback("action_taken", "join-loyalty", "2011-12-01T10:00:00Z", "t"))
    apply_event(state, "action_feedback", taken)
    assert not eligible(loyalty, state, taken["_ts"] + 1)  # already a member
    dismissed = parsed(feedback("action_dismissed", "get-app", "2011-12-01T10:00:00Z", "d"))
    _, app, _ = merchant().engagement_actions
    apply_event(state, "action_feedback", dismissed)
    assert not eligible(app, state, dismissed["_ts"] + 86400)
    assert eligible(app, state, dismissed["_ts"] + 8 * 86400)  # after the 7-day cool-down


# -- ranking --------------------------------------------------------------------------------


def firsts(model: TakeModel, mode: str, n: int = 200) -> dict[str, int]:
    counts: dict[str, int] = {}
    for i in range(n):
        ranking = model.rank(merchant().engagement_actions, None, 0.0, mode, ranking_rng(f"r{i}"))
        counts[ranking.first.action.id] = counts.get(ranking.first.action.id, 0) + 1
    return counts


def test_priors_rank_from_the_first_event_by_expected_value_or_propensity():
    shop = merchant()
    model = TakeModel()
    by_value, by_rate = firsts(model, "expected_value"), firsts(model, "propensity")
    assert max(by_value, key=by_value.get) == "join-loyalty"  # 0.05 x 10 beats 0.2 x 2
    assert max(by_rate, key=by_rate.get) == "get-app"  # 0.2 beats 0.05
    ranking = model.rank(shop.engagement_actions, None, 0.0, "expected_value", ranking_rng("r"))
    means = {item.action.id: item.p_take for item in ranking.items}
    assert means["join-loyalty"] == pytest.approx(0.05, abs=0.01)
    assert means["get-app"] == pytest.approx(0.2, abs=0.01)
    again = model.rank(shop.engagement_actions, None, 0.0, "expected_value", ranking_rng("r"))
    assert again == ranking  # the same ranking id ranks the same


def test_propensity_is_the_share_of_draws_plus_exploration():
    shop = merchant()
    model = TakeModel()
    actions = shop.engagement_actions
    firsts = [
        model.rank(actions, None, 0.0, "expected_value", ranking_rng(f"r{i}")).first.action.id
        for i in range(400)
    ]
    ranking = model.rank(actions, None, 0.0, "expected_value", ranking_rng("r0"))
    logged = {ranking.first.action.id: ranking.propensity}
    share = firsts.count(ranking.first.action.id) / len(firsts)
    assert share == pytest.approx(logged[ranking.first.action.id], abs=0.08)


def test_learning_takes_moves_the_ranking():
    shop = merchant()
    model = TakeModel()
    state = new_state()
    x = action_features(state, "get-app", 0.0)
    before = model.p_take(shop.engagement_actions[1], x)
    for i in range(60):
        assert model.update(f"w{i}", "get-app", x, taken=True)
    assert not model.update("w0", "get-app", x, taken=True)  # a replayed reward: no change
    after = model.p_take(shop.engagement_actions[1], x)
    assert after > before + 0.3
    ranking = model.rank(shop.engagement_actions, state, 0.0, "expected_value", ranking_rng("z"))
    assert ranking.first.action.id == "get-app"  # now ~0.9 x 2 beats 0.05 x 10
    copy = TakeModel.from_dict(model.to_dict())
    assert copy.p_take(shop.engagement_actions[1], x) == pytest.approx(after)
    summed = TakeModel()
    summed.add(model)
    assert summed.p_take(shop.engagement_actions[1], x) == pytest.approx(after)


# -- take windows --------------------------------------------------------------------------


def test_take_within_the_window_is_a_reward_once():
    state = new_state()
    assert (
        rewards.open_window(state, "d1", "get-app", 100.0, 50.0, [0.1], 0.7, "expected_value") == []
    )
    assert (
        rewards.open_window(state, "d2", "get-app", 110.0, 50.0, [0.2], 0.6, "expected_value") == []
    )
    assert len(state["engagement"]["open"]) == 1  # one window per action
    [taken] = rewards.take(state, "get-app", 140.0)
    assert (taken["reward_id"], taken["taken"], taken["propensity"]) == ("d1|get-app", True, 0.7)
    assert rewards.take(state, "get-app", 141.0) == []  # closed: a second take joins nothing


def test_windows_close_not_taken_after_their_end_and_stay_bounded():
    state = new_state()
    rewards.open_window(state, "d1", "a", 100.0, 50.0, [0.0], None, "propensity")
    assert rewards.close_due(state, 150.0) == []
    assert rewards.take(new_state(), "a", 120.0) == []
    [closed] = rewards.close_due(state, 151.0)
    assert (closed["taken"], closed["reason"]) == (False, "window_closed")
    pushed = []
    for i in range(rewards.MAX_OPEN + 2):
        pushed += rewards.open_window(state, f"d{i}", f"a{i}", 200.0, 50.0, [0.0], None, "x")
    assert len(state["engagement"]["open"]) == rewards.MAX_OPEN
    assert [r["reason"] for r in pushed] == ["evicted", "evicted"]


# -- serving on a cart ----------------------------------------------------------------------


def test_combine_rules():
    shop = merchant()
    ranking = TakeModel().rank(
        shop.engagement_actions, None, 0.0, "expected_value", ranking_rng("r")
    )
    assert serving.serve(ranking, True, "offer_first") == serving.CartServing(False, False)
    assert serving.serve(ranking, True, "both") == serving.CartServing(True, False)
    assert serving.serve(ranking, False, "offer_first") == serving.CartServing(False, True)
    assert serving.serve(ranking, False, "both") == serving.CartServing(False, True)
    fields = serving.ranking_fields(ranking, 2)
    assert [a["action_id"] for a in fields["engagement_actions"]] == [
        i.action.id for i in ranking.items[:2]
    ]
    assert "P(take)" in serving.action_reason(ranking, "GBP")
    nothing = TakeModel().rank((), None, 0.0, "expected_value", np.random.default_rng(0))
    assert serving.serve(nothing, False, "both") == serving.CartServing(False, False)


def test_best_value_competes_inside_the_policys_choice():
    shop = merchant(combine="best_value", on_cart=True)
    assert shop.engagement.combine == serving.BEST_VALUE
    ranking = TakeModel().rank(
        shop.engagement_actions, None, 0.0, "expected_value", ranking_rng("r")
    )
    # the offer went out (it won): alone, no actions attached; no offer: the action alone
    assert serving.serve(ranking, True, "best_value") == serving.CartServing(False, False)
    assert serving.serve(ranking, False, "best_value") == serving.CartServing(False, True)
    state = new_state()
    contest = serving.contest(ranking, state, 0)
    assert contest is not None and contest.action_value == ranking.first.expected_value > 0
    assert serving.contest_fields(contest) == {}  # no offer competed
    state.setdefault("engagement", {"actions": {}, "open": [], "last": None})["last"] = [0, "a"]
    assert serving.contest(ranking, state, 0) is None  # this cart got its action already
    nothing = TakeModel().rank((), None, 0.0, "expected_value", np.random.default_rng(0))
    assert serving.contest(nothing, state, 1) is None and serving.contest(None, state, 1) is None


@pytest.mark.parametrize(
    ("action_value", "offer_value", "winner"),
    [(2.0, 1.5, "action"), (1.0, 1.5, "offer"), (1.5, 1.5, "offer"), (0.5, -0.2, "action")],
)
def test_the_contest_sends_the_larger_expected_value(action_value, offer_value, winner):
    from streams.decisions import ValueContest

    contest = ValueContest(action_value=action_value)
    assert contest.decide(offer_value) == (winner == "offer")
    assert serving.contest_fields(contest) == {
        "value_contest": {
            "winner": winner,
            "action_value": action_value,
            "offer_value": offer_value,
        }
    }
    unscored = ValueContest(action_value=action_value)
    assert unscored.decide(None) and unscored.winner == "offer"  # a variant without values


def test_one_action_per_cart():
    state = new_state()
    assert not serving.action_made(state, 0)
    state.setdefault("engagement", {"actions": {}, "open": [], "last": None})["last"] = [0, "a"]
    assert serving.action_made(state, 0) and not serving.action_made(state, 1)


# -- off-policy evaluation ------------------------------------------------------------------


def logged_record(offer_id: str, customer: str, ranked: list[tuple[str, float, float]], p: float):
    return {
        "offer_id": offer_id,
        "merchant_id": "shop",
        "customer_id": customer,
        "event_time": "2011-12-01T10:00:00+00:00",
        "engagement_actions": [
            {"action_id": a, "p_take": take, "value": value} for a, take, value in ranked
        ],
        "engagement_propensity": p,
    }


def test_ope_joins_takes_in_the_window_and_weighs_candidates():
    from models.promotion import engagement_ope

    loyalty, app = ("join-loyalty", 0.05, 10.0), ("get-app", 0.2, 2.0)
    records = [
        logged_record("o1", "c1", [loyalty, app], 0.8),  # taken in the window: reward 10
        logged_record("o1", "c1", [loyalty, app], 0.8),  # the same record again: once
        logged_record("o2", "c2", [app, loyalty], 0.25),  # taken after the window: 0
        logged_record("o3", "c3", [app, loyalty], 0.25),  # taken: 2
    ]
    takes = [
        feedback("action_taken", "join-loyalty", "2011-12-01T11:00:00Z", "t1")
        | {"customer_id": "c1"},
        feedback("action_taken", "get-app", "2011-12-05T11:00:00Z", "t2") | {"customer_id": "c2"},
        feedback("action_taken", "get-app", "2011-12-01T10:30:00Z", "t3") | {"customer_id": "c3"},
        feedback("action_taken", "get-app", "2011-12-01T10:30:00Z", "t3") | {"customer_id": "c3"},
    ]
    rows = engagement_ope.load_rows(records, takes, 72 * 3600.0)
    assert [(r.record_id, r.reward) for r in rows] == [("o1", 10.0), ("o2", 0.0), ("o3", 2.0)]
    (logged_ips, _), effective = engagement_ope.estimate(rows, "logged")
    assert logged_ips.value == pytest.approx(12.0 / 3) and effective == pytest.approx(3)
    (by_value, by_value_snips), _ = engagement_ope.estimate(rows, "expected_value")
    # expected value puts loyalty first everywhere: only o1 agrees, weight 1 / 0.8
    assert by_value.value == pytest.approx((10.0 / 0.8) / 3)
    assert by_value_snips.value == pytest.approx(10.0)
    (by_rate, _), _ = engagement_ope.estimate(rows, "propensity")
    assert by_rate.value == pytest.approx((0.0 / 0.25 + 2.0 / 0.25) / 3)  # o2 and o3 agree


# -- the worker's hooks (no Kafka: the batch is a counter) -----------------------------------


class Counts:
    def __init__(self) -> None:
        self.counted: list[tuple] = []

    def count(self, metric: object, *labels: str) -> None:
        self.counted.append(labels)


def test_journey_messages_carry_the_actions_of_their_channel():
    from agents.engagement import Engagement

    engagement = Engagement()
    state = new_state()
    quiet = merchant()
    assert engagement.for_message(Counts(), quiet, state, "n1", "email", 0.0, event_of(0)) is None
    shop = merchant(in_journeys=True)
    none_on_sms = engagement.for_message(Counts(), shop, state, "n1", "sms", 0.0, event_of(0))
    assert none_on_sms is None
    counts = Counts()
    fields = engagement.for_message(counts, shop, state, "n2", "in_app", 0.0, event_of(0))
    ranked = [a["action_id"] for a in fields["engagement_actions"]]
    assert set(ranked) == {"join-loyalty", "get-app", "explore-candles"}
    assert counts.counted == [("shop", ranked[0])]
    assert [w[1] for w in state["engagement"]["open"]] == [ranked[0]]  # a take window


def test_feedback_hooks_learn_a_take_and_dead_letter_unknown_actions():
    from agents.engagement import Engagement

    engagement = Engagement()
    shop = merchant(take_window_hours=1)
    state = new_state()
    shown = parsed(feedback("action_shown", "get-app", "2011-12-01T10:00:00Z", "s1"))
    taken = parsed(feedback("action_taken", "get-app", "2011-12-01T10:20:00Z", "t1"))
    for event in (shown, taken):
        apply_event(state, "action_feedback", event)
        engagement.on_input(Counts(), shop, state, "action_feedback", event, event_of(3))
    model = engagement.rankers.model("shop")
    assert (model.updates, model.stats.arms["get-app"].counts["taken"]) == (1, 1)
    assert engagement.rankers.summary() == {"shop": {"updates": 1, "parts": {"shop:3": 1}}}
    with pytest.raises(InvalidEvent, match="not an engagement action"):
        unknown = parsed(feedback("action_taken", "nope", "2011-12-01T10:20:00Z", "t2"))
        engagement.check(shop, "action_feedback", unknown)


def test_a_sessions_engagement_merges_into_the_customers():
    from streams.state.customer_state import merge_anonymous

    customer, session = new_state(), new_state()
    shown = parsed(feedback("action_shown", "get-app", "2011-12-01T10:00:00Z", "s1"))
    apply_event(customer, "action_feedback", shown)
    for i, event_type in enumerate(("action_shown", "action_dismissed")):
        event = parsed(feedback(event_type, "get-app", "2011-12-01T11:00:00Z", f"g{i}"))
        apply_event(session, "action_feedback", event)
    rewards.open_window(session, "d1", "newsletter", 100.0, 50.0, [0.1], 0.5, "propensity")
    rewards.open_window(session, "d2", "get-app", 90.0, 50.0, [0.1], 0.5, "propensity")
    rewards.open_window(customer, "d3", "get-app", 95.0, 50.0, [0.1], 0.5, "propensity")
    merge_anonymous(customer, session)
    app = customer["engagement"]["actions"]["get-app"]
    assert (app["shown"], app["dismissed"], app["dismissed_at"]) == (2, 1, shown["_ts"] + 3600)
    assert [w[0] for w in customer["engagement"]["open"]] == ["d3", "d1"]  # the customer's kept
