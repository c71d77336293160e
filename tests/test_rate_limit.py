"""The REST API's token buckets (`agents.web.rate_limit`), on an injected clock."""

from __future__ import annotations

import pytest

from agents.runtime.settings import Settings
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


def test_token_settings_give_each_token_its_merchant_and_scopes():
    settings = Settings.from_env(
        {
            "NEXTBEST_API_TOKENS": "shop=all-scopes-token-0123",
            "NEXTBEST_API_INGEST_TOKENS": "shop=browser-token-012345, other=browser-token-6789ab",
            "NEXTBEST_API_READ_TOKENS": "shop=reader-token-0123456",
            "NEXTBEST_API_TRAIN_TOKENS": "shop=trainer-token-012345",
        }
    )
    assert settings.merchant_tokens() == {
        "all-scopes-token-0123": ("shop", frozenset({"ingest", "read", "train"})),
        "browser-token-012345": ("shop", frozenset({"ingest"})),
        "browser-token-6789ab": ("other", frozenset({"ingest"})),
        "reader-token-0123456": ("shop", frozenset({"read"})),
        "trainer-token-012345": ("shop", frozenset({"train"})),
    }


@pytest.mark.parametrize(
    "env, message",
    [
        ({"NEXTBEST_API_READ_TOKENS": "shop=short"}, "NEXTBEST_API_READ_TOKENS"),
        (
            {
                "NEXTBEST_API_TOKENS": "shop=same-token-0123456789",
                "NEXTBEST_API_INGEST_TOKENS": "other=same-token-0123456789",
            },
            "more than once",
        ),
        ({"NEXTBEST_API_RATE": "-1"}, "NEXTBEST_API_RATE"),
        ({"NEXTBEST_API_BURST": "0"}, "NEXTBEST_API_BURST"),
    ],
)
def test_bad_token_and_rate_settings_name_the_setting(env, message):
    with pytest.raises(ValueError, match=message):
        Settings.from_env(env)
