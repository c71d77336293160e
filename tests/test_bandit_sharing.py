"""One bandit for all workers: statistics learned per merchant:partition add up to the bandit
that learned every reward (streams.promotion.bandit, streams.promotion.policy.PartitionedLearning),
and the table view that writes and reloads them (agents.promotion.BanditTable), without a broker."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import orjson

from agents.promotion import BanditTable
from streams.promotion.actions import NONE
from streams.promotion.bandit import LinearThompson
from streams.promotion.features import FEATURE_NAMES
from streams.promotion.policy import PartitionedLearning, PromotionPolicy

ARMS = (NONE, "percent_off:ten-off", "free_shipping:free-ship")
PARTITIONS = 4


def random_rewards(count: int, seed: int = 0, merchants: tuple[str, ...] = ("shop",)) -> list:
    rng = np.random.default_rng(seed)
    rewards = []
    for i in range(count):
        action = ARMS[i % len(ARMS)]
        purchased = bool(rng.random() < 0.3)
        rewards.append(
            {
                "decision_id": f"d{i}",
                "merchant_id": merchants[i % len(merchants)],
                "customer_key": f"{merchants[i % len(merchants)]}:c:c{i % 37}",
                "features": rng.random(len(FEATURE_NAMES)).round(6).tolist(),
                "action": action,
                "action_kind": "none" if action == NONE else action.split(":")[0],
                "purchased": purchased,
                "redeemed": purchased and action != NONE and bool(rng.random() < 0.7),
                "sent": action != NONE,
                "arm": "learned",
                "policy": "linear-ts",
                "reason": "window_closed",
            }
        )
    return rewards


def partition_of(customer_key: str) -> int:
    return int(customer_key.rsplit("c", 1)[1]) % PARTITIONS


def learned_in_one(rewards: list) -> LinearThompson:
    model = LinearThompson()
    for r in rewards:
        model.update(r["decision_id"], r["features"], r["action"], r["purchased"], r["redeemed"])
    return model


def assert_same_model(merged: LinearThompson, whole: LinearThompson) -> None:
    assert merged.updates == whole.updates and merged.version == whole.version
    assert set(merged.arms) == set(whole.arms)
    for arm_id, arm in whole.arms.items():
        mine = merged.arms[arm_id]
        assert np.allclose(mine.gram, arm.gram) and np.allclose(mine.target, arm.target)
        assert (mine.n, mine.counts) == (arm.n, arm.counts)
    offers, mean, _ = merged.posterior()
    whole_offers, whole_mean, _ = whole.posterior()
    assert offers == whole_offers and np.allclose(mean, whole_mean)


def test_sum_of_per_partition_statistics_is_the_bandit_that_learned_every_reward():
    rewards = random_rewards(300)
    learning = PartitionedLearning(PromotionPolicy())
    changed = learning.learn(rewards, partition_of)
    assert changed == {f"shop:{p}" for p in range(PARTITIONS)}
    parts = [learning.parts[key]["bandit"] for key in sorted(changed)]
    assert sum(part.updates for part in parts) == 300 and all(part.updates for part in parts)
    merged = learning.policy.variants["bandit"].models["shop"]
    assert_same_model(merged, learned_in_one(rewards))
    assert_same_model(LinearThompson.merged(parts), learned_in_one(rewards))


def test_replays_are_no_ops_and_parts_reload_into_another_policy():
    rewards = random_rewards(120, seed=1, merchants=("shop", "other"))
    learning = PartitionedLearning(PromotionPolicy())
    learning.learn(rewards[:80], partition_of)
    assert learning.learn(rewards[:80], partition_of) == set()  # the same rewards again
    learning.learn(rewards[80:], partition_of)
    # Holdout, unsent and superseded rewards are not learned.
    skipped = [
        {**rewards[0], "decision_id": "h", "arm": "holdout"},
        {**rewards[1], "decision_id": "s", "reason": "superseded"},
    ]
    assert learning.learn(skipped, partition_of) == set()

    # A fresh worker loads the entries as JSON (the table's changelog) and gets the same bandit.
    entries = {key: orjson.loads(orjson.dumps(learning.entry(key))) for key in learning.parts}
    restored = PartitionedLearning(PromotionPolicy())
    assert restored.load(entries) == []
    for merchant in ("shop", "other"):
        whole = learned_in_one([r for r in rewards if r["merchant_id"] == merchant])
        assert_same_model(restored.policy.variants["bandit"].models[merchant], whole)
        assert_same_model(learning.policy.variants["bandit"].models[merchant], whole)
    assert restored.summary() == learning.summary()
    assert restored.summary()["bandit"]["shop"]["updates"] == 60

    # An unusable entry is left out, the others still count.
    bad = {"shop:9": {"bandit": {"format": "other"}}}
    assert restored.load(bad) == ["shop:9"]
    assert restored.policy.variants["bandit"].models["shop"].updates == 60


class FakeEvent:
    """What the table view reads of a Faust event: its partition (weak-referenceable)."""

    def __init__(self, partition: int) -> None:
        self.message = SimpleNamespace(partition=partition)


def test_two_workers_share_one_table_and_converge():
    rewards = random_rewards(200, seed=2)
    table: dict[bytes, bytes] = {}  # the global table: every worker reads every entry
    a = BanditTable(table, PartitionedLearning(PromotionPolicy()))
    b = BanditTable(table, PartitionedLearning(PromotionPolicy()))
    mine_a = [r for r in rewards if partition_of(r["customer_key"]) in (0, 1)]
    mine_b = [r for r in rewards if partition_of(r["customer_key"]) in (2, 3)]

    a.learn(mine_a, partition_of)
    assert a.flush({0: FakeEvent(0)}) == ["shop:0"]  # partition 1 waits for one of its events
    assert set(table) == {b"shop:0"} and a.dirty == {"shop:1"}
    assert a.flush({0: FakeEvent(0), 1: FakeEvent(1)}) == ["shop:1"] and not a.dirty
    b.learn(mine_b, partition_of)
    b.flush({p: FakeEvent(p) for p in range(PARTITIONS)})
    assert set(table) == {f"shop:{p}".encode() for p in range(PARTITIONS)}

    assert a.changed and b.changed
    a.refresh()
    b.refresh()
    whole = learned_in_one(rewards)
    for worker in (a, b):
        assert_same_model(worker.learning.policy.variants["bandit"].models["shop"], whole)

    # A worker on an empty state directory reads the entries back.
    fresh = BanditTable(table, PartitionedLearning(PromotionPolicy()))
    fresh.refresh()
    assert_same_model(fresh.learning.policy.variants["bandit"].models["shop"], whole)
    # Nothing changed since: a refresh loads nothing.
    fresh.changed = False
    fresh.refresh()
    assert not fresh.changed


def test_learning_into_an_entry_first_loads_its_newer_version():
    """After a rebalance the new owner of a partition continues from the table's entry."""
    rewards = random_rewards(90, seed=3)
    table: dict[bytes, bytes] = {}
    old_owner = BanditTable(table, PartitionedLearning(PromotionPolicy()))
    new_owner = BanditTable(table, PartitionedLearning(PromotionPolicy()))
    new_owner.refresh()  # sees nothing yet
    old_owner.learn(rewards[:60], partition_of)
    old_owner.flush({p: FakeEvent(p) for p in range(PARTITIONS)})
    new_owner.learn(rewards[60:], partition_of)  # no refresh in between
    new_owner.flush({p: FakeEvent(p) for p in range(PARTITIONS)})
    assert_same_model(
        new_owner.learning.policy.variants["bandit"].models["shop"], learned_in_one(rewards)
    )
    old_owner.refresh()
    assert_same_model(
        old_owner.learning.policy.variants["bandit"].models["shop"], learned_in_one(rewards)
    )


def test_an_entry_is_written_at_most_every_write_s_and_a_later_flush_writes_the_rest():
    rewards = random_rewards(60, seed=4)
    table: dict[bytes, bytes] = {}
    worker = BanditTable(table, PartitionedLearning(PromotionPolicy()), write_s=3600.0)
    worker.learn(rewards[:30], partition_of)
    assert worker.flush({p: FakeEvent(p) for p in range(PARTITIONS)})  # first writes: at once
    worker.learn(rewards[30:], partition_of)
    assert worker.flush() == [] and worker.dirty  # written too recently: kept
    # The worker's own bandit has every reward at once; the table gets them later.
    assert_same_model(
        worker.learning.policy.variants["bandit"].models["shop"], learned_in_one(rewards)
    )
    worker.write_s = 0.0
    assert sorted(worker.flush()) == sorted(worker.raw) and not worker.dirty  # retained events
    reader = BanditTable(table, PartitionedLearning(PromotionPolicy()))
    reader.refresh()
    assert_same_model(
        reader.learning.policy.variants["bandit"].models["shop"], learned_in_one(rewards)
    )
