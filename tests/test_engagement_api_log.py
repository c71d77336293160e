"""Rankings served by ``GET /next-best-actions`` in the log: the answer's ranking id, an
``action_shown`` carrying it and its propensity (checked, joined to a take window under that
id), and off-policy evaluation using the served ranking (pure, no Kafka; the HTTP answer and
routing are in tests/test_engagement_stream.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agents.engagement import Engagement
from models.promotion import engagement_ope
from schemas.json_schema import build_schemas
from schemas.limits import ID_MAX_LENGTH
from schemas.validation import InvalidEvent
from streams.engagement import rewards, serving
from streams.state.customer_state import apply_event, new_state
from tests.test_engagement import Counts, event_of, feedback, merchant, parsed

SHOWN_AT = "2011-12-01T10:00:00Z"


def shown(event_id: str, action_id: str = "get-app", **fields: object) -> dict:
    return feedback("action_shown", action_id, SHOWN_AT, event_id) | fields


def fed(engagement: Engagement, state: dict, *events: dict) -> None:
    """``events`` checked, applied and handed to the worker's hook, as the pipeline does."""
    shop = merchant(take_window_hours=1)
    for raw in events:
        event = parsed(raw)
        engagement.check(shop, "action_feedback", event)
        if apply_event(state, "action_feedback", event):
            engagement.on_input(Counts(), shop, state, "action_feedback", event, event_of(0))


def test_an_api_ranking_id_is_an_input_id_fixed_by_the_request():
    key = "shop:c:" + "c" * 300  # longer than an input id may be
    ranking_id = serving.api_ranking_id(key, 1_700_000_000.25)
    assert ranking_id == serving.api_ranking_id(key, 1_700_000_000.25)
    assert ranking_id != serving.api_ranking_id(key, 1_700_000_000.5)
    assert ranking_id != serving.api_ranking_id("shop:c:c2", 1_700_000_000.25)
    assert ranking_id.startswith(serving.API_RANKING_PREFIX) and len(ranking_id) <= ID_MAX_LENGTH
    parsed(shown("s1", ranking_id=ranking_id, propensity=0.5))  # the shop can send it back


def test_a_shown_api_ranking_opens_its_window_with_the_logged_propensity():
    engagement, state = Engagement(), new_state()
    fed(engagement, state, shown("s1", ranking_id="api-r1", propensity=0.42))
    [window] = state["engagement"]["open"]
    assert (window[0], window[1], window[4]) == ("api-r1", "get-app", 0.42)
    taken = parsed(feedback("action_taken", "get-app", "2011-12-01T10:20:00Z", "t1"))
    [reward] = rewards.take(state, "get-app", taken["_ts"])
    assert (reward["reward_id"], reward["taken"], reward["propensity"]) == (
        "api-r1|get-app",
        True,
        0.42,
    )
    fed(engagement, state, shown("s2", ranking_id="api-r1", propensity=0.42))
    fed(engagement, state, feedback("action_taken", "get-app", "2011-12-01T10:20:00Z", "t1"))
    assert engagement.rankers.model("shop").updates == 1  # learned through the hook


def test_without_the_fields_a_showing_opens_its_window_as_before():
    engagement, state = Engagement(), new_state()
    fed(engagement, state, shown("s1"))
    [window] = state["engagement"]["open"]
    assert (window[0], window[4]) == ("s1", None)  # the event's id, propensity unknown


def test_a_replayed_showing_opens_no_second_window():
    engagement, state = Engagement(), new_state()
    event = shown("s1", ranking_id="api-r1", propensity=0.42)
    again = shown("s2", ranking_id="api-r1", propensity=0.42)  # re-sent under a new event id
    fed(engagement, state, event, event, again)
    assert [w[0] for w in state["engagement"]["open"]] == ["api-r1"]
    assert state["engagement"]["actions"]["get-app"]["shown"] == 2  # s1 once, s2


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"propensity": 0}, "propensity", "must be greater than 0 and at most 1"),
        ({"propensity": 1.5}, "propensity", "must be greater than 0 and at most 1"),
        ({"propensity": -0.1}, "propensity", "must be greater than 0 and at most 1"),
        ({"propensity": "0.5"}, "propensity", "expected a number"),
        ({"ranking_id": ""}, "ranking_id", "must be 1..256 characters"),
        ({"ranking_id": "r" * 257}, "ranking_id", "must be 1..256 characters"),
    ],
)
def test_bad_ranking_fields_are_dead_lettered_naming_the_field(fields, field, message):
    event = shown("s1", ranking_id="api-r1", propensity=0.5) | fields
    with pytest.raises(InvalidEvent, match=f"{field}: {message}") as caught:
        parsed(event)
    assert caught.value.reason == "schema_violation"


