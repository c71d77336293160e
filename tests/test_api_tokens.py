"""REST API token settings: each token with its merchant and scopes (`Settings.merchant_tokens`),
and bad token or rate settings named."""

from __future__ import annotations

import pytest

from agents.runtime.settings import Settings


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
