"""A worker whose cart policy fails on the carts of one marker customer, for the failure
isolation tests: ``python -m tests.poison_worker`` with the settings in ``NEXTBEST_*``; the rest
is ``agents.worker.build``. (No valid input breaks a stage after validation today, so the tests
bring their own failing collaborator, through the worker's real ``policy`` parameter.)"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import mode.loop

from agents.runtime.settings import Settings
from agents.runtime.topics import ensure_topics
from agents.worker import build, run_faust_worker
from streams.decisions import DecisionContext, Offer, ThresholdRulesPolicy

POISON_KEY = "uci-gift-shop:c:poison"


class PolicyFailure(RuntimeError):
    """What `PoisonedPolicy` raises."""


class PoisonedPolicy(ThresholdRulesPolicy):
    """The catalog rules, except that a batch with a cart of ``customer_key`` raises."""

    def __init__(self, customer_key: str = POISON_KEY) -> None:
        self.customer_key = customer_key

    def decide_batch(self, contexts: Sequence[DecisionContext]) -> list[Offer | None]:
        if any(context.customer_key == self.customer_key for context in contexts):
            raise PolicyFailure(f"no decision for {self.customer_key}")
        return super().decide_batch(contexts)


def main() -> None:
    settings = replace(Settings.from_env(), policy="rules")  # the poisoned policy decides carts
    mode.loop.use("uvloop")
    ensure_topics(settings)
    nb = build(settings, policy=PoisonedPolicy())
    run_faust_worker(nb.app, settings.log_level)


if __name__ == "__main__":
    main()
