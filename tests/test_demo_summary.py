"""The demo's latency figures: quantiles estimated from a Prometheus histogram."""

import math

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
