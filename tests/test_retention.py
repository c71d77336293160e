"""The retention journey (`streams.outreach.retention`): armed by orders at the time the churn
risk reaches the merchant's threshold, fired on event time through the journey hooks, treated
or held out by a stable hash, at most once per window, through the delivery rules."""

from __future__ import annotations

import dataclasses

import pytest

from agents.runtime import churn_metrics
from schemas.keys import offer_id_for
from streams.merchants.catalog import CatalogError, Merchant, parse_merchant
from streams.merchants.options import Journeys, Retention
from streams.outreach import retention
from streams.promotion.experiments import Arm, Experiment
from streams.promotion.policy import PromotionPolicy
from streams.state import churn
from tests.test_journeys import DAY, HOUR, SHOP, T0, Driver, order, other, profile

KEY = f"{SHOP}:c:c1"
THRESHOLD = Retention.threshold


def with_retention(shop: Merchant, **options: object) -> Merchant:
    """``shop`` running the retention journey: no holdout and, unless ``options`` say
    otherwise, the risk threshold alone (the overdue trigger has tests of its own)."""
    config = Retention(**{"holdout": 0.0, "overdue_intervals": None, **options})
    journeys = Journeys(retention=config)
    return dataclasses.replace(shop, options=dataclasses.replace(shop.options, journeys=journeys))


@pytest.fixture
def shop() -> Merchant:
    from streams.merchants.catalog import DEFAULT_MERCHANTS, load_merchants

    return load_merchants(DEFAULT_MERCHANTS)[SHOP]


def steps(merchant: str, arm: str) -> float:
    return churn_metrics.RETENTION_STEPS.labels(merchant, arm)._value.get()


def lapsing_customer(d: Driver) -> float:
    """c1 orders twice, 30 days apart, then goes quiet; returns when the risk reaches the
    threshold (after the expected interval has run out)."""
    d.batch(profile(T0 - 61 * DAY), order(1, T0 - 60 * DAY, products=("85123A", "22423")))
    d.batch(order(2, T0 - 30 * DAY, products=("85123A",)))
    state = d.states[KEY]
    overdue = churn.overdue_at(state)
    assert overdue == pytest.approx(T0 - 30 * DAY + (30 + churn.PRIOR_INTERVAL_DAYS) / 2 * DAY)
    due = churn.crossing_time(state, THRESHOLD, overdue)
    assert due is not None and due > overdue
    assert churn.risk(state, due) >= THRESHOLD > churn.risk(state, due - 120)
    assert state["journeys"]["retention"]["due"] == due
    assert d.store.due[KEY][1] <= due  # the index keeps the earliest time: an early wake-up
    return due


def daytime(at: float) -> float:
    """``at`` if it is between 10:00 and 19:00 UTC (daytime in London, summer or winter), else
    the next 10:00 UTC: outside the default quiet hours."""
    hour = at % DAY / HOUR
    if 10 <= hour < 19:
        return at
    return at - at % DAY + (DAY if hour >= 19 else 0.0) + 10 * HOUR


def wake(d: Driver, at: float, n: int = 0) -> list:
    """Another customer's event at ``daytime(at)`` + the lateness: the partition's clock gets
    there."""
    return d.batch(other(daytime(at) + 61.0, n))


def test_a_step_fires_when_the_risk_reaches_the_threshold(shop):
    d = Driver(with_retention(shop, offer=False))
    due = lapsing_customer(d)
    treated = steps(SHOP, "treated")
    assert wake(d, due - HOUR) == []
    [note] = wake(d, due + HOUR, 1)  # in London's daytime: not held for quiet hours
    assert (note["source"], note["journey_step"]) == ("retention", "remind")
    assert note["body"] == Retention.message
    assert note["products"] == ["85123A", "22423"]  # the recommendation: their most bought
    assert note["promotion_id"] is None
    assert steps(SHOP, "treated") == treated + 1
    # the next step a window later while the risk stays high, at most max_steps per lapse
    instance = d.states[KEY]["journeys"]["retention"]
    assert instance["k"] == 1 and instance["due"] == instance["last"] + 30 * DAY
    assert due <= instance["last"] <= daytime(due + HOUR) + 1
    assert wake(d, due + 20 * DAY, 2) == []
    [second] = wake(d, due + 31 * DAY + HOUR, 3)
    assert second["dedupe_key"] != note["dedupe_key"]
    assert wake(d, due + 200 * DAY, 4) == []
    assert d.states[KEY]["journeys"]["retention"]["step"] == "done"


def test_a_visit_moves_the_step_to_the_new_crossing_time(shop):
    d = Driver(with_retention(shop, offer=False))
    due = lapsing_customer(d)
    d.batch(("clickstream", _view(due - DAY)))
    assert churn.risk(d.states[KEY], due + HOUR) < THRESHOLD  # the visit lowered the risk
    assert wake(d, due + HOUR) == []
    later = d.states[KEY]["journeys"]["retention"]["due"]
    assert later > due + HOUR
    assert churn.risk(d.states[KEY], later) >= THRESHOLD
    [note] = wake(d, max(later, due) + 2 * HOUR, 1)
    assert note["source"] == "retention"


