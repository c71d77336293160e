"""Batch recovery (agents/runtime/recovery.py): its pure parts, and on a real broker and real
RocksDB, a worker that recovers by batches ends with the state Faust's own recovery gives."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import faust
import pytest
from confluent_kafka import OFFSET_BEGINNING, KafkaError
from confluent_kafka.admin import AdminClient, NewTopic
from faust.stores.rocksdb import RocksDBOptions
from faust.stores.rocksdb import Store as RocksDBStore
from faust.types import TP

from agents.runtime.app import faust_config
from agents.runtime.recovery import (
    BatchRecovery,
    ChangelogRecord,
    batch_recoverable,
    batch_recovery_table_manager,
    changelog_consumer_config,
    fill_batches,
    start_offset,
    transient,
    up_to_date,
)
from agents.runtime.settings import Settings
from agents.runtime.topics import key_partition
from tests.harness import Cluster

OFFSET_KEY = RocksDBStore.offset_key


class RecordingBatch:
    def __init__(self) -> None:
        self.ops: list[tuple[str, bytes, bytes | None]] = []

    def put(self, key: bytes, value: bytes) -> None:
        self.ops.append(("put", key, value))

    def delete(self, key: bytes) -> None:
        self.ops.append(("delete", key, None))


def test_reading_starts_after_the_persisted_offset_or_at_the_beginning():
    assert start_offset(None) == OFFSET_BEGINNING
    assert start_offset(-1) == 0
    assert start_offset(41) == 42


def test_batches_keep_log_order_deletes_and_the_last_offset_per_partition():
    a, b = TP("t-changelog", 0), TP("t-changelog", 1)
    records = [
        ChangelogRecord(a, 5, b"k1", b"v1"),
        ChangelogRecord(b, 0, b"k2", b"v2"),
        ChangelogRecord(a, 6, b"k1", None),  # a tombstone
        ChangelogRecord(a, 7, b"k3", b"v3"),
    ]
    applied: dict[TP, int | None] = {a: 4, b: None}
    batches = fill_batches(records, applied, RecordingBatch)
    assert batches[a].ops == [
        ("put", b"k1", b"v1"),
        ("delete", b"k1", None),
        ("put", b"k3", b"v3"),
        ("put", OFFSET_KEY, b"7"),
    ]
    assert batches[b].ops == [("put", b"k2", b"v2"), ("put", OFFSET_KEY, b"0")]
    assert applied == {a: 7, b: 0}


def test_records_at_or_before_the_applied_offset_are_left_out_as_faust_does():
    a = TP("t-changelog", 0)
    applied: dict[TP, int | None] = {a: 6}
    records = [ChangelogRecord(a, 5, b"old", b"x"), ChangelogRecord(a, 6, b"old", None)]
    assert fill_batches(records, applied, RecordingBatch) == {}
    assert applied == {a: 6}
    batches = fill_batches([*records, ChangelogRecord(a, 7, b"new", b"y")], applied, RecordingBatch)
    assert batches[a].ops == [("put", b"new", b"y"), ("put", OFFSET_KEY, b"7")]


class PersistedAt:
    def __init__(self, offset: int | None) -> None:
        self.offset = offset

    def persisted_offset(self, tp: TP) -> int | None:
        return self.offset


def test_a_partition_whose_store_has_its_last_record_is_not_read():
    tp = TP("t-changelog", 0)
    assert up_to_date(PersistedAt(41), tp, 41)
    assert not up_to_date(PersistedAt(40), tp, 41)
    assert up_to_date(PersistedAt(None), tp, -1)  # an empty partition, an empty store
    assert not up_to_date(PersistedAt(None), tp, 0)
    assert not up_to_date(PersistedAt(41), tp, None)  # the end not known: read to find it


def test_the_reader_gives_up_on_errors_librdkafka_does_not_recover_from():
    assert transient(KafkaError(KafkaError._TRANSPORT))
    assert transient(KafkaError(KafkaError.REQUEST_TIMED_OUT, retriable=True))
    assert not transient(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))
    assert not transient(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    assert not transient(KafkaError(KafkaError._TRANSPORT, fatal=True))


def test_the_reader_uses_the_workers_broker_and_security_settings():
    settings = Settings(
        broker_url="kafka://k1:9093;kafka://k2:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="nextbest",
        sasl_password="secret",
        ssl_cafile="/etc/ca.pem",
    )
    config = changelog_consumer_config(settings)
    assert config["bootstrap.servers"] == "k1:9093,k2:9093"
    assert config["security.protocol"] == "SASL_SSL"
    assert (config["sasl.mechanism"], config["sasl.username"]) == ("SCRAM-SHA-512", "nextbest")
    assert config["ssl.ca.location"] == "/etc/ca.pem"
    assert config["enable.partition.eof"] and not config["enable.auto.commit"]
    assert "fetch.wait.max.ms" not in config  # librdkafka's default against a real Kafka
    assert "fetch.wait.max.ms" in changelog_consumer_config(replace(settings, embedded_broker=True))


def test_the_setting_switches_faust_table_manager():
    manager = faust_config(Settings.from_env({}))["TableManager"]
    app = faust.App("batch-recovery-switch", TableManager=manager, store="memory://")
    assert isinstance(app.tables.recovery, BatchRecovery)
    assert "TableManager" not in faust_config(Settings.from_env({"NEXTBEST_BATCH_RECOVERY": "0"}))


def test_only_partitioned_rocksdb_tables_take_the_batch_path(tmp_path: Path):
    manager = batch_recovery_table_manager(Settings())
    app = faust.App("batch-recovery-tables", store="rocksdb://", datadir=str(tmp_path))
    app.conf.TableManager = manager
    plain = app.Table("plain", key_type=bytes, value_type=bytes)
    shared = app.GlobalTable("shared", key_type=bytes, value_type=bytes)
    in_memory = faust.App("batch-recovery-memory", store="memory://").Table(
        "in-memory", key_type=bytes, value_type=bytes
    )
    watched = app.Table(
        "watched", key_type=bytes, value_type=bytes, on_changelog_event=lambda event: None
    )
    assert batch_recoverable(plain)
    assert not batch_recoverable(shared)
    assert not batch_recoverable(in_memory)
    assert not batch_recoverable(watched)


# -- on the embedded broker, real workers, real RocksDB -----------------------------------------

PARTITIONS = 4
CUSTOMERS = 3000


def poll(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def changelog_records(first: int, count: int, round_: int) -> list[tuple[bytes, bytes | None]]:
    """``count`` customers' records from ``first``, overwritten once; every seventh deleted."""
    records: list[tuple[bytes, bytes | None]] = []
    for i in range(first, first + count):
        key = f"uci-gift-shop:c:customer-{i}".encode()
        records.append((key, f'{{"round":{round_},"i":{i},"pad":"{"x" * (i % 900)}"}}'.encode()))
        records.append((key, None if i % 7 == 0 else f'{{"round":{round_},"i":{i}}}'.encode()))
    return records


