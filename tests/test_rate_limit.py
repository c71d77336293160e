"""The REST API's token buckets (`agents.web.rate_limit`), on an injected clock."""

from __future__ import annotations

import pytest

from agents.web.rate_limit import TokenBuckets


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_the_rate_and_the_wait_until_the_next_token():
    clock = Clock()
    buckets = TokenBuckets(rate=2.0, burst=3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)  # one token every 1/rate seconds
    clock.now += 0.25
    assert buckets.take("a") == pytest.approx(0.25)  # a refused request takes nothing
    clock.now += 0.25
    assert buckets.take("a") == 0.0
    assert buckets.take("a") > 0
    clock.now += 60  # refills up to the burst, no further
    assert [buckets.take("a") for _ in range(4)][-1] > 0


def test_each_key_has_its_own_bucket():
    buckets = TokenBuckets(rate=1.0, burst=1, clock=Clock())
    assert buckets.take("a") == 0.0 and buckets.take("a") > 0
    assert buckets.take("b") == 0.0


def test_rate_zero_is_no_limit():
    buckets = TokenBuckets(rate=0.0, burst=1, clock=Clock())
    assert all(buckets.take("a") == 0.0 for _ in range(1000))
