"""The promotion policy's stream plumbing that needs no broker: the ledger table view and the
bandit checkpoint (agents/promotion.py)."""

from __future__ import annotations

from types import SimpleNamespace

import orjson
import pytest

from agents.promotion import LedgerTable, load_bandit, save_bandit
from streams.promo_features import FEATURE_NAMES
from streams.promotion_policy import PromotionPolicy


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


def test_bandit_checkpoint_round_trip(tmp_path):
    policy = PromotionPolicy()
    reward = {"merchant_id": "shop", "decision_id": "d1", "features": [0.5] * len(FEATURE_NAMES),
              "action": "none", "purchased": True, "redeemed": False}
    assert policy.variants["bandit"].learn(reward)
    path = tmp_path / "state" / "promo-bandit.json"
    save_bandit(policy, path)
    restored = PromotionPolicy()
    assert load_bandit(restored, path)
    assert restored.state_dict() == policy.state_dict()
    assert restored.state_dict()["bandit"]["shop"]["updates"] == 1


def test_unusable_checkpoint_leaves_the_prior(tmp_path):
    policy = PromotionPolicy()
    assert not load_bandit(policy, tmp_path / "missing.json")
    bad = tmp_path / "promo-bandit.json"
    bad.write_text('{"bandit": {"shop": {"format": "other"}}}')
    assert not load_bandit(policy, bad)
    assert policy.state_dict() == {"bandit": {}}
