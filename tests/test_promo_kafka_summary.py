"""Pure parts of ``nextbest bench-promo``: arm names and the bars on the means over seeds."""

from __future__ import annotations

import pytest

from agents.tools.promo_kafka_loop import _mean, arm_variant


def test_arm_variants():
    assert arm_variant("learned") == "bandit"
    assert arm_variant("none") == "static:none"
    assert arm_variant("percent_off:twenty-off") == "static:percent_off:twenty-off"
    with pytest.raises(ValueError, match="unknown arm"):
        arm_variant("forty-off")


def _run(learned: float, coupon: float, always: float, deep: tuple[int, int]) -> dict:
    def arm(inc: float, deep_customers: int = 0) -> dict:
        return {"incremental_per_customer": inc, "deep_discount_customers": deep_customers}

    return {
        "arms": {
            "none": arm(0.0),
            "product_coupon": arm(coupon, deep[1]),
            "percent_off:twenty-off": arm(always, 500),
            "learned": arm(learned, deep[0]),
        },
        "ope": [{"DR": {"covers": True}, "IPS": {"covers": False}, "SNIPS": {"covers": True}}],
    }


def test_bars_are_on_the_means_over_seeds():
    mean = _mean([_run(3.0, 1.0, -20.0, (40, 10)), _run(0.6, 1.0, -30.0, (20, 30))])
    assert mean["mean_incremental_per_customer"]["learned"] == pytest.approx(1.8)
    assert mean["best_static"] == "product_coupon"
    assert mean["ratio_learned_vs_best_static"] == pytest.approx(1.8)
    assert mean["bar_best_static"] and mean["bar_always_20"]
    assert not mean["bar_deep"]  # 30 deep-discounted customers on average vs 20
    assert mean["ratio_learned_vs_always_20"] is None  # always 20% loses money
    assert mean["ope_coverage"] == {"IPS": "0/2", "SNIPS": "2/2", "DR": "2/2"}


def test_a_losing_best_static_offer_fails_the_ratio_bar():
    mean = _mean([_run(-1.0, -0.5, -20.0, (0, 0))])
    assert mean["ratio_learned_vs_best_static"] is None and not mean["bar_best_static"]
