"""The transports: the embedded broker's end offsets must be the real ones; lean delivery."""

import asyncio
import contextlib

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from faust.types import TP

from agents.runtime.transport import (
    DrainingBuffer,
    faust_broker_url,
    fetch_high_watermarks,
    resume_delivery,
)
from agents.tools.broker import EmbeddedBroker

PARTITIONS = 4


def test_faust_broker_url_picks_the_transport_and_keeps_hosts():
    assert faust_broker_url("kafka://127.0.0.1:9092", embedded=True) == "tansu://127.0.0.1:9092"
    assert (
        faust_broker_url("kafka://a:1,kafka://b:2", embedded=False) == "nbkafka://a:1,nbkafka://b:2"
    )
    assert faust_broker_url("a:1", embedded=False, lean_delivery=False) == "kafka://a:1"
    assert faust_broker_url("kafka://a:1", True, lean_delivery=False) == "tansustock://a:1"


def test_fetch_high_watermarks_are_the_real_end_offsets(tmp_path):
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        admin.create_topics([NewTopic("t", PARTITIONS, 1), NewTopic("empty", 1, 1)])["t"].result()
        producer = Producer(
            {
                "bootstrap.servers": broker.bootstrap,
                "linger.ms": 20,
                "partitioner": "murmur2_random",
            }
        )
        for i in range(3000):  # batched produce: the case where ListOffsets falls short
            producer.produce("t", key=b"k%d" % (i % 50), value=b"x" * 100)
        producer.flush(10)

        reader = Consumer(
            {
                "bootstrap.servers": broker.bootstrap,
                "group.id": "reader",
                "enable.partition.eof": True,
            }
        )
        listed = {
            TP("t", p): reader.get_watermark_offsets(TopicPartition("t", p), 5)[1]
            for p in range(PARTITIONS)
        }
        reader.assign([TopicPartition("t", p, 0) for p in range(PARTITIONS)])
        end, at_eof = {}, set()
        while len(at_eof) < PARTITIONS:
            message = reader.poll(1.0)
            assert message is not None, "timed out reading the topic back"
            if message.error():
                at_eof.add(message.partition())
                continue
            end[TP("t", message.partition())] = message.offset() + 1
        reader.close()

        fetched = fetch_high_watermarks(broker.bootstrap, {**listed, TP("empty", 0): 0})
    assert sum(end.values()) == 3000
    assert {tp: fetched[tp] for tp in end} == end
    assert fetched[TP("empty", 0)] == 0
    # what this works around: ListOffsets never reports more than the real end, often less
    assert all(listed[tp] <= end[tp] for tp in end)


def test_resume_finishes_a_delivery_that_blocked_inline():
    async def scenario() -> list:
        loop = asyncio.get_running_loop()
        gate, out = loop.create_future(), []

        async def delivery() -> None:
            out.append(await gate)
            await asyncio.sleep(0)  # a bare yield as well
            out.append("done")

        coro = delivery()
        blocked_on = coro.send(None)  # runs inline up to the first real wait
        assert blocked_on is gate and out == []
        loop.call_later(0.01, gate.set_result, "record")
        await resume_delivery(coro, blocked_on)
        return out

    assert asyncio.run(scenario()) == ["record", "done"]


def test_resume_cancelled_closes_the_delivery():
    async def scenario() -> list:
        loop = asyncio.get_running_loop()
        gate, events = loop.create_future(), []

        async def delivery() -> None:
            try:
                await gate
            finally:
                events.append("closed")

        coro = delivery()
        task = asyncio.ensure_future(resume_delivery(coro, coro.send(None)))
        await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert not gate.cancelled()  # the wait never cancels what the delivery waits on
        return events

    assert asyncio.run(scenario()) == ["closed"]


class SlowChannel:
    """Stands for a topic whose records take ``seconds`` each to reach the client."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.published: list[int] = []

    async def publish_message(self, fut: object, wait: bool = False) -> None:
        await asyncio.sleep(self.seconds)
        self.published.append(fut.message.value)


class Pending:
    def __init__(self, channel: SlowChannel, value: int) -> None:
        self.message = type("Message", (), {"channel": channel, "value": value})()


def test_a_draining_buffer_flushes_every_record_before_it_returns():
    """Faust's buffer flush returns once 0.1 s pass without a record sent, and counts the record
    its task holds as sent: the consumer then commits offsets past records not yet produced."""

    async def main() -> list[int]:
        buffer = DrainingBuffer()
        buffer.app = type("App", (), {"conf": type("Conf", (), {"producer_threaded": False})})()
        await buffer.start()
        channel = SlowChannel(0.15)  # each record slower than Faust's 0.1 s patience
        for value in range(4):
            buffer.put(Pending(channel, value))
        await asyncio.sleep(0)
        await buffer.flush()
        published = list(channel.published)
        await buffer.stop()
        return published

    assert asyncio.run(main()) == [0, 1, 2, 3]


def test_after_a_rebalance_a_stream_partition_without_a_commit_is_read_from_its_beginning(
    monkeypatch,
):
    """aiokafka's seek to committed offsets leaves a partition with none where its fetcher
    stood: past the records Faust cleared from the streams' buffers in the rebalance."""
    from collections import defaultdict
    from types import SimpleNamespace

    from faust.transport.drivers import aiokafka as faust_aiokafka

    from agents.runtime.transport import LeanDeliveryConsumer

    committed = {TP("cart", 0): 120, TP("cart", 2): 0}

    async def seek_to_committed(self: LeanDeliveryConsumer) -> None:  # Faust's, in effect
        self._read_offset.update(committed)

    monkeypatch.setattr(faust_aiokafka.Consumer, "perform_seek", seek_to_committed)
    consumer = object.__new__(LeanDeliveryConsumer)
    assigned = {TP("cart", p) for p in range(3)} | {TP("customers-changelog", 1)}
    sought: dict[TP, int] = {}

    async def seek(tp: TP, offset: int) -> None:
        sought[tp] = offset

    consumer.__dict__.update(
        _read_offset=defaultdict(lambda: None),
        app=SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda t: t == "cart")),
        assignment=lambda: assigned,
        seek=seek,
    )
    asyncio.run(consumer.perform_seek())
    # cart 1 has no commit, cart 2 a commit of 0: both from the start; cart 0 stays at its
    # commit; the changelog is the recovery's
    assert sought == {TP("cart", 1): 0, TP("cart", 2): 0}
