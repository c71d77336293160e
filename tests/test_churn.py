"""Churn risk (`streams.state.churn`): the score's parts, its bounds and monotonicity, the state
it keeps, and the offline evaluation's metrics."""

from __future__ import annotations

import gzip
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.tools import segments
from agents.tools.pinpoint import read_endpoints
from models.churn.evaluate import (
    auc,
    cohort,
    history,
    invoices_of,
    render_trigger,
    top_share,
    trigger_reach,
)
from models.next_purchase.loading import epoch_seconds
from streams.merchants.options import Retention
from streams.state import churn
from streams.state import customer_state as cs
from tests.harness import DATA_FILE
from tests.test_customer_state import T0, apply, event, order

DAY = churn.DAY_S


def customer(order_days: list[float], totals: list[float] | None = None) -> dict:
    """A state after orders on these days (from T0)."""
    state = cs.new_state()
    for i, day in enumerate(order_days):
        total = totals[i] if totals else 50.0
        apply(state, "orders", order(f"o{i}", total, ts=T0 + day * DAY))
    return state


def test_no_orders_no_score():
    state = cs.new_state()
    apply(state, "clickstream", event("product_view", T0, product_id="85123A"))
    assert state["churn"]["score"] is None
    assert state["churn"]["band"] == churn.NO_SCORE
    assert state["churn"]["visit"] == T0
    assert churn.risk(state, T0) is None
    assert churn.explain(state, T0) is None


def test_one_order_customer_uses_the_prior_interval():
    state = customer([0])
    h = churn.history_of(state)
    assert churn.expected_interval_days(h) == pytest.approx(churn.PRIOR_INTERVAL_DAYS)
    f = churn.features(h, T0 + churn.PRIOR_INTERVAL_DAYS * DAY)
    assert f.overdue == pytest.approx(math.log1p(1.0))
    assert f.gap_trend == 0.0 and f.spend_trend == 0.0


def test_own_interval_shrinks_towards_the_prior():
    weekly = churn.history_of(customer([0, 7, 14, 21, 28]))
    expected = churn.expected_interval_days(weekly)
    assert 7 < expected < churn.PRIOR_INTERVAL_DAYS
    assert expected == pytest.approx((4 * 7 + churn.PRIOR_GAPS * churn.PRIOR_INTERVAL_DAYS) / 5)


def test_overdue_customer_scores_higher_than_one_on_cadence():
    state = customer([0, 7, 14, 21, 28])
    on_cadence = churn.risk(state, T0 + 30 * DAY)
    overdue = churn.risk(state, T0 + 90 * DAY)
    assert on_cadence < overdue


def test_lengthening_gaps_and_falling_spend_raise_the_risk():
    steady = customer([0, 20, 40, 60], [50, 50, 50, 50])
    slowing = customer([0, 5, 10, 60], [50, 50, 50, 50])
    assert churn.features(churn.history_of(slowing), T0 + 61 * DAY).gap_trend > 0
    assert churn.risk(slowing, T0 + 61 * DAY) > churn.risk(steady, T0 + 61 * DAY)
    falling = customer([0, 20, 40, 60], [100, 100, 10, 10])
    assert churn.features(churn.history_of(falling), T0 + 61 * DAY).spend_trend < 0
    assert churn.risk(falling, T0 + 61 * DAY) > churn.risk(steady, T0 + 61 * DAY)


def test_a_visit_lowers_the_risk_and_ignored_messages_raise_it():
    state = customer([0, 30])
    later = T0 + 100 * DAY
    before = churn.risk(state, later)
    apply(state, "clickstream", event("product_view", later, product_id="85123A"))
    assert state["churn"]["visit"] == later
    visited = churn.risk(state, later)
    assert visited < before
    for k in range(3):
        cs.record_message(state, "email", f"m{k}", later + k + 1)
    assert churn.features(churn.history_of(state), later + 10).ignored == pytest.approx(0.6)
    assert churn.risk(state, later + 10) > visited


