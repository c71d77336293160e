"""``nextbest bench-scale``: how fast a worker that joins, leaves or dies hands its partitions
over, with N customers' state in the tables, and what the hand-over costs in decisions.

The state. N customers' records are produced straight to the ``customers`` table's changelog
(``<app id>-customers-changelog``, each key on the partition `key_partition` routes it to, as
the worker pins it) with confluent-kafka before any worker starts: a worker then recovers them
exactly as it recovers what it wrote itself. Running the events through a worker instead goes at
~10k events/s, and a customer with a few real orders is dozens of events (an invoice of UCI
Online Retail replays as a view and a cart add per line, a checkout and the order): a million
customers would take hours before the first measurement. The records are built with the
domain's functions (`streams.state.customer_state.apply_event`, the worker's own): each of a
pool of `TEMPLATES` records is a synthetic profile plus every event of 1-4 real invoices (the
first `INVOICES` invoices of the file), and customer ``i`` gets record ``i mod TEMPLATES`` with
the input offsets (orders, profiles) of its own partition. So a record has the bytes of a
customer with a few real orders (the bounded lists, 64 event ids and 20 views, fill up with
one wholesale invoice). The other tables (promotion ledgers, the bandit, the timers) start
empty; no next-purchase model is loaded (the policy's decisions need none).

Probes. From before the first worker starts to the end, a thread sends a ``cart_add`` for an
existing customer (`PROBES_PER_PARTITION` customers per partition, in turn) to every partition,
``--probe-rate`` times a second, through the same murmur2 partitioner as every producer. The
default policy (the promotion policy) writes one decision record per cart event; a reader
thread collects the decision and promotion records. Probe event times run at a tenth of the
wall clock's pace from the day after the data, so no journey timer (an abandoned cart: 60 min)
and no attribution window (48 h) ends during a run: every decision is a probe's.

Scenarios, per N, on one embedded broker, two workers at most (the machine has two cores):

1. recovery: worker A starts on an empty state directory and recovers the N customers;
2. join: worker B starts on an empty state directory beside A;
3. leave: B gets SIGTERM;
4. kill: A is stopped; two workers start together on empty state directories with
   ``NEXTBEST_STANDBY_REPLICAS=1`` and wait until each holds a copy of every customer (its
   partitions plus standbys: ``nextbest_state_customers``); then the group's leader (the
   harder case: the group needs a new one) gets SIGKILL. The same again with
   ``NEXTBEST_STANDBY_REPLICAS=0`` (each holds its own half only).

The setups between them (workers stopping, the kill's pair starting) are phases too, not timed:
every probe is counted in the phase it was sent in. Workers stop one at a time, the newest
first, each once the group has re-formed.

After each change the bench waits until every partition decides its probes again within
`LAG_S` (a phase ends there, plus `TAIL_S`), or gives up after ``--timeout`` seconds: a group
that never re-forms (Tansu can wedge one whose leader stops while it re-forms) is reported,
not hidden, and the rest of that size's scenarios are skipped.

Figures, per scenario: "decides again", the seconds from the change (a worker's start, the
signal) until every partition decides again: per partition, the decision record that ends its
longest silence after the change (the hand-over's stall; decision records carry the worker's
send time), the max over partitions; the longest silence itself; where the time went, from the
Faust and aiokafka log lines of the worker that takes the partitions over (rejoining the group,
partitions assigned, batch reading of the changelog started and done, Faust's reading started and
done, streams resumed; agents/runtime/recovery.py); and the accounting of
the probes sent in the phase: lost (no decision record at all), decision records repeated
identically (at-least-once redelivery: consumers dedupe on ``decision_id``), decision ids with
two different records (``actions``: of them, with two different actions), and offer ids on the
promotions topic more than once (identical but ``decided_at``, or different). The recovery rate:
the customers' changelog records the worker read to recover its active partitions (the batch
reading's count, plus those left to Faust's reading: its tables of end and start offsets in the
log) over the seconds the two readings took. State bytes per customer:
the changelog records' key and value, and worker A's RocksDB directory right after its recovery.
"""

from __future__ import annotations

import hashlib
import random
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from agents.runtime.settings import Settings
from agents.runtime.topics import ensure_topics, key_partition
from agents.tools.broker import EmbeddedBroker, free_port
from agents.tools.processes import PROCESSED, scrape, start_worker, stop_worker
from agents.tools.replay import (
    DEFAULT_MERCHANT,
    EventBuilder,
    invoices,
    producer_config,
    read_rows,
    synthetic_profile,
)
from schemas.keys import iso, state_key
from schemas.records import SCHEMA_VERSION
from streams.state import customer_state