def _view(ts: float) -> dict:
    from tests.test_journeys import ev

    return ev("product_view", f"view-{ts}", ts, "c1", product_id="85123A")


def test_an_order_starts_a_new_lapse_no_sooner_than_a_window_after_the_last_step(shop):
    d = Driver(with_retention(shop, offer=False))
    due = lapsing_customer(d)
    [note] = wake(d, due + HOUR)
    last = d.states[KEY]["journeys"]["retention"]["last"]
    d.batch(order(3, due + 2 * DAY))
    instance = d.states[KEY]["journeys"]["retention"]
    assert (instance["lapse"], instance["k"], instance["last"]) == ("3", 0, last)
    expected = churn.crossing_time(
        d.states[KEY], THRESHOLD, churn.overdue_at(d.states[KEY])
    )  # None: not within two years (three orders: a loyal customer)
    assert instance["due"] == (None if expected is None else max(expected, last + 30 * DAY))


def test_a_new_lapse_waits_for_the_window_even_when_the_risk_is_already_high():
    state = {"rfm": {"frequency": 1, "first": T0, "last": T0, "monetary": 10.0}, "orders": []}
    config = Retention(threshold=0.05, window_s=30 * DAY)
    overdue = churn.overdue_at(state)
    running = {"retention": {"last": T0 - DAY}}
    retention.arm_timer(running, state, config, "9", T0)
    assert running["retention"]["due"] == max(overdue, T0 + 29 * DAY)
    running = {}
    retention.arm_timer(running, state, config, "9", T0)
    assert running["retention"]["due"] == overdue  # due once the customer is overdue
    assert not retention.ready(state, config, running["retention"], overdue - 60)
    assert running["retention"]["due"] == overdue
    assert retention.ready(state, config, running["retention"], overdue)


def test_the_holdout_gets_nothing_but_is_counted_and_waits_a_window(shop):
    merchant = with_retention(shop, holdout=0.5, offer=False)
    config = merchant.options.journeys.retention
    held_out = next(
        c
        for c in (f"h{i}" for i in range(100))
        if retention.arm(config, f"{SHOP}:c:{c}") != "treated"
    )
    assert retention.arm(config, f"{SHOP}:c:{held_out}") == "holdout"  # stable
    d = Driver(merchant)
    d.batch(profile(T0 - 61 * DAY, held_out), order(1, T0 - 60 * DAY, held_out))
    key = f"{SHOP}:c:{held_out}"
    due = d.states[key]["journeys"]["retention"]["due"]
    holdout = steps(SHOP, "holdout")
    assert wake(d, due + HOUR) == []
    assert steps(SHOP, "holdout") == holdout + 1
    instance = d.states[key]["journeys"]["retention"]
    assert instance["k"] == 1 and instance["due"] >= due + 30 * DAY
    assert d.states[key]["sent"] == []


def test_no_consent_no_step(shop):
    d = Driver(with_retention(shop, offer=False))
    d.batch(order(1, T0 - 60 * DAY))
    due = d.states[KEY]["journeys"]["retention"]["due"]
    treated = steps(SHOP, "treated")
    assert wake(d, due + HOUR) == []
    assert steps(SHOP, "treated") == treated


def test_quiet_hours_hold_the_step_until_morning(shop):
    d = Driver(with_retention(shop, offer=False))
    due = lapsing_customer(d)
    night = due - due % DAY + DAY + 23 * HOUR  # 23:00 UTC: 23:00 or midnight in London
    assert d.batch(other(night + 61.0)) == []
    held = d.states[KEY]["journeys"]["retention"]
    assert held["held"] and held["due"] > night
    [note] = wake(d, held["due"], 1)
    assert note["source"] == "retention"


def test_the_promotion_policy_chooses_the_offer(shop):
    merchant = with_retention(shop)
    d = Driver(merchant)
    policy = PromotionPolicy(
        experiment=Experiment(id="r", holdout=0.0, arms=(Arm("all", 1.0, "static:percent_off"),))
    )
    d.outreach.policy = policy
    kind, big = order(1, T0 - 60 * DAY)
    d.batch(profile(T0 - 61 * DAY), (kind, {**big, "total": 200.0}))
    due = d.states[KEY]["journeys"]["retention"]["due"]
    [note] = wake(d, due + HOUR)
    [record] = [r for r in policy.drain_records()[0]]
    assert record["cart_event_id"] == note["dedupe_key"]
    assert record["cart_generation"] < 0 and record["cart_value"] == pytest.approx(200.0)
    assert record["sent"] and note["promotion_id"] == record["promotion_id"]
    assert note["offer_id"] == record["offer_id"]
    assert note["offer_id"] == offer_id_for(
        KEY, note["dedupe_key"], f"percent_off:{record['promotion_id']}"
    )
    # the policy saw the risk before this message was sent (it counts as ignored from then on)
    before = churn.history_of(d.states[KEY])._replace(messages=())
    assert record["features"][-1] == pytest.approx(churn.score(before, record_ts(record)), abs=1e-4)
    assert churn.risk(d.states[KEY], record_ts(record)) > record["features"][-1]