def test_delivered_feedback_is_no_visit_but_an_open_or_an_action_taken_is():
    state = customer([0])
    apply(state, "feedback", event("offer_delivered", T0 + DAY, offer_id="x"))
    apply(state, "action_feedback", event("action_shown", T0 + DAY, action_id="app"))
    assert state["churn"]["visit"] is None
    apply(state, "feedback", event("offer_opened", T0 + 2 * DAY, offer_id="x"))
    assert state["churn"]["visit"] == T0 + 2 * DAY
    apply(state, "action_feedback", event("action_taken", T0 + 3 * DAY, action_id="app"))
    assert state["churn"]["visit"] == T0 + 3 * DAY


def test_state_keeps_the_score_as_of_the_newest_event():
    state = customer([0, 10])
    apply(state, "clickstream", event("page_view", T0 + 200 * DAY))
    kept = state["churn"]
    assert set(kept) == {"visit", "score", "band", "at"}
    assert kept["at"] == T0 + 200 * DAY
    assert kept["score"] == pytest.approx(churn.risk(state, T0 + 200 * DAY), abs=1e-4)
    assert kept["band"] == churn.band(kept["score"])
    apply(state, "clickstream", event("page_view", T0 + 20 * DAY))  # late: the clock stays
    assert state["churn"]["at"] == T0 + 200 * DAY


def test_a_session_costs_one_rescore_an_hour_but_orders_always_rescore():
    state = customer([0, 10])
    start = T0 + 100 * DAY
    apply(state, "clickstream", event("product_view", start, product_id="85123A"))
    scored = dict(state["churn"])
    assert scored["at"] == start  # a visit after a long absence: rescored
    for minute in range(1, 59):
        apply(state, "clickstream", event("page_view", start + minute * 60))
    assert state["churn"]["visit"] == start + 58 * 60  # every visit is noted
    assert (state["churn"]["at"], state["churn"]["score"]) == (start, scored["score"])
    apply(state, "clickstream", event("page_view", start + churn.RESCORE_S))
    assert state["churn"]["at"] == start + churn.RESCORE_S  # an hour on: rescored
    apply(state, "orders", order("o9", 50.0, ts=start + churn.RESCORE_S + 60))
    assert state["churn"]["at"] == start + churn.RESCORE_S + 60
    assert state["churn"]["score"] == pytest.approx(
        churn.risk(state, start + churn.RESCORE_S + 60), abs=1e-4
    )


def test_session_visit_is_merged_into_the_customer():
    state = customer([0])
    session = cs.new_state()
    apply(session, "clickstream", event("product_view", T0 + 5 * DAY, product_id="85123A"))
    cs.merge_anonymous(state, session)
    assert state["churn"]["visit"] == T0 + 5 * DAY


def test_explain_names_the_score_the_band_and_the_cadence():
    state = customer([0, 20, 40])
    text = churn.explain(state, T0 + 100 * DAY)
    value = churn.risk(state, T0 + 100 * DAY)
    assert text.startswith(f"churn risk {value:.2f} ({churn.band(value)}): 60 days since")


def test_crossing_time_is_when_the_score_reaches_the_threshold():
    state = customer([0, 20, 40])
    now = T0 + 41 * DAY
    threshold = churn.risk(state, now) + 0.2
    when = churn.crossing_time(state, threshold, now)
    assert when is not None and when > now
    assert churn.risk(state, when) >= threshold
    assert churn.risk(state, when - 120) < threshold
    assert churn.crossing_time(state, 0.0, now) == now
    assert churn.crossing_time(state, 1.0, now) is None  # never reached
    assert churn.crossing_time(cs.new_state(), 0.5, now) is None


def test_bands_cover_the_unit_interval():
    assert churn.band(0.0) == "low"
    assert churn.band(0.5) == "medium"
    assert churn.band(0.999) == "high"


# --- properties ---------------------------------------------------------------------------

orders_days = st.lists(st.floats(0, 400, allow_nan=False), min_size=1, max_size=12)
totals = st.floats(-500, 5000, allow_nan=False)


