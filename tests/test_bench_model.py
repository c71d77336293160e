"""The model bench's pure figures (the bench itself is a command, not a test)."""

from __future__ import annotations

import numpy as np

from agents.tools.bench_model import pooled_p99_difference


def test_pooled_p99_difference_of_a_shift():
    """Latencies 5 ms slower everywhere: p99 is exactly 5 ms higher, inside the interval."""
    rules_only = np.random.default_rng(0).exponential(20.0, 2000)
    low, point, high = pooled_p99_difference(rules_only + 5.0, rules_only, draws=300)
    assert abs(point - 5.0) < 1e-9
    assert low < 5.0 < high
    low, point, high = pooled_p99_difference(rules_only, rules_only, draws=300)
    assert point == 0.0 and low < 0.0 < high
