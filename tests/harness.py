"""Integration-test harness: a real embedded broker, real worker processes, real topics."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from agents.runtime.settings import Settings
from agents.runtime.topics import ensure_topics
from agents.tools.broker import EmbeddedBroker, free_port, wait_for_port
from agents.tools.processes import PROCESSED, WORKER_COMMAND, scrape, start_worker, stop_worker
from agents.tools.replay import producer_config

ADMIN_TOKEN = "test-admin-token-0123456789"
#: what Faust writes to a worker's log when a service crashes and when its supervisor restarts it
CRASH_MARKERS = ("Crashed reason=", "Restarting dead")
DATA_FILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "online_retail.csv.gz"


def event(
    event_type: str,
    event_id: str,
    *,
    customer: str | None = None,
    session: str | None = None,
    time: str = "2011-11-14T10:00:00Z",
    merchant: str = "uci-gift-shop",
    **fields: object,
) -> dict:
    return {
        "schema_version": 1,
        "event_id": event_id,
        "event_type": event_type,
        "merchant_id": merchant,
        "event_time": time,
        "customer_id": customer,
        "session_id": session,
        **fields,
    }


def cart_add(
    event_id: str,
    value: float,
    *,
    product: str | None = None,
    unit_price: float = 1.0,
    **envelope: str | None,
) -> dict:
    """A cart of one line (``product``, default ``P-<event_id>``) worth ``value``;
    ``envelope``: `event`'s customer, session, time and merchant."""
    line = {"product_id": product or f"P-{event_id}", "quantity": 1, "unit_price": unit_price}
    return event("cart_add", event_id, lines=[line], cart_value=value, currency="GBP", **envelope)


def order_placed(
    event_id: str,
    order_id: str,
    total: float,
    product: str,
    *,
    customer: str,
    merchant: str,
    time: str,
) -> dict:
    """An order of one line: ``product`` at ``total``."""
    line = {"product_id": product, "quantity": 1, "unit_price": total}
    return event(
        "order",
        event_id,
        customer=customer,
        merchant=merchant,
        time=time,
        order_id=order_id,
        lines=[line],
        total=total,
        currency="GBP",
    )


def key_of(value: dict) -> bytes:
    who = f"c:{value['customer_id']}" if value.get("customer_id") else f"s:{value['session_id']}"
    return f"{value['merchant_id']}:{who}".encode()