def test_the_json_schema_carries_the_open_lower_bound():
    schema = build_schemas()["action-feedback.v1.json"]
    [bounded, _] = schema["properties"]["propensity"]["anyOf"]
    assert bounded == {"type": "number", "maximum": 1, "exclusiveMinimum": 0}


def served(ranking_id: str, customer: str, ranked: list[tuple[str, float, float]], p: float):
    """A ``GET /next-best-actions`` answer as the shop kept it."""
    return {
        "merchant": "shop",
        "customer": customer,
        "ranking_id": ranking_id,
        "ranking": "expected_value",
        "propensity": p,
        "actions": [{"action_id": a, "p_take": take, "value": value} for a, take, value in ranked],
    }


def of(customer: str, event: dict) -> dict:
    return event | {"customer_id": customer}


def test_ope_uses_the_reward_of_a_served_ranking_the_shop_reported_shown():
    loyalty, app = ("join-loyalty", 0.05, 10.0), ("get-app", 0.2, 2.0)
    answers = [
        served("api-1", "c1", [loyalty, app], 0.8),  # shown, taken in the window: reward 10
        served("api-1", "c1", [loyalty, app], 0.8),  # the same answer kept twice: once
        served("api-2", "c2", [app, loyalty], 0.25),  # shown, not taken: 0
        served("api-3", "c3", [app, loyalty], 0.25),  # never reported shown: no row
    ]
    events = [
        of("c1", shown("s1", "join-loyalty", ranking_id="api-1", propensity=0.8)),
        of("c2", shown("s2", "get-app", ranking_id="api-2", propensity=0.25)),
        of("c3", shown("s3", "get-app")),  # shown, but not as ranking api-3
        of("c1", feedback("action_taken", "join-loyalty", "2011-12-01T11:00:00Z", "t1")),
        of("c3", feedback("action_taken", "get-app", "2011-12-01T11:00:00Z", "t3")),
    ]
    rows = engagement_ope.load_rows([], events, 72 * 3600.0, answers)
    assert [(r.record_id, r.propensity, r.reward) for r in rows] == [
        ("api-1", 0.8, 10.0),
        ("api-2", 0.25, 0.0),
    ]
    (by_value, _), effective = engagement_ope.estimate(rows, "expected_value")
    # expected value puts loyalty first: api-1 agrees (weight 1 / 0.8), api-2 does not
    assert by_value.value == pytest.approx((10.0 / 0.8) / 2) and effective > 0
    without = engagement_ope.load_rows([], events, 72 * 3600.0)
    assert without == []  # without the answers, nothing to weigh


def test_engagement_ope_reads_the_served_answers(tmp_path: Path, capsys):
    def lines(name: str, records: list[dict]) -> str:
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        return str(path)

    answer = served("api-1", "c1", [("join-loyalty", 0.05, 10.0), ("get-app", 0.2, 2.0)], 0.8)
    events = [
        of("c1", shown("s1", "join-loyalty", ranking_id="api-1", propensity=0.8)),
        of("c1", feedback("action_taken", "join-loyalty", "2011-12-01T11:00:00Z", "t1")),
    ]
    argv = ["--log", lines("promotions.jsonl", [])]
    argv += ["--feedback", lines("feedback.jsonl", events)]
    argv += ["--served", lines("served.jsonl", [answer])]
    assert engagement_ope.main(argv) == 0
    assert "1 rankings shown; logged mean value 10.0000 per showing" in capsys.readouterr().out