@st.composite
def histories(draw: st.DrawFn) -> churn.History:
    days = sorted(draw(orders_days))
    first, last = T0 + days[0] * DAY, T0 + days[-1] * DAY
    visit = draw(st.none() | st.floats(0, 500, allow_nan=False).map(lambda d: T0 + d * DAY))
    messages = tuple(T0 + d * DAY for d in draw(st.lists(st.floats(0, 500), max_size=20)))
    return churn.History(
        orders=len(days) + draw(st.integers(0, 1000)),
        first=first,
        last=last,
        last_gap=(days[-1] - days[-2]) * DAY if len(days) >= 2 else None,
        recent_spend=draw(totals),
        average_spend=draw(totals),
        visit=visit,
        messages=messages,
    )


@settings(max_examples=300, deadline=None)
@given(histories(), st.floats(-100, 3000, allow_nan=False))
def test_score_is_a_probability(h: churn.History, day: float):
    value = churn.score(h, T0 + day * DAY)
    assert 0.0 <= value <= 1.0
    assert churn.band(value) in {name for _, name in churn.BANDS}


@settings(max_examples=300, deadline=None)
@given(histories(), st.floats(0, 1000), st.floats(0, 1000))
def test_score_never_falls_as_days_overdue_grow(h: churn.History, a: float, b: float):
    early, late = sorted((a, b))
    assert churn.score(h, h.last + early * DAY) <= churn.score(h, h.last + late * DAY)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0, 400, allow_nan=False), min_size=1, max_size=60))
def test_state_stays_bounded_and_scored(days: list[float]):
    state = customer(sorted(days))
    assert set(state["churn"]) == {"visit", "score", "band", "at"}
    assert 0.0 <= state["churn"]["score"] <= 1.0


# --- offline evaluation -------------------------------------------------------------------


def test_auc_and_top_share_on_known_rankings():
    labels = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 1])
    perfect = labels.astype(float)
    assert auc(perfect, labels) == 1.0
    assert auc(-perfect, labels) == 0.0
    assert auc(np.zeros(10), labels) == 0.5
    assert top_share(perfect, labels, 0.2) == pytest.approx(2 / 3)
    assert top_share(perfect, labels, 0.3) == 1.0


def test_cohort_labels_churn_within_the_horizon_among_active_customers():
    invoices = {
        "stays": [(T0, 10.0), (T0 + 50 * DAY, 20.0), (T0 + 120 * DAY, 30.0)],
        "churns": [(T0 + 10 * DAY, 10.0), (T0 + 250 * DAY, 5.0)],
        "dormant": [(T0 - 400 * DAY, 10.0)],
        "new": [(T0 + 150 * DAY, 10.0)],
    }
    cut = T0 + 100 * DAY
    c = cohort(invoices, cut, horizon_days=90, active_days=180)
    assert c.customers == ["churns", "stays"]
    assert c.labels.tolist() == [1, 0]
    h = c.histories[1]
    assert h.orders == 2 and h.last == T0 + 50 * DAY and h.last_gap == 50 * DAY
    assert h == history([(T0, 10.0), (T0 + 50 * DAY, 20.0)])


def test_trigger_reach_by_order_band():
    monthly = [(T0 + i * 30 * DAY, 50.0) for i in range(6)]  # six orders, the last at T0 + 150
    invoices = {
        "loyal-lapsed": monthly,  # 120 days without an order at the cutoff: ~4 intervals
        "loyal-lapsed-back": monthly + [(T0 + 300 * DAY, 50.0)],  # orders in the horizon
        # 20 days since the last order at the cutoff, and another in the horizon
        "loyal-on-cadence": [(t + 100 * DAY, v) for t, v in monthly] + [(T0 + 290 * DAY, 9.0)],
        "one-order": [(T0 + 200 * DAY, 50.0)],  # 70 days since: the risk is over 0.6
    }
    cut = T0 + 270 * DAY
    c = cohort(invoices, cut, horizon_days=90, active_days=180)
    assert c.customers == ["loyal-lapsed", "loyal-lapsed-back", "loyal-on-cadence", "one-order"]
    assert c.labels.tolist() == [1, 0, 0, 1]
    triggers = {
        "risk": Retention(overdue_intervals=None),
        "either": Retention(overdue_intervals=2.0),
    }
    bands = trigger_reach(c, cut, triggers)
    assert bands["1"]["risk"] == {"reached": 1.0, "precision": 1.0, "recall": 1.0}
    assert bands["1"]["either"] == bands["1"]["risk"]
    assert bands["5-9"]["customers"] == 3 and bands["5-9"]["churners"] == 1
    assert bands["5-9"]["risk"] == {"reached": 0.0, "precision": None, "recall": 0.0}
    assert bands["5-9"]["either"] == {"reached": round(2 / 3, 4), "precision": 0.5, "recall": 1.0}
    nobody = {"reached": None, "precision": None, "recall": None}
    assert bands["10+"] == {"customers": 0, "churners": 0, "risk": nobody, "either": nobody}
    assert bands["all"]["either"] == {"reached": 0.75, "precision": round(2 / 3, 4), "recall": 1.0}
    table = render_trigger({"threshold": 0.6, "overdue_intervals": 2.0, "order_bands": bands})
    assert "overdue: 2.0 expected intervals" in table[0]
    assert table[1].split()[-2:] == ["risk", "either"]
    assert " ".join(table[5].split()) == "5-9 3 33.3% 0.000 / - / 0.000 0.667 / 0.500 / 1.000"