class Cluster:
    """One embedded broker plus the worker processes of one consumer group."""

    def __init__(self, tmp: Path, partitions: int = 4, policy: str | None = None) -> None:
        """``policy``: ``NEXTBEST_POLICY`` of the workers (None: the default, the promotion
        policy; ``"rules"`` for tests of the threshold rules)."""
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.broker = EmbeddedBroker(log_path=tmp / "broker.log").start()
        self.settings = replace(
            Settings.from_env({}),
            broker_url=self.broker.url,
            embedded_broker=True,
            partitions=partitions,
            app_id="nextbest-test",
            log_level="info",
            api_admin_token=ADMIN_TOKEN,
        )
        if policy is not None:
            self.settings = replace(self.settings, policy=policy)
        ensure_topics(self.settings)
        self.workers: dict[str, tuple] = {}
        self.urls: dict[str, str] = {}  # worker name -> its advertised URL
        self.producer = Producer(producer_config(self.settings))

    def use_promotion(self, merchants_yaml: str, experiment: dict) -> None:
        """Workers started after this run the promotion policy over these merchants."""
        merchants = self.tmp / "merchants.yaml"
        merchants.write_text(merchants_yaml)
        self.settings = replace(
            self.settings,
            policy="promotion",
            merchants_path=merchants,
            promo_experiment=json.dumps(experiment),
        )
        ensure_topics(self.settings)

    def start_worker(
        self,
        name: str,
        state_dir: str | None = None,
        command: Sequence[str] = WORKER_COMMAND,
        advertise: str | None = None,
    ) -> int:
        """Worker ``name`` (``python -m <command>``, default the real worker); its web port.

        ``advertise``: an address of its own (a loopback one such as 127.0.0.2 on one machine):
        the worker binds every interface and advertises ``http://<advertise>:<port>``, as a
        container with its own name does. Default: bound to and advertised as 127.0.0.1.
        """
        port = self._spawn(name, state_dir, command, advertise)
        wait_for_port("127.0.0.1", port, 60)
        return port

    def start_workers(self, advertise: dict[str, str]) -> list[int]:
        """Workers ``name -> advertise`` (see `start_worker`) started together, so that their
        start-ups overlap; their web ports."""
        ports = [self._spawn(name, None, WORKER_COMMAND, host) for name, host in advertise.items()]
        for port in ports:
            wait_for_port("127.0.0.1", port, 60)
        return ports

    def _spawn(
        self, name: str, state_dir: str | None, command: Sequence[str], advertise: str | None
    ) -> int:
        port = free_port()
        settings = replace(
            self.settings, web_port=port, state_dir=self.tmp / (state_dir or f"state-{name}")
        )
        if advertise is not None:
            url = f"http://{advertise}:{port}"
            settings = replace(settings, web_host="0.0.0.0", web_advertised_url=url)
        process = start_worker(settings, self.tmp / f"worker-{name}.log", command)
        self.workers[name] = (process, port)
        self.urls[name] = settings.advertised_url()
        return port

    def stop_worker(self, name: str) -> None:
        """SIGTERM: the worker leaves the group gracefully (SIGKILL after 30 s)."""
        process, _ = self.workers.pop(name)
        self.urls.pop(name)
        stop_worker(process)

    def log(self, name: str) -> str:
        return (self.tmp / f"worker-{name}.log").read_text(errors="replace")

    def crashes(self, name: str) -> list[str]:
        """Worker ``name``'s log lines that report a crash or a restart (none: its agents ran
        uninterrupted), plus a line if its process is gone."""
        process, _ = self.workers[name]
        lines = [
            line for line in self.log(name).splitlines() if any(m in line for m in CRASH_MARKERS)
        ]
        if process.poll() is not None:
            lines.append(f"worker {name} exited with {process.returncode}")
        return lines

    def metric(self, name: str, sample: str) -> float:
        """A sample's total (labels summed) on worker ``name``'s /metrics."""
        _, port = self.workers[name]
        return scrape(port, (sample,)).get(sample, 0.0)

    def send(self, topic_kind: str, value: dict | bytes, key: bytes | None = None) -> None:
        raw = value if isinstance(value, bytes) else orjson.dumps(value)
        if key is None and isinstance(value, dict):
            key = key_of(value)
        self.producer.produce(getattr(self.settings.topics, topic_kind), key=key, value=raw)

    def flush(self) -> None:
        self.producer.flush(10)

    def processed(self) -> float:
        """Inputs handled so far, summed over the running workers' /metrics."""
        total = 0.0
        for _, port in self.workers.values():
            totals = scrape(port)
            total += sum(totals.get(name, 0) for name in PROCESSED)
        return total

    def wait_processed(self, count: float, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.processed() < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"processed {self.processed()} of {count}")
            time.sleep(0.25)

    def read(
        self, topic_kind: str, min_count: int = 0, timeout: float = 20, settle: float = 1.5
    ) -> list[dict]:
        """All records of an output topic: at least ``min_count``, then until every partition is
        read to its end (partition EOF, from the fetch responses) and nothing came for
        ``settle`` seconds."""
        topic = getattr(self.settings.topics, topic_kind)
        consumer = Consumer(
            {
                **self.settings.kafka_client_config(),
                "group.id": "test-reader",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        records: list[dict] = []
        at_end: set[int] = set()
        deadline = time.monotonic() + timeout
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            batch = []
            for m in consumer.consume(500, 0.2):
                if m.error() is None:
                    batch.append(m)
                    at_end.discard(m.partition())
                elif m.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(m.partition())
            records.extend(orjson.loads(m.value()) for m in batch)
            if batch:
                quiet_since = time.monotonic()
            elif (
                len(records) >= min_count
                and len(at_end) == len(partitions)
                and time.monotonic() - quiet_since > settle
            ):
                break
        consumer.close()
        return records

    def state(self, port: int, key: str) -> dict | None:
        url = f"http://127.0.0.1:{port}/customers/{urllib.request.quote(key)}/"
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def close(self) -> None:
        for name in list(self.workers):
            self.stop_worker(name)
        self.producer.flush(5)
        del self.producer  # librdkafka clients close when collected
        self.broker.stop()
