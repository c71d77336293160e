"""The demo's latency figures: quantiles estimated from a Prometheus histogram."""

import math

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agents.tools.demo import journey_outcomes
from agents.tools.processes import histogram_quantile

BOUNDS = (0.01, 0.05, 0.1, 0.5, 1.0)


def buckets_of(observations: list[float]) -> list[tuple[float, float]]:
    registry = CollectorRegistry()
    histogram = Histogram("t_seconds", "test", buckets=BOUNDS, registry=registry)
    for value in observations:
        histogram.observe(value)
    text = generate_latest(registry).decode()
    return sorted(
        (float(s.labels["le"]), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "t_seconds_bucket"
    )


def test_quantile_interpolates_within_the_bucket():
    # 100 observations spread evenly over (0.05, 0.1]: the median is half-way through it
    buckets = buckets_of([0.05 + 0.05 * (i + 1) / 100 for i in range(100)])
    assert math.isclose(histogram_quantile(0.5, buckets), 0.075)
    assert math.isclose(histogram_quantile(0.99, buckets), 0.05 + 0.05 * 0.99)


def test_quantile_spanning_buckets_and_the_top_bucket():
    buckets = buckets_of([0.005] * 50 + [0.3] * 49 + [7.0])
    assert histogram_quantile(0.5, buckets) == 0.01  # the 50th of 100 closes the first bucket
    assert 0.1 < histogram_quantile(0.95, buckets) < 0.5
    # the +Inf bucket has no upper bound: like Prometheus, answer the highest finite bound
    assert histogram_quantile(1.0, buckets) == 1.0


def test_no_observations_gives_no_quantile():
    assert histogram_quantile(0.5, buckets_of([])) is None
    assert histogram_quantile(0.5, []) is None


def test_journey_outcomes_by_journey_outcome_and_reason():
    samples = [
        (
            {
                "merchant": "m",
                "journey": "abandoned_cart",
                "step": "remind",
                "outcome": "sent",
                "reason": "",
            },
            2.0,
        ),
        (
            {
                "merchant": "m",
                "journey": "abandoned_cart",
                "step": "remind",
                "outcome": "suppressed",
                "reason": "frequency_cap",
            },
            5.0,
        ),
        (
            {
                "merchant": "m",
                "journey": "abandoned_cart",
                "step": "remind",
                "outcome": "suppressed",
                "reason": "no_consent",
            },
            1.0,
        ),
        (
            {
                "merchant": "n",
                "journey": "abandoned_cart",
                "step": "remind",
                "outcome": "sent",
                "reason": "",
            },
            1.0,
        ),
        (
            {
                "merchant": "m",
                "journey": "follow_up",
                "step": "first",
                "outcome": "cancelled",
                "reason": "opted_out",
            },
            0.0,
        ),
    ]
    assert journey_outcomes(samples) == (
        "abandoned_cart: sent 3, suppressed 6 (frequency_cap 5, no_consent 1)"
    )
    assert journey_outcomes([]) == "none"


def test_promotion_summary_has_every_section():
    from collections import Counter

    from agents.tools.demo_promotion import Budget, Learned, summary_lines
    from agents.tools.demo_responses import Counterfactual

    def record(i: int, arm: str, action: str, purchased: bool, profit: float) -> tuple[dict, dict]:
        common = {"decision_id": f"d{i}", "arm": arm, "customer_key": f"m:c:{i}"}
        decision = {**common, "action": action, "sent": action != "none" and arm != "holdout"}
        reward = {
            **common,
            "purchased": purchased,
            "revenue": 100.0 * purchased,
            "discount_cost": 5.0 * (purchased and decision["sent"]),
            "profit": profit,
            "promotion_id": None,
            "event_time": f"2011-11-14T{9 + i % 8:02d}:00:00Z",
        }
        return decision, reward

    pairs = [record(i, "holdout", "none", i % 2 == 0, 30.0 * (i % 2 == 0)) for i in range(6)]
    pairs += [
        record(10 + i, "learned", "percent_off:p10", i % 3 != 0, 25.0 * (i % 3 != 0))
        for i in range(9)
    ]
    decisions = [d for d, _ in pairs] + [
        {"decision_id": "open", "arm": "learned", "action": "none", "sent": False}
    ]
    rewards = [r for _, r in pairs]
    lines, figures = summary_lines(
        decisions,
        rewards,
        [Budget("p10", 500.0, 30.0, 8.0)],
        [
            Learned("none", 6, 0.5, None, 0.5, 0.0),
            Learned("percent_off:p10", 9, 0.67, 1.0, 0.6, 0.1),
        ],
        {"learned": Counterfactual(6, 150.0, 120.0, 140.0)},
        Counter({"redeemed": 6, "ignored": 3}),
    )
    text = "\n".join(lines)
    assert "16, 15 with their attribution window closed (1 still open)" in text
    assert "learned          percent_off:p10 9, none 1" in text
    assert "simulated" in text and "redeemed 6" in text
    assert "holdout          6 customers, conversion 0.500 [" in text
    assert "learned          9 customers, conversion 0.667 [" in text and "vs holdout £" in text
    assert "p10 £30.00 of £500.00 (+ £8.00 held for open offers)" in text
    assert "percent_off:p10" in text and "(+0.100)" in text
    assert "£150.00 as decided vs £120.00 with the threshold rules, £140.00 with no offer" in text
    assert figures["decisions_by_action"]["holdout"] == {"none": 6}
    assert figures["conversion_per_customer"]["learned"]["value"] == pytest.approx(6 / 9)
    assert [arm["arm"] for arm in figures["arms"]] == ["holdout", "learned"]


def test_an_offers_tail_line_shows_its_add_ons_by_source(monkeypatch):
    from agents.tools import demo_model

    names = {"22697": "GREEN REGENCY TEACUP AND SAUCER", "85123A": "WHITE HANGING HEART"}
    monkeypatch.setattr(demo_model, "PRODUCT_NAMES", names)
    offer = {
        "recommendations": ["22697", "22699", "85123A"],
        "recommendation_sources": ["bought_together", "bought_together", "next_purchase"],
    }
    [line] = demo_model.model_line(offer).strip("\n").split("\n")
    assert line.strip() == (
        "add-ons  bought together: 22697 Green Regency Teacup…, 22699 · "
        "next purchase: 85123A White Hanging Heart"
    )
    assert demo_model.model_line({"recommendations": []}) == ""  # rules only
    with_model = {
        **offer,
        "recommendation_sources": ["next_purchase"] * 3,
        "model_version": "v1",
        "coupon_product_id": "85123A",
        "coupon_probability": 0.25,
        "purchase_propensity": 0.5,
    }
    lines = demo_model.model_line(with_model).strip("\n").split("\n")
    assert "bought together" not in lines[0] and "next purchase: 22697" in lines[0]
    assert lines[1].strip() == "coupon 85123A White Hanging Heart p=0.25 · propensity 0.50"
