"""Batch recovery: a table's changelog read into RocksDB in batches before Faust's recovery.

Faust recovers a table record by record: each changelog record travels through the consumer's
delivery loop, the changelog queue and the recovery loop before it reaches RocksDB, about 92 us
of a worker's CPU per record (BENCHMARKS.md, "Scale-out"): 2-5 minutes for a million customers.
`BatchRecovery` is Faust's `Recovery` with one step added. When Faust has the changelog
partitions a rebalance gave the worker and the offsets its stores persisted, and before it
seeks to them (``_build_offsets``, for the active partitions and then the standbys), each
partition is read from its persisted offset + 1 to its end by a librdkafka consumer of its own
(assigned, never in a group: batched ``consume``), and written with one RocksDB ``WriteBatch``
per partition per batch of records: the values (a null value deletes the key) and the store's
persisted offset, the one Faust's ``apply_changelog_batch`` writes, in the same batch. Faust
then starts reading where the batches ended and finds nothing, or only what was written in the
meantime, left to read.

The end of a partition is where a fetch response's high watermark says it is (librdkafka's
end-of-partition event), never ListOffsets: Tansu under-reports it (agents/runtime/transport.py).

The same records in the same order, keys and values as bytes, the same skip rule as Faust's (a
record at or before the persisted offset is not applied): the store ends with what Faust's
recovery would have written (tests/test_batch_recovery.py compares them). The batches bypass
RocksDB's write-ahead log and each store is flushed to its table files before Faust goes on: a
worker killed meanwhile loses what was not flushed, its data and its offset together (RocksDB
recovers a prefix of the writes), and reads that part again when it restarts. Anything that goes
wrong (a broker error, a store that cannot be opened, a partition that stops moving, the reading
near Faust's timeout for the step) ends the batch reading where it stands, logged, and Faust's
own recovery reads the rest. An active partition whose store already holds its last record
(Faust's highwater) is not read. Only partitioned tables on RocksDB (``rocksdict``) with no
changelog callback take this path, under Faust's at-least-once processing (nextbest's): global
tables and the others keep Faust's. Switched by ``NEXTBEST_BATCH_RECOVERY``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple, Protocol

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from faust.stores.rocksdb import Store as RocksDBStore
from faust.tables import TableManager
from faust.tables.recovery import Recovery
from faust.types import TP
from faust.types.enums import ProcessingGuarantee
from faust.types.tables import CollectionT
from faust.types.transports import ConsumerT
from rocksdict import WriteBatch, WriteOptions

from agents.runtime.settings import Settings
from agents.runtime.transport import TANSU_FETCH_MAX_WAIT_MS

log = logging.getLogger(__name__)

RECORDS_PER_BATCH = 10_000
READ_TIMEOUT_S = 1.0  # one ``consume`` call's longest wait
#: a partition that yields neither a record nor its end for this long is left to Faust
STALL_S = 15.0
#: share of Faust's ``broker_request_timeout`` the reading may take: Faust gives up its whole
#: recovery (the worker never gets ready) when ``_build_offsets`` runs past that timeout
DEADLINE_SHARE = 0.75


TRANSIENT_CODES = (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN)


class ChangelogRecord(NamedTuple):
    tp: TP
    offset: int
    key: bytes
    value: bytes | None  # None: a tombstone, the key is deleted


class BatchLike(Protocol):
    def put(self, key: bytes, value: bytes) -> None: ...
    def delete(self, key: bytes) -> None: ...


def start_offset(persisted: int | None) -> int:
    """Where to start reading a partition whose store persisted ``persisted`` (the offset of
    the last record it applied; None: nothing yet)."""
    return OFFSET_BEGINNING if persisted is None else persisted + 1


def fill_batches(
    records: Iterable[ChangelogRecord],
    applied: MutableMapping[TP, int | None],
    new_batch: Callable[[], BatchLike],
) -> dict[TP, BatchLike]:
    """One write batch per partition with ``records`` in order, a null value a delete, and
    the persisted offset (the store's ``offset_key``) of the last record in it.

    A record at or before ``applied[tp]`` (the last offset applied) is left out, as Faust's
    recovery does; ``applied`` advances to the last offset of each batch."""
    batches: dict[TP, BatchLike] = {}
    for record in records:
        last = applied.get(record.tp)
        if last is not None and record.offset <= last:
            continue
        batch = batches.get(record.tp)
        if batch is None:
            batch = batches[record.tp] = new_batch()
        if record.value is None:
            batch.delete(record.key)
        else:
            batch.put(record.key, record.value)
        applied[record.tp] = record.offset
    for tp, batch in batches.items():
        batch.put(RocksDBStore.offset_key, str(applied[tp]).encode())
    return batches


def batch_recoverable(table: CollectionT) -> bool:
    """Whether ``table`` takes the batch path: partitioned, on RocksDB through ``rocksdict``,
    no changelog callback (the batches write the store directly, as Faust's
    ``apply_changelog_batch`` does)."""
    store = table.data
    return (
        isinstance(store, RocksDBStore)
        and store.use_rocksdict
        and not table.is_global
        and table._on_changelog_event is None  # type: ignore[attr-defined]
    )


def up_to_date(table: CollectionT, tp: TP, last_offset: int | None) -> bool:
    """Whether ``table``'s store holds ``tp`` up to ``last_offset`` (the offset of the
    partition's last record, -1: none; None: not known)."""
    if last_offset is None:
        return False
    persisted = table.persisted_offset(tp)
    return (-1 if persisted is None else persisted) >= last_offset


def changelog_consumer_config(settings: Settings) -> dict[str, Any]:
    """librdkafka settings of the changelog reader: the worker's broker and security settings,
    assigned partitions only (the group id is never joined nor committed to); records of
    transactions that were not committed are read, as Faust's at-least-once consumer reads
    them."""
    return {
        **settings.kafka_client_config(),
        "group.id": f"{settings.app_id}-batch-recovery",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_uncommitted",
        "max.partition.fetch.bytes": 8 << 20,
        "queued.max.messages.kbytes": 65536,
        # the next fetch goes out as soon as the application has taken the queued records
        # (librdkafka waits 1 s by default once its queue was full: most of the time)
        "fetch.queue.backoff.ms": 5,
        **({"fetch.wait.max.ms": TANSU_FETCH_MAX_WAIT_MS} if settings.embedded_broker else {}),
    }


def transient(error: KafkaError) -> bool:
    """An error librdkafka recovers from by itself (a lost connection, a retriable one)."""
    if error.fatal():
        return False
    return error.retriable() or error.code() in TRANSIENT_CODES


class ChangelogReader:
    """A librdkafka consumer assigned to changelog partitions from given offsets; `read` is
    blocking (run it in a thread), one call at a time."""

    def __init__(self, config: Mapping[str, Any], starts: Mapping[TP, int]) -> None:
        self.consumer = Consumer(dict(config))
        self.tps = {(tp.topic, tp.partition): tp for tp in starts}
        self.consumer.assign(
            [TopicPartition(tp.topic, tp.partition, offset) for tp, offset in starts.items()]
        )

    def read(self, count: int, timeout: float) -> tuple[list[ChangelogRecord], set[TP]]:
        """Up to ``count`` records, and the partitions whose end (a fetch response's high
        watermark) was reached; those are not read further."""
        records: list[ChangelogRecord] = []
        ended: set[TP] = set()
        tps = self.tps
        for message in self.consumer.consume(count, timeout):
            error = message.error()
            if error is not None and error.code() != KafkaError._PARTITION_EOF:
                if not transient(error):
                    raise KafkaException(error)
                continue  # librdkafka retries it
            tp = tps.get((message.topic(), message.partition()))
            if tp is None or tp in ended:
                continue
            if error is None:
                record = ChangelogRecord(tp, message.offset(), message.key(), message.value())
                records.append(record)
            else:
                ended.add(tp)
        if ended:
            self.consumer.incremental_unassign(
                [TopicPartition(tp.topic, tp.partition) for tp in ended]
            )
            for tp in ended:
                del tps[(tp.topic, tp.partition)]
        return records, ended

    def close(self) -> None:
        self.consumer.close()


class BatchRecovery(Recovery):
    """Faust's recovery, with the changelog read in batches first (see the module)."""

    consumer_config: dict[str, Any] = {}

    async def _build_offsets(
        self, consumer: ConsumerT, tps: set[TP], destination: Any, title: str
    ) -> None:
        tables = {tp: self.tp_to_table[tp] for tp in tps if tp in self.tp_to_table}
        # the active partitions' last offsets are known by now (Faust's highwaters), the
        # standbys' not yet: a partition whose store has its last record is not read
        last_offsets = self.active_highwaters if title == "active" else {}
        eligible = {
            tp: table
            for tp, table in tables.items()
            if batch_recoverable(table) and not up_to_date(table, tp, last_offsets.get(tp))
        }
        if eligible and self.app.conf.processing_guarantee == ProcessingGuarantee.AT_LEAST_ONCE:
            deadline = time.monotonic() + DEADLINE_SHARE * self.app.conf.broker_request_timeout
            try:
                await self._read_in_batches(eligible, destination, title, deadline)
            except Exception:
                log.exception(
                    "Batch recovery of %s partitions failed: Faust's recovery reads the rest",
                    title,
                )
        await super()._build_offsets(consumer, tps, destination, title)

    async def _read_in_batches(
        self,
        tables: Mapping[TP, CollectionT],
        destination: MutableMapping[TP, int | None],
        title: str,
        deadline: float,
    ) -> None:
        dbs: dict[TP, Any] = {}
        applied: dict[TP, int | None] = {}
        for tp, table in tables.items():
            try:
                dbs[tp] = table.data._db_for_partition(tp.partition)  # type: ignore[attr-defined]
            except Exception as exc:  # e.g. locked by another worker on the same directory
                log.warning("Batch recovery: %s left to Faust, its store did not open: %r", tp, exc)
                continue
            applied[tp] = table.persisted_offset(tp)
        if not dbs:
            return
        started = time.monotonic()
        by_topic: Counter[str] = Counter()  # records read
        size = 0  # their keys' and values' bytes
        log.info("Batch recovery of %s changelog partitions started: %d", title, len(dbs))
        executor = ThreadPoolExecutor(1, thread_name_prefix="batch-recovery")
        loop = asyncio.get_running_loop()
        starts = {tp: start_offset(offset) for tp, offset in applied.items()}
        try:
            reader = await loop.run_in_executor(
                executor, ChangelogReader, self.consumer_config, starts
            )
        except BaseException:
            executor.shutdown(wait=False)
            raise
        unwritten = WriteOptions()
        unwritten.disable_wal = True  # flushed to table files below, before Faust goes on
        pending = set(dbs)
        last_progress = time.monotonic()
        try:
            read = loop.run_in_executor(executor, reader.read, RECORDS_PER_BATCH, READ_TIMEOUT_S)
            while True:
                records, ended = await read
                pending -= ended
                now = time.monotonic()
                if records or ended:
                    last_progress = now
                more = bool(pending) and now < deadline and now - last_progress < STALL_S
                if more:  # the next batch is fetched while this one is written
                    read = loop.run_in_executor(
                        executor, reader.read, RECORDS_PER_BATCH, READ_TIMEOUT_S
                    )
                batches = fill_batches(records, applied, lambda: WriteBatch(raw_mode=True))
                for tp, batch in batches.items():
                    dbs[tp].write(batch, unwritten)
                    destination[tp] = applied[tp]
                for record in records:
                    by_topic[record.tp.topic] += 1
                    size += len(record.key) + len(record.value or b"")
                if not more:
                    break
            await asyncio.gather(*(asyncio.to_thread(db.flush, True) for db in dbs.values()))
        finally:
            executor.submit(reader.close)
            executor.shutdown(wait=False)
            for db in dbs.values():  # cancelled, failed: flushed before Faust writes (with its
                db.flush(True)  # write-ahead log) to any of these stores
        seconds = time.monotonic() - started
        total = sum(by_topic.values())
        log.info(
            "Batch recovery of %s changelog partitions read %d records (%d bytes) of %d "
            "partitions in %.1f s (%.0f records/s); by topic: %s%s",
            title,
            total,
            size,
            len(dbs),
            seconds,
            total / max(seconds, 1e-9),
            ", ".join(f"{topic}={count}" for topic, count in sorted(by_topic.items())) or "-",
            f"; not to their end, left to Faust: {sorted(pending)}" if pending else "",
        )


def batch_recovery_table_manager(settings: Settings) -> type[TableManager]:
    """Faust's table manager with `BatchRecovery` as its recovery (Faust's ``TableManager``
    setting), reading the changelog with ``settings``' broker and security settings."""

    class Recovery(BatchRecovery):
        consumer_config = changelog_consumer_config(settings)

    class BatchRecoveryTableManager(TableManager):
        @property
        def recovery(self) -> Recovery:
            if self._recovery is None:
                self._recovery = Recovery(self.app, self, beacon=self.beacon, loop=self.loop)
            return self._recovery  # type: ignore[return-value]

    return BatchRecoveryTableManager