def produce(cluster: Cluster, topic: str, records: list[tuple[bytes, bytes | None]]) -> None:
    for key, value in records:
        cluster.producer.produce(
            topic, key=key, value=value, partition=key_partition(key, PARTITIONS)
        )
        cluster.producer.poll(0)
    assert cluster.producer.flush(60) == 0


def table_contents(state_dir: Path) -> dict[str, dict[bytes, bytes]]:
    """Every RocksDB partition store under a worker's state directory, by its file name."""
    contents = {}
    for path in sorted(state_dir.rglob("*.db")):
        db = RocksDBOptions().open(path)
        try:
            contents[path.name] = dict(db.items())
        finally:
            db.close()
    return contents


def recover(cluster: Cluster, name: str, batch: bool, since: int) -> str:
    """Start worker ``name`` (its own state directory, kept between runs), wait until it
    recovered and is ready, stop it; its log from ``since`` (characters)."""
    cluster.settings = replace(cluster.settings, batch_recovery=batch)
    cluster.start_worker(name)
    poll(lambda: "Worker ready" in cluster.log(name)[since:], 120, f"worker {name} ready")
    cluster.stop_worker(name)
    return cluster.log(name)[since:]


@pytest.fixture
def cluster(tmp_path: Path):
    cluster = Cluster(tmp_path, partitions=PARTITIONS, policy="rules")
    admin = AdminClient(cluster.settings.kafka_client_config())
    topic = f"{cluster.settings.app_id}-customers-changelog"
    new = NewTopic(topic, PARTITIONS, 1, config={"cleanup.policy": "compact"})
    admin.create_topics([new])[topic].result(30)
    yield cluster, topic
    cluster.close()


def test_batch_recovery_ends_with_the_state_faust_recovery_gives(cluster):
    cluster, topic = cluster
    produce(cluster, topic, changelog_records(0, CUSTOMERS, 1))
    batch_log = recover(cluster, "batch", True, 0)
    faust_log = recover(cluster, "faust", False, 0)
    assert "Batch recovery of active changelog partitions read" in batch_log
    assert "Batch recovery" not in faust_log
    assert "Restoring state from changelog topics" in faust_log
    batch, reference = (
        table_contents(cluster.tmp / "state-batch"),
        table_contents(cluster.tmp / "state-faust"),
    )
    customers = {name: kv for name, kv in reference.items() if name.startswith("customers-")}
    assert len(customers) == PARTITIONS
    assert all(OFFSET_KEY in kv for kv in customers.values())
    assert sum(len(kv) - 1 for kv in customers.values()) == CUSTOMERS - len(range(0, CUSTOMERS, 7))
    assert batch == reference

    # Both restart on their state directories after more changes: read from the persisted offsets
    produce(cluster, topic, changelog_records(CUSTOMERS // 2, CUSTOMERS, 2))
    since_batch, since_faust = len(cluster.log("batch")), len(cluster.log("faust"))
    batch_log = recover(cluster, "batch", True, since_batch)
    recover(cluster, "faust", False, since_faust)
    assert f"read {2 * CUSTOMERS} records" in batch_log  # the new records only
    assert table_contents(cluster.tmp / "state-batch") == table_contents(
        cluster.tmp / "state-faust"
    )


def test_a_worker_killed_in_batch_recovery_recovers_on_restart(cluster):
    cluster, topic = cluster
    produce(cluster, topic, changelog_records(0, 10 * CUSTOMERS, 1))
    recover(cluster, "faust", False, 0)
    cluster.settings = replace(cluster.settings, batch_recovery=True)
    cluster.start_worker("killed")
    poll(
        lambda: "Batch recovery of active changelog partitions started" in cluster.log("killed"),
        120,
        "batch recovery to start",
    )
    process, _ = cluster.workers.pop("killed")
    os.kill(process.pid, signal.SIGKILL)
    process.wait(30)
    since = len(cluster.log("killed"))
    recover(cluster, "killed", True, since)
    assert table_contents(cluster.tmp / "state-killed") == table_contents(
        cluster.tmp / "state-faust"
    )