def record_ts(record: dict) -> float:
    from datetime import datetime

    return datetime.fromisoformat(record["event_time"].replace("Z", "+00:00")).timestamp()


def loyal_customer(d: Driver, orders: int = 5) -> float:
    """c1 orders monthly ``orders`` times, the last at T0 - 100 days; returns their expected
    interval in seconds."""
    d.batch(profile(T0 - 400 * DAY))
    for n in range(orders):
        d.batch(order(n + 1, T0 - 100 * DAY - (orders - 1 - n) * 30 * DAY))
    history = churn.history_of(d.states[KEY])
    assert history is not None and history.orders == orders
    return churn.expected_interval_days(history) * DAY


def test_the_risk_alone_never_reaches_a_loyal_customer(shop):
    d = Driver(with_retention(shop, offer=False))
    loyal_customer(d)
    assert d.states[KEY]["journeys"]["retention"]["due"] is None
    assert churn.crossing_time(d.states[KEY], THRESHOLD, T0) is None  # not within two years


def test_a_loyal_customer_is_reached_when_overdue_by_k_intervals(shop):
    d = Driver(with_retention(shop, offer=False, overdue_intervals=2.0))
    interval = loyal_customer(d)
    last = T0 - 100 * DAY
    due = d.states[KEY]["journeys"]["retention"]["due"]
    assert due == pytest.approx(last + 2.0 * interval)
    assert churn.risk(d.states[KEY], due) < THRESHOLD  # the risk did not get there
    treated = steps(SHOP, "treated")
    assert wake(d, due - HOUR) == []
    [note] = wake(d, due + HOUR, 1)
    assert (note["source"], note["journey_step"]) == ("retention", "remind")
    assert steps(SHOP, "treated") == treated + 1
    assert d.states[KEY]["journeys"]["retention"]["k"] == 1


def test_the_earlier_of_the_two_triggers_arms_the_timer():
    rfm = {"frequency": 2, "first": T0 - 30 * DAY, "last": T0, "monetary": 20.0}
    state = {"rfm": rfm, "orders": []}
    start = churn.overdue_at(state)
    crossing = churn.crossing_time(state, THRESHOLD, start)
    interval = start - T0
    assert crossing is not None and crossing > T0 + 3 * interval  # two orders: months later
    for k, expected in ((1.0, start), (2.0, T0 + 2 * interval), (None, crossing), (9, crossing)):
        running: dict = {}
        config = Retention(overdue_intervals=k)
        retention.arm_timer(running, state, config, "2", T0)
        assert running["retention"]["due"] == pytest.approx(expected)
        assert retention.ready(state, config, running["retention"], running["retention"]["due"])
        assert not retention.ready(state, config, dict(running["retention"]), expected - 120)


@pytest.mark.parametrize("k", [1.0, 1.7, 2.0, 3.3])
def test_the_overdue_trigger_holds_from_its_due_time_on(k):
    history = churn.History(orders=6, first=T0 - 150 * DAY, last=T0, last_gap=30 * DAY)
    config = Retention(threshold=0.99, overdue_intervals=k)
    interval = churn.expected_interval_days(history) * DAY
    due = T0 + k * interval
    assert not retention.triggered(history, config, due - 60)
    assert all(retention.triggered(history, config, due + s) for s in (0.0, 1.0, 365 * DAY))
    assert not retention.triggered(history, Retention(threshold=0.99, overdue_intervals=None), due)


def test_no_trigger_before_the_expected_interval_ends_whatever_the_risk():
    history = churn.History(orders=1, first=T0, last=T0)
    config = Retention(threshold=0.05, overdue_intervals=1.0)
    interval = churn.PRIOR_INTERVAL_DAYS * DAY
    assert not retention.triggered(history, config, T0 + interval - 60)
    assert retention.triggered(history, config, T0 + interval)


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"overdue_intervals": 0.5}, "overdue_intervals"),
        ({"overdue_intervals": "often"}, "overdue_intervals"),
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": 0}, "threshold"),
        ({"window_days": 0}, "window_days"),
        ({"holdout": 1.0}, "holdout"),
        ({"max_steps": 0}, "max_steps"),
        ({"experiment": ""}, "experiment"),
        ({"message": " "}, "message"),
        ({"budget": 3}, "budget"),
    ],
)
def test_bad_retention_config_is_rejected_naming_the_field(config, field):
    with pytest.raises(CatalogError, match=field):
        parse_merchant("m", {"currency": "GBP", "journeys": {"retention": config}})


def test_retention_config_builds_the_options():
    merchant = parse_merchant(
        "m",
        {"currency": "GBP", "journeys": {"retention": {"threshold": 0.6, "window_days": 14}}},
    )
    config = merchant.options.journeys.retention
    assert (config.threshold, config.window_s, config.holdout) == (0.6, 14 * DAY, 0.1)
    assert config.overdue_intervals == Retention.overdue_intervals == 2.0
    off = parse_merchant(
        "m", {"currency": "GBP", "journeys": {"retention": {"overdue_intervals": None}}}
    )
    assert off.options.journeys.retention.overdue_intervals is None