APP_ID = "bench-scale"
TEMPLATES = 5000
INVOICES = 6000
PROBES_PER_PARTITION = 8
#: a partition decides again once every probe sent to it is decided within this many seconds
LAG_S = 2.0
#: ... over a window of probes this long
STEADY_WINDOW_S = 2.0
TAIL_S = 2.0  # a phase goes on this long after it is steady, for late records
POLL_S = 0.25
PROBE_CLOCK = datetime(2011, 12, 10, tzinfo=UTC).timestamp()  # the day after the data
PROBE_CLOCK_PACE = 0.1  # probe event time per wall-clock second
CART_VALUES = (18.5, 42.0, 64.9, 95.0, 155.0, 210.0, 320.0, 480.0, 640.0)
SCENARIOS = ("recovery", "join", "leave", "kill")
QUICK_CUSTOMERS = (2000,)
RECOVERY_BAR = (1_000_000, 60.0)  # (customers, the most seconds) on an empty state directory
KILL_BAR_S = 15.0  # standby replicas: a killed worker's partitions deciding again
#: log lines (Faust, aiokafka) of the worker that takes partitions over: where the time goes
LOG_MARKS = {
    "rejoin": "(Re-)joining group",
    "assigned": "Executing _on_partitions_assigned",
    "batch": "Batch recovery of active changelog partitions started",
    "batched": "Batch recovery of active changelog partitions read",
    "restoring": "Restoring state from changelog topics",
    "restored": "Done reading from changelog topics",
    "ready": "Worker ready",
}
LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")
LEADER_LINE = "Elected group leader"
#: Faust's recovery tables: the changelog's last offsets, and where this worker starts reading
HIGHWATERS = "Highwater for active changelog partitions"
STARTS = "active offsets at start of reading"
#: agents/runtime/recovery.py: the active partitions' records read in batches before Faust's,
#: per changelog topic (``by topic: <topic>=<records>, ...``)
BATCH_READ = "Batch recovery of active changelog partitions read"


@dataclass(frozen=True)
class ScaleConfig:
    file: Path
    customers: tuple[int, ...] = (100_000, 1_000_000)
    partitions: int = 8
    scenarios: tuple[str, ...] = SCENARIOS
    standby: tuple[int, ...] = (1, 0)  # NEXTBEST_STANDBY_REPLICAS of the kill scenarios
    probe_rate: float = 10.0  # probes per partition per second
    timeout: float = 600.0  # seconds a phase may take before the bench gives up on it
    keep_logs: bool = False  # keep the worker and broker logs of every run (else: of failures)


# -- the state ------------------------------------------------------------------------------


def changelog_topic(settings: Settings) -> str:
    """The ``customers`` table's changelog, as Faust names it."""
    return f"{settings.app_id}-customers-changelog"


def customer_id(i: int) -> str:
    """The id of synthetic customer ``i``."""
    return f"S{i:07d}"


def state_templates(file: Path, count: int = TEMPLATES, seed: int = 0) -> list[bytes]:
    """``count`` customer records (orjson, ``"offsets":{}`` left for the caller): a synthetic
    profile and every event of 1-4 real invoices each, applied with the worker's functions."""
    builder = EventBuilder(DEFAULT_MERCHANT)
    pool: list[tuple[str, list]] = []
    for rows in invoices(read_rows(file)):
        if rows[0].invoice.startswith("C"):
            continue
        events = [e for e in builder.invoice_events(rows) if e.topic_kind != "profiles"]
        if any(e.topic_kind == "orders" for e in events):
            pool.append((rows[0].country, events))
        if len(pool) >= INVOICES:
            break
    rng = random.Random(seed)
    templates = []
    for j in range(count):
        who = f"T{j}"
        picks = sorted(rng.sample(range(len(pool)), rng.randint(1, 4)))
        state = customer_state.new_state()
        profile = {"event_id": f"profile-{who}", "event_type": "profile", "_ts": 0.0}
        customer_state.apply_event(
            state, "profiles", {**profile, **synthetic_profile(who, pool[picks[0]][0])}
        )
        for pick in picks:
            for event in pool[pick][1]:
                value = {**event.value, "customer_id": who, "_ts": event.ts}
                customer_state.apply_event(state, event.topic_kind, value)
        templates.append(orjson.dumps(state))
    return templates


@dataclass
class Loaded:
    bytes: int  # keys and values
    seconds: float
    broker_rss: int | None  # bytes, after loading


