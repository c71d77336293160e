"""The promotion policy's stream plumbing that needs no broker: the ledger table view and the
bandit export (agents/promotion.py)."""

from __future__ import annotations

from types import SimpleNamespace

import orjson
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from agents import promotion, worker
from agents.promotion import LedgerTable, save_bandit
from agents.runtime.app import create_app
from agents.runtime.settings import Settings
from models.promotion import log as promo_log
from streams.promotion.features import FEATURE_NAMES
from streams.promotion.objective import ObjectiveConfig
from streams.promotion.policy import PromotionPolicy
from tests.test_ope import synthetic_log


class FakeEvent:
    """What the ledger view reads of a Faust event: its partition (weak-referenceable)."""

    def __init__(self, partition: int) -> None:
        self.message = SimpleNamespace(partition=partition)


def test_ledger_table_caches_reads_and_writes_changed_ledgers_once():
    table = {b"shop:ten-off:1": orjson.dumps({"budget": 5.0, "spent": 1.0})}
    ledgers = LedgerTable(table)
    ledgers.begin([FakeEvent(0), FakeEvent(1)])
    ledger = ledgers["shop:ten-off:1"]
    assert ledger == {"budget": 5.0, "spent": 1.0}
    assert ledgers.get("shop:ten-off:0") is None and "shop:ten-off:0" not in ledgers
    ledger["spent"] = 2.0
    ledgers["shop:ten-off:1"] = ledger
    ledgers["shop:free-ship:0"] = {"budget": 3.0, "spent": 0.0}
    assert table[b"shop:ten-off:1"] == orjson.dumps({"budget": 5.0, "spent": 1.0})  # not yet
    written = ledgers.flush()
    assert set(written) == {"shop:ten-off:1", "shop:free-ship:0"}
    assert orjson.loads(table[b"shop:ten-off:1"])["spent"] == 2.0
    assert ledgers.flush() == {}  # nothing changed since
    assert sorted(ledgers) == ["shop:free-ship:0", "shop:ten-off:1"] and len(ledgers) == 2


def test_ledger_of_a_partition_without_an_event_in_the_batch_is_refused():
    ledgers = LedgerTable({})
    ledgers.begin([FakeEvent(0)])
    with pytest.raises(RuntimeError, match="no event of partition 3"):
        ledgers.get("shop:ten-off:3")


def test_the_bandit_export_reads_back_as_a_bandit_start(tmp_path):
    policy = PromotionPolicy()
    reward = {
        "merchant_id": "shop",
        "decision_id": "d1",
        "features": [0.5] * len(FEATURE_NAMES),
        "action": "none",
        "purchased": True,
        "redeemed": False,
    }
    assert policy.variants["bandit"].learn(reward)
    path = tmp_path / "state" / "promo-bandit.json"
    save_bandit(policy, path)
    restored = promotion.bandit_start(str(path), ObjectiveConfig())  # how a worker reads it
    assert {merchant: model.to_dict() for merchant, model in restored.items()} == (
        policy.state_dict()["bandit"]
    )
    assert restored["shop"].updates == 1


def test_the_worker_decides_with_the_objective_of_its_settings(tmp_path):
    settings = Settings(
        policy="promotion",
        promo_horizon_weeks=4.0,
        promo_dependency_cost=0.25,
        state_dir=tmp_path,
    )
    hooks = promotion.register(create_app(settings))
    for objective in (hooks.policy.objective, hooks.policy.variants["bandit"].objective):
        assert (objective.horizon_weeks, objective.dependency_cost) == (4.0, 0.25)


@pytest.mark.parametrize("policy", ["promotion", "rules"])
def test_the_worker_runs_its_linear_algebra_on_one_blas_thread(tmp_path, policy):
    # the bandit's, and the engagement take models' under every policy
    threadpool_limits(limits=2, user_api="blas")  # as a fresh process may have it
    worker.build(Settings(policy=policy, state_dir=tmp_path))
    openblas = [i for i in threadpool_info() if i["prefix"] == "libscipy_openblas"]
    assert openblas and all(i["num_threads"] == 1 for i in openblas)


def test_the_bandit_starts_from_a_retrained_file_and_keeps_learning_on_top(tmp_path):
    decisions, rewards = synthetic_log(200)
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(orjson.dumps(r).decode() for r in decisions + rewards) + "\n")
    start = tmp_path / "retrained.json"
    assert promo_log.main(["--log", str(log), "--out", str(start)]) == 0
    settings = Settings(policy="promotion", promo_bandit_start=str(start), state_dir=tmp_path)
    bandit = promotion.register(create_app(settings)).policy.variants["bandit"]
    assert bandit.model("shop").updates == 200  # before any reward of this worker
    part = bandit.learner()
    part.update("new-1", [0.5] * len(FEATURE_NAMES), "none", True, False)
    bandit.set_merged("shop", [part])  # what a partition's learning does
    assert bandit.model("shop").updates == 201
    assert bandit.model("other-shop").updates == 0  # a merchant not in the file: the prior


def test_an_unreadable_bandit_start_stops_the_worker_at_start(tmp_path):
    bad = tmp_path / "retrained.json"
    bad.write_text('{"bandit": {"shop": {"format": "other"}}}')
    for path in (bad, tmp_path / "missing.json"):
        settings = Settings(policy="promotion", promo_bandit_start=str(path), state_dir=tmp_path)
        with pytest.raises(ValueError, match="NEXTBEST_PROMO_BANDIT_START"):
            promotion.register(create_app(settings))
