"""Pure parts of ``nextbest bench-actions``: the figures across seeds and their print."""

from __future__ import annotations

import pytest

from agents.tools.actions_kafka_loop import across_seeds, print_across


def seed_summary(seed: int, ev: float, prop: float, net: float | None) -> dict:
    retention = {} if net is None else {"net_recovered_per_treated": net}
    return {
        "config": {"seed": seed},
        "arms": {
            "expected_value": {"value_per_customer": ev, "retention": retention},
            "propensity": {"value_per_customer": prop, "retention": retention},
        },
        "ev_minus_propensity": ev - prop,
        "ratio_ev_vs_propensity": ev / prop,
    }


def test_means_and_t_intervals_across_seeds(capsys):
    runs = [seed_summary(0, 110.0, 100.0, 5.0), seed_summary(1, 104.0, 100.0, None)]
    means = across_seeds(runs)
    assert means["seeds"] == [0, 1]
    mean, (low, high) = means["ev_minus_propensity"]
    assert mean == pytest.approx(7.0) and low < 7.0 < high
    # t with 1 degree of freedom: 12.706 x sd 4.243 / sqrt 2 = 38.12 either side
    assert high - mean == pytest.approx(12.706 * 3.0, rel=1e-3)
    assert "net_recovered_per_treated.propensity" not in means  # not in every seed
    print_across(means)
    assert "ev_minus_propensity" in capsys.readouterr().out


def test_one_seed_has_no_interval(capsys):
    means = across_seeds([seed_summary(4, 101.0, 100.0, 2.0)])
    assert means["ev_minus_propensity"] == (pytest.approx(1.0), None)
    assert means["net_recovered_per_treated.expected_value"] == (2.0, None)
    print_across(means)  # one seed: nothing to add to the seed's own lines
    assert capsys.readouterr().out == ""