# --- segments ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def retail_slice(tmp_path_factory):
    """The first ~6 weeks of the UCI Online Retail file."""
    if not DATA_FILE.exists():
        pytest.skip(f"{DATA_FILE} not found")
    data = tmp_path_factory.mktemp("churn") / "retail.csv"
    with gzip.open(DATA_FILE, "rt", encoding="utf-8", errors="replace") as f:
        pd.read_csv(f, dtype=str, nrows=60000).to_csv(data, index=False)
    return data


def test_churn_band_segment_exports_the_bands_customers(retail_slice, tmp_path, capsys):
    as_of = "2011-04-01"  # the slice ends in January: every band has customers
    now = epoch_seconds(as_of)
    invoices = invoices_of(retail_slice)
    expected = {}
    for customer, seq in invoices.items():
        before = [i for i in seq if i[0] < now]
        if before:
            expected[customer] = churn.score(history(before), now)
    bands = {}
    for name in ("low", "medium", "high"):
        scored, members = segments.churn_members(str(retail_slice), name, now)
        assert scored == len(expected)
        bands[name] = {m.customer_id for m in members}
        for m in members:
            assert m.score == pytest.approx(expected[m.customer_id])
            assert churn.band(m.score) == name == m.churn_band
    assert set().union(*bands.values()) == set(expected)
    assert all(bands.values())

    out = tmp_path / "at-risk.json"
    argv = ["--data", str(retail_slice), "--churn-band", "high", "--as-of", as_of]
    argv += ["--synthetic-profiles", "--format", "json", "--out", str(out)]
    assert segments.main(argv) == 0
    assert f"{len(expected)} customers scored" in capsys.readouterr().out
    endpoints = list(read_endpoints(out))
    assert endpoints
    for e in endpoints:
        assert e["User"]["UserId"] in bands["high"]
        assert e["Attributes"]["ChurnBand"] == ["high"]
        assert "PredictedProduct" not in e["Attributes"]
        assert e["Metrics"]["PredictedScore"] == pytest.approx(
            expected[e["User"]["UserId"]], abs=1e-6
        )


# --- nextbest bench-churn --------------------------------------------------------------------


def test_bench_churn_runs_both_variants_on_a_full_customer(capsys):
    from agents.tools import bench_churn

    state = bench_churn.full_customer()
    assert len(state["orders"]) == cs.MAX_ORDERS and len(state["sent"]) == cs.MAX_SENT
    kinds = [kind for kind, _ in bench_churn.events(30, 10)]
    assert kinds.count("orders") == 3 and kinds[9] == kinds[19] == "orders"
    results = bench_churn.measure(60, 2, 10)
    assert {name: len(runs) for name, runs in results.items()} == {"with churn": 2, "without": 2}
    assert all(value > 0 for runs in results.values() for value in runs)
    assert bench_churn.main(["--events", "50", "--rounds", "2"]) == 0
    assert "added by churn.update" in capsys.readouterr().out