def _rss(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def load_state(
    settings: Settings, n: int, templates: Sequence[bytes], broker: EmbeddedBroker
) -> Loaded:
    """N customer records on the changelog (created here with the table's partitions)."""
    topic = changelog_topic(settings)
    admin = AdminClient(settings.kafka_client_config())
    new = NewTopic(
        topic,
        settings.partitions,
        settings.replication_factor,
        config={"cleanup.policy": "compact"},
    )
    admin.create_topics([new])[topic].result(30)
    producer = Producer({**producer_config(settings), "linger.ms": 20})
    orders, profiles = settings.topics.orders, settings.topics.profiles
    started = time.monotonic()
    total = 0
    for i in range(n):
        key = state_key(DEFAULT_MERCHANT, customer_id(i), None).encode()
        partition = key_partition(key, settings.partitions)
        offsets = orjson.dumps({orders: [partition, i], profiles: [partition, i]})
        value = templates[i % len(templates)].replace(b'"offsets":{}', b'"offsets":' + offsets, 1)
        total += len(key) + len(value)
        while True:
            try:
                producer.produce(topic, key=key, value=value, partition=partition)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 10000 == 0:
            producer.poll(0)
    if producer.flush(300):
        raise RuntimeError(f"the changelog load did not finish: see {broker.log_path}")
    seconds = time.monotonic() - started
    return Loaded(total, seconds, _rss(broker.process.pid) if broker.process else None)


def probe_customers(n: int, partitions: int) -> dict[int, list[str]]:
    """`PROBES_PER_PARTITION` existing customers per partition (the first ids that land there)."""
    chosen: dict[int, list[str]] = {p: [] for p in range(partitions)}
    for i in range(n):
        who = customer_id(i)
        picked = chosen[key_partition(state_key(DEFAULT_MERCHANT, who, None), partitions)]
        if len(picked) < PROBES_PER_PARTITION:
            picked.append(who)
            if all(len(c) >= PROBES_PER_PARTITION for c in chosen.values()):
                break
    if any(not c for c in chosen.values()):
        raise ValueError(f"{n} customers leave a partition without a customer to probe")
    return chosen


# -- probes and outputs ------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    event_id: str
    partition: int
    sent_at: float  # time.time() at produce


class Probes(threading.Thread):
    """Cart events for existing customers, one per partition ``rate`` times a second."""

    def __init__(
        self,
        settings: Settings,
        customers: dict[int, list[str]],
        rate: float,
        products: list[tuple[str, float]],
    ) -> None:
        super().__init__(name="probes", daemon=True)
        self.settings = settings
        self.customers = customers
        self.rate = rate
        self.products = products  # (real product id, made-up unit price)
        self.sent: list[Probe] = []  # appended by this thread only
        self.failed = 0  # delivery errors
        self.misrouted = 0  # delivered to another partition than key_partition says
        self.stopping = threading.Event()
        self.started_at = 0.0

    def _event(self, who: str, seq: int, now: float) -> dict:
        product, price = self.products[seq % len(self.products)]
        return {
            "schema_version": SCHEMA_VERSION,
            "event_id": f"probe-{seq}",
            "event_type": "cart_add",
            "merchant_id": DEFAULT_MERCHANT,
            "event_time": iso(PROBE_CLOCK + (now - self.started_at) * PROBE_CLOCK_PACE),
            "customer_id": who,
            "session_id": None,
            "lines": [{"product_id": product, "quantity": 1, "unit_price": price}],
            "cart_value": CART_VALUES[seq % len(CART_VALUES)],
            "currency": "GBP",
        }

    def run(self) -> None:
        producer = Producer(producer_config(self.settings))
        topic = self.settings.topics.cart

        def delivered(error: object, message: object, expected: int) -> None:
            if error is not None:
                self.failed += 1
            elif message.partition() != expected:
                self.misrouted += 1

        self.started_at = time.time()
        tick = 1.0 / self.rate
        next_at = time.monotonic()
        seq = round_ = 0
        while not self.stopping.is_set():
            for partition, customers in self.customers.items():
                who = customers[round_ % len(customers)]
                now = time.time()
                event = self._event(who, seq, now)
                producer.produce(
                    topic,
                    key=state_key(DEFAULT_MERCHANT, who, None).encode(),
                    value=orjson.dumps(event),
                    on_delivery=lambda e, m, p=partition: delivered(e, m, p),
                )
                self.sent.append(Probe(event["event_id"], partition, now))
                seq += 1
            producer.poll(0)
            round_ += 1
            next_at += tick
            self.stopping.wait(max(0.0, next_at - time.monotonic()))
        producer.flush(30)

    def stop(self) -> None:
        self.stopping.set()
        self.join(60)


@dataclass(frozen=True)
class Output:
    """What the figures need of a decision or promotion record."""

    decision: bool  # a decision record (else an offer on the promotions topic)
    partition: int
    at: float  # the record's timestamp (the worker's send time), seconds
    cart_event_id: str
    label: str  # a decision's action, an offer's id
    digest: bytes  # of the record's content (an offer's without ``decided_at``)

    @classmethod
    def of(cls, decision: bool, partition: int, at: float, value: bytes) -> Output:
        record = orjson.loads(value)
        label = record["action"] if decision else record["offer_id"]
        if not decision:
            record.pop("decided_at", None)  # the one field a re-sent offer may change
        content = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
        digest = hashlib.blake2b(content, digest_size=16).digest()
        return cls(decision, partition, at, record["cart_event_id"], label, digest)


class OutputReader(threading.Thread):
    """Every record of the decisions and promotions topics, as they come."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="outputs", daemon=True)
        self.settings = settings
        self.topics = (settings.topics.decisions, settings.topics.promotions)
        self.records: list[Output] = []
        self.decided: set[str] = set()  # cart event ids with a decision record
        self.at_end: set[tuple[str, int]] = set()
        self.stopping = threading.Event()

    def run(self) -> None:
        consumer = Consumer(
            {
                **self.settings.kafka_client_config(),
                "group.id": f"{APP_ID}-reader",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
        consumer.assign(
            [
                TopicPartition(topic, p, OFFSET_BEGINNING)
                for topic in self.topics
                for p in range(self.settings.partitions)
            ]
        )
        decisions = self.settings.topics.decisions
        try:
            while not self.stopping.is_set():
                for m in consumer.consume(500, 0.2):
                    error = m.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            self.at_end.add((m.topic(), m.partition()))
                        continue
                    self.at_end.discard((m.topic(), m.partition()))
                    output = Output.of(
                        m.topic() == decisions, m.partition(), m.timestamp()[1] / 1000, m.value()
                    )
                    self.records.append(output)
                    if output.decision:
                        self.decided.add(output.cart_event_id)
        finally:
            consumer.close()

    def drain(self, quiet_s: float = 3.0, timeout: float = 60.0) -> None:
        """Read on until every partition is at its end and nothing came for ``quiet_s``."""
        deadline = time.monotonic() + timeout
        seen, quiet_since = len(self.records), time.monotonic()
        everything = len(self.topics) * self.settings.partitions
        while time.monotonic() < deadline:
            time.sleep(POLL_S)
            if len(self.records) != seen:
                seen, quiet_since = len(self.records), time.monotonic()
            elif len(self.at_end) == everything and time.monotonic() - quiet_since >= quiet_s:
                break
        self.stopping.set()
        self.join(30)


# -- workers and phases ----------------------------------------------------------------------


@dataclass
class Worker:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    state_dir: Path
    started: float  # time.time() before the process was started

    def metric(self, name: str) -> float:
        try:
            return scrape(self.port, (name,)).get(name, 0.0)
        except OSError:  # not serving (yet, or any more)
            return 0.0

    def processed(self) -> float:
        try:
            totals = scrape(self.port, PROCESSED)
        except OSError:
            return 0.0
        return sum(totals.get(name, 0.0) for name in PROCESSED)


@dataclass
class Phase:
    """A change to the group (``at``: the worker's start or the signal) and what followed."""

    name: str
    at: float
    measured: bool
    taker: Worker | None = None  # the worker whose log says where the time went
    settled: float | None = None  # when every partition decided again (None: it never did)
    note: str = ""


class Run:
    """One size's workers, probes and phases."""

    def __init__(
        self, config: ScaleConfig, settings: Settings, workdir: Path, n: int, probes: Probes
    ) -> None:
        self.config = config
        self.settings = settings
        self.workdir = workdir
        self.n = n
        self.probes = probes
        self.reader: OutputReader | None = None
        self.workers: dict[str, Worker] = {}
        self.phases: list[Phase] = []
        self.disk_bytes: int | None = None  # worker A's state directory after its recovery

    def start(self, name: str, standby: int) -> Worker:
        settings = replace(
            self.settings,
            web_port=free_port(),
            state_dir=self.workdir / f"state-{name}",
            standby_replicas=standby,
        )
        started = time.time()
        process = start_worker(settings, self.workdir / f"worker-{name}.log")
        worker = Worker(
            name,
            process,
            settings.web_port,
            self.workdir / f"worker-{name}.log",
            settings.state_dir,
            started,
        )
        self.workers[name] = worker
        return worker

    def stop(self, name: str) -> float:
        """SIGTERM and wait; returns the moment of the signal."""
        worker = self.workers.pop(name)
        at = time.time()
        stop_worker(worker.process, timeout=60)
        return at

    def kill(self, name: str) -> float:
        worker = self.workers.pop(name)
        at = time.time()
        worker.process.kill()
        worker.process.wait()
        return at

    def steady(self, since: float) -> bool:
        """Every partition got probes after ``since``, and those of the last
        `STEADY_WINDOW_S` before the last `LAG_S` are all decided."""
        now = time.time()
        if now < since + LAG_S + STEADY_WINDOW_S:
            return False
        low, high = max(since, now - LAG_S - STEADY_WINDOW_S), now - LAG_S
        recent: dict[int, list[str]] = defaultdict(list)
        for probe in reversed(self.probes.sent):
            if probe.sent_at < low:
                break
            if probe.sent_at <= high:
                recent[probe.partition].append(probe.event_id)
        decided = self.reader.decided if self.reader else set()
        return len(recent) == self.config.partitions and all(
            e in decided for ids in recent.values() for e in ids
        )

    def phase(
        self,
        name: str,
        at: float,
        measured: bool = True,
        taker: Worker | None = None,
        gate: Callable[[], bool] = lambda: True,
    ) -> Phase:
        """Wait until ``gate`` holds and every partition decides again; record the phase."""
        phase = Phase(name, at, measured, taker)
        self.phases.append(phase)
        deadline = time.monotonic() + self.config.timeout
        while time.monotonic() < deadline:
            for worker in self.workers.values():
                if worker.process.poll() is not None:
                    phase.note = f"worker {worker.name} exited ({worker.process.returncode})"
                    print(f"  {name}: {phase.note}", flush=True)
                    return phase
            if gate() and self.steady(at):
                phase.settled = time.time()
                print(f"  {name}: steady after {phase.settled - at:.1f} s", flush=True)
                time.sleep(TAIL_S)
                return phase
            time.sleep(POLL_S)
        phase.note = (
            f"not every partition decided again within {self.config.timeout:g} s (the group "
            "did not re-form, or a partition stayed behind: see the worker logs)"
        )
        print(f"  {name}: {phase.note}", flush=True)
        return phase

    def holding(self, workers: Sequence[Worker], each: bool) -> Callable[[], bool]:
        """A gate: each of ``workers`` (``each``) or all of them together hold 98% of the N
        customers (their RocksDB estimates, ``nextbest_state_customers``)."""

        def gate() -> bool:
            held = [w.metric("nextbest_state_customers") for w in workers]
            return (min(held) if each else sum(held)) >= 0.98 * self.n

        return gate


def run_phases(run: Run, scenarios: Sequence[str], standby: Sequence[int]) -> None:
    """The scenarios in order; stops at the first phase that does not settle."""
    a = run.start("a", standby=1)
    if not run.phase("recovery", a.started, taker=a).settled:
        return
    run.disk_bytes = directory_bytes(a.state_dir)
    if "join" in scenarios or "leave" in scenarios:
        b = run.start("b", standby=1)
        phase = run.phase("join", b.started, "join" in scenarios, b, lambda: b.processed() > 0)
        if not phase.settled:
            return
        if "leave" in scenarios:
            at = run.stop("b")
            if not run.phase("leave (SIGTERM)", at, taker=a).settled:
                return
    if "kill" not in scenarios:
        return
    for replicas in standby:
        while len(run.workers) > 1:  # the newest first, each once the group has re-formed
            newest = list(run.workers)[-1]
            if not run.phase(f"{newest} stops", run.stop(newest), measured=False).settled:
                return
        at = time.time()
        for name in list(run.workers):
            run.stop(name)
        pair = (run.start(f"k{replicas}a", replicas), run.start(f"k{replicas}b", replicas))
        # standbys: each holds every customer; none: the two halves add up
        gate = run.holding(pair, each=replicas > 0)
        setup = f"two workers on empty state, standby {replicas}"
        if not run.phase(setup, at, measured=False, gate=gate).settled:
            return
        victim = group_leader(pair)  # the harder case: the group needs a new leader
        survivor = pair[0] if victim is pair[1] else pair[1]
        at = run.kill(victim.name)
        name = f"kill (SIGKILL, the leader), standby {replicas}"
        if not run.phase(name, at, taker=survivor).settled:
            return


# -- figures ---------------------------------------------------------------------------------


@dataclass
class PhaseFigures:
    name: str
    measured: bool
    seconds: float | None  # until every partition decided again
    slowest: int | None  # its partition
    stall: float | None  # the longest silence of a partition
    probes: int
    lost: int
    repeated: int  # decision records repeated identically
    different: int  # decision ids with two different records
    actions: int  # ... of them with two different actions
    offers: int  # offer ids of its probes
    offers_repeated: int  # offer ids more than once, identical but decided_at
    offers_different: int  # offer ids with two different records
    marks: dict[str, float] = field(default_factory=dict)  # log mark -> seconds after the change
    read: int | None = None  # changelog records the taker read to recover its partitions
    note: str = ""

    @property
    def read_rate(self) -> float | None:
        """Changelog records per second of the taker's recovery (the batch reading and Faust's
        reading together)."""
        seconds = 0.0
        for start, end in (("batch", "batched"), ("restoring", "restored")):
            if {start, end} <= self.marks.keys():
                seconds += self.marks[end] - self.marks[start]
        if not self.read or not seconds:
            return None
        return self.read / max(seconds, 1e-9)


def _log_lines(log: Path) -> list[tuple[float | None, str]]:
    """``(epoch seconds, line)`` of a worker log; continuation lines (Faust's tables) carry
    None."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return []
    lines: list[tuple[float | None, str]] = []
    for line in text.splitlines():
        match = LOG_TIME.match(line)
        at = None
        if match is not None:
            at = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        lines.append((at, line))
    return lines


def log_marks(log: Path, since: float) -> dict[str, float]:
    """Each `LOG_MARKS` line's first time (epoch seconds) at or after ``since`` in ``log``."""
    found: dict[str, float] = {}
    for at, line in _log_lines(log):
        if at is None or at < since - 0.001:
            continue
        for mark, text in LOG_MARKS.items():
            if mark not in found and text in line:
                found[mark] = at
    return found


def _table_after(lines: list[tuple[float | None, str]], start: int, topic: str) -> dict[int, int]:
    """partition -> value of ``topic``'s rows in the Faust table that follows line ``start``
    (rows ``| topic | partition | value |``, a repeated topic written ``〃``)."""
    values: dict[int, int] = {}
    current = None
    for at, line in lines[start + 1 :]:
        if at is not None:
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[1].isdigit():
            continue
        current = current if cells[0] == "〃" else cells[0]
        if current == topic:
            values[int(cells[1])] = int(cells[2])
    return values


def changelog_to_read(log: Path, since: float, topic: str) -> int | None:
    """Records of ``topic`` the worker read to recover its active partitions in its first
    recovery at or after ``since``: the batch reading's and those left to Faust's reading (its
    highwater and start tables); None: not logged."""
    batch_count = re.compile(rf"[ ,]{re.escape(topic)}=(\d+)")
    lines = _log_lines(log)
    highwaters = starts = None
    batch_read = 0
    for index, (at, line) in enumerate(lines):
        if at is None or at < since - 0.001:
            continue
        if highwaters is None and HIGHWATERS in line:
            highwaters = _table_after(lines, index, topic)
        elif highwaters is not None and BATCH_READ in line:
            match = batch_count.search(line)
            batch_read = int(match.group(1)) if match else 0
        elif highwaters is not None and STARTS in line:
            starts = _table_after(lines, index, topic)
            break
    if not highwaters or starts is None:
        return None
    return batch_read + sum(max(0, last - starts.get(p, -1)) for p, last in highwaters.items())


def group_leader(workers: Sequence[Worker]) -> Worker:
    """The worker that was elected the group's leader last (aiokafka logs it)."""

    def elected(worker: Worker) -> float:
        times = [at for at, line in _log_lines(worker.log) if at and LEADER_LINE in line]
        return max(times, default=0.0)

    return max(workers, key=elected)


def _decides_again(times: list[float], at: float, end: float) -> tuple[float | None, float | None]:
    """(the decision that ends the longest silence after ``at``, that silence) of one
    partition's sorted decision times; (None, None) if it decided nothing before ``end``."""
    before = [t for t in times if t <= at]
    previous = before[-1] if before else at
    resume = stall = None
    for t in times:
        if t <= at or t > end:
            continue
        if stall is None or t - previous > stall:
            resume, stall = t, t - previous
        previous = t
    return resume, stall


def figures(
    phases: list[Phase], probes: list[Probe], outputs: list[Output], settings: Settings, end: float
) -> list[PhaseFigures]:
    decisions: dict[str, list[Output]] = defaultdict(list)  # cart event id -> its decisions
    offers: dict[str, dict[str, list[bytes]]] = defaultdict(lambda: defaultdict(list))
    times: dict[int, list[float]] = defaultdict(list)  # partition -> its decisions' times
    for output in outputs:
        if output.decision:
            decisions[output.cart_event_id].append(output)
            times[output.partition].append(output.at)
        else:
            offers[output.cart_event_id][output.label].append(output.digest)
    for partition_times in times.values():
        partition_times.sort()
    starts = [phase.at for phase in phases]
    probes_of: dict[int, list[Probe]] = defaultdict(list)
    for probe in probes:
        index = max(0, sum(1 for s in starts if s <= probe.sent_at) - 1)
        probes_of[index].append(probe)

    results = []
    for index, phase in enumerate(phases):
        until = starts[index + 1] if index + 1 < len(phases) else end
        seconds = slowest = stall = None
        if phase.measured:
            worst: list[tuple[float, int, float]] = []
            complete = True
            for partition in range(settings.partitions):
                resume, silence = _decides_again(times[partition], phase.at, until)
                if resume is None:
                    complete = False
                    continue
                worst.append((resume - phase.at, partition, silence))
            if worst and complete:
                seconds, slowest, _ = max(worst)
                stall = max(w[2] for w in worst)
        lost = repeated = different = actions = offered = offers_repeated = offers_different = 0
        mine = probes_of.get(index, [])
        for probe in mine:
            records = decisions.get(probe.event_id, [])
            if not records:
                lost += 1
            distinct = {r.digest for r in records}
            repeated += len(records) - len(distinct)
            if len(distinct) > 1:
                different += 1
                actions += len({r.label for r in records}) > 1
            for digests in offers.get(probe.event_id, {}).values():
                offered += 1
                if len(digests) > 1:
                    offers_repeated += len(set(digests)) == 1
                    offers_different += len(set(digests)) > 1
        marks, read = {}, None
        if phase.taker is not None:
            marks = {k: v - phase.at for k, v in log_marks(phase.taker.log, phase.at).items()}
            read = changelog_to_read(phase.taker.log, phase.at, changelog_topic(settings))
        results.append(
            PhaseFigures(
                phase.name,
                phase.measured,
                seconds,
                slowest,
                stall,
                len(mine),
                lost,
                repeated,
                different,
                actions,
                offered,
                offers_repeated,
                offers_different,
                marks,
                read,
                phase.note,
            )
        )
    return results


# -- a size ----------------------------------------------------------------------------------


@dataclass
class SizeResult:
    customers: int
    loaded: Loaded
    disk_bytes: int | None  # worker A's state directory after recovery
    phases: list[PhaseFigures]
    probes: int
    failed: int  # probes the broker refused
    misrouted: int
    decision_records: int
    promotion_records: int
    workdir: Path


def directory_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (a running worker's: a file RocksDB removes meanwhile
    counts nothing)."""
    total = 0
    for file in path.rglob("*"):
        try:
            total += file.stat().st_size if file.is_file() else 0
        except FileNotFoundError:
            continue
    return total


def real_products(templates: Sequence[bytes], count: int = 50) -> list[tuple[str, float]]:
    """Real product ids (the templates' orders), each with a made-up unit price (the state keeps
    none): the probes' cart lines."""
    products: dict[str, float] = {}
    for raw in templates:
        for order in orjson.loads(raw)["orders"]:
            for product in order[3]:
                products.setdefault(product, round(1.25 + len(products) % 7 * 1.5, 2))
                if len(products) >= count:
                    return list(products.items())
    return list(products.items())


def run_size(config: ScaleConfig, n: int, templates: Sequence[bytes], workdir: Path) -> SizeResult:
    workdir.mkdir(parents=True, exist_ok=True)
    with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
        settings = replace(
            Settings.from_env(),
            broker_url=broker.url,
            embedded_broker=True,
            app_id=APP_ID,
            partitions=config.partitions,
            policy="promotion",
            model_path="",
            models_dir=workdir / "models",  # none, whatever the working directory holds
            log_level="info",
        )
        ensure_topics(settings)
        loaded = load_state(settings, n, templates, broker)
        rss = f", broker memory {loaded.broker_rss / 2**30:.2f} GiB" if loaded.broker_rss else ""
        print(
            f"{n:,} customers: {loaded.bytes / 2**20:,.0f} MiB of state records on the changelog "
            f"in {loaded.seconds:.1f} s ({loaded.bytes / n:,.0f} bytes per customer){rss}",
            flush=True,
        )
        probes = Probes(
            settings, probe_customers(n, config.partitions), config.probe_rate,
            real_products(templates),
        )  # fmt: skip
        run = Run(config, settings, workdir, n, probes)
        run.reader = OutputReader(settings)
        run.reader.start()
        probes.start()
        try:
            run_phases(run, config.scenarios, config.standby)
        finally:
            probes.stop()
            end = time.time()
            run.reader.drain()
            for name in list(run.workers):
                run.stop(name)
        outputs = run.reader.records
        phases = figures(run.phases, probes.sent, outputs, settings, end)
        decisions = sum(1 for o in outputs if o.decision)
        return SizeResult(
            n,
            loaded,
            run.disk_bytes,
            phases,
            len(probes.sent),
            probes.failed,
            probes.misrouted,
            decisions,
            len(outputs) - decisions,
            workdir,
        )


# -- the report ------------------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _where(marks: dict[str, float]) -> str:
    order = ("rejoin", "assigned", "batch", "batched", "restoring", "restored", "ready")
    return " ".join(f"{m} {marks[m]:.1f}" for m in order if m in marks)


def print_size(result: SizeResult) -> None:
    n = result.customers
    print(f"\n{n:,} customers")
    line = f"  state: {result.loaded.bytes / n:,.0f} bytes per customer on the changelog"
    if result.disk_bytes:
        line += f", {result.disk_bytes / n:,.0f} in worker A's RocksDB directory after recovery"
    print(line)
    print(
        f"  {'scenario':<40}{'decides again':>15}{'stall':>7}{'read':>10}{'records/s':>11}"
        "   where the time goes (s after the change)"
    )
    for p in result.phases:
        again = "setup" if not p.measured else _seconds(p.seconds)
        if p.slowest is not None:
            again += f" (p{p.slowest})"
        read = "-" if p.read is None else f"{p.read:,}"
        rate = "-" if p.read_rate is None else f"{p.read_rate:,.0f}"
        print(
            f"  {p.name:<40}{again:>15}{_seconds(p.stall):>7}{read:>10}{rate:>11}"
            f"   {_where(p.marks)}"
        )
        if p.note:
            print(f"    {p.note}")
    print(
        f"\n  {'probes sent in':<40}{'probes':>8}{'lost':>6}{'repeated':>10}{'different':>11}"
        f"{'offers':>8}{'twice':>7}"
    )
    for p in result.phases:
        print(
            f"  {p.name:<40}{p.probes:>8,}{p.lost:>6}{p.repeated:>10}"
            f"{f'{p.different}/{p.actions}':>11}{p.offers:>8,}"
            f"{f'{p.offers_repeated}/{p.offers_different}':>7}"
        )
    print(
        "  (decides again: seconds from the change (a worker's start, the signal) until every "
        "partition decides again,\n   with its slowest partition; stall: a partition's longest "
        "silence; read: changelog records the worker\n   taking over read to recover, at "
        "records/s; where: its log: rejoining the group, partitions\n   assigned, batch "
        "reading (batch, batched) and Faust's (restoring, restored) of the\n   changelog, "
        "streams resumed. lost: probes without a decision record;\n   "
        "repeated: identical decision records again; different: decision ids with two records /"
        "\n   two actions; twice: offer ids sent twice, identical but decided_at / different)"
    )
    print(
        f"  in all: {result.probes:,} probes sent ({result.failed} not delivered, "
        f"{result.misrouted} on another partition than key_partition's), "
        f"{result.decision_records:,} decision records, {result.promotion_records:,} offers"
    )
    bars(result)


def bars(result: SizeResult) -> None:
    most_customers, most_s = RECOVERY_BAR
    for p in result.phases:
        if p.name == "recovery":
            at = "" if result.customers == most_customers else " (set for 1,000,000 customers)"
            _bar(f"recovery on an empty state directory <= {most_s:g} s{at}", p.seconds, most_s)
        if p.name.startswith("kill") and p.name.endswith("standby 1"):
            _bar(f"SIGKILL with standby replicas <= {KILL_BAR_S:g} s", p.seconds, KILL_BAR_S)
    effects = [p for p in result.phases if p.measured]
    wrong = sum(p.lost + p.different + p.offers_repeated + p.offers_different for p in effects)
    print(
        "  bar: every probe decided once, no decision id with two records, no offer id twice: "
        + ("met" if wrong == 0 else f"NOT met ({wrong})")
    )


def _bar(title: str, value: float | None, most: float) -> None:
    shown = "did not happen" if value is None else f"{value:.1f} s"
    met = value is not None and value <= most
    print(f"  bar: {title}: {shown} " + ("met" if met else "NOT met"))


def run_bench_scale(config: ScaleConfig) -> int:
    unknown = [s for s in config.scenarios if s not in SCENARIOS]
    if unknown or not config.customers or any(n < config.partitions for n in config.customers):
        print(f"unknown scenario(s) {unknown}: choose from {', '.join(SCENARIOS)}; at least as "
              "many customers as partitions")  # fmt: skip
        return 2
    if not config.file.exists():
        print(f"data file not found: {config.file}")
        return 2
    started = time.monotonic()
    templates = state_templates(config.file, min(TEMPLATES, max(config.customers)))
    sizes = [len(t) for t in templates]
    print(
        f"{len(templates):,} state records from {INVOICES:,} real invoices in "
        f"{time.monotonic() - started:.1f} s: {statistics.mean(sizes):,.0f} bytes on average "
        f"(min {min(sizes):,}, median {statistics.median(sizes):,.0f}, max {max(sizes):,}); "
        f"{config.partitions} partitions, probes {config.probe_rate:g}/s per partition; "
        f"scenarios: {', '.join(config.scenarios)}",
        flush=True,
    )
    root = Path(tempfile.mkdtemp(prefix="nextbest-bench-scale-"))
    keep = False
    try:
        for n in config.customers:
            result = run_size(config, n, templates, root / f"n{n}")
            print_size(result)
            kept = config.keep_logs or any(p.note for p in result.phases)
            keep = keep or kept
            if not kept:
                shutil.rmtree(result.workdir, ignore_errors=True)
    finally:
        if keep:
            print(f"\nworker and broker logs: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0
