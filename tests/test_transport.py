"""The embedded broker's transport: the end offsets it reports must be the real ones."""

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from faust.types import TP

from streams.broker import EmbeddedBroker
from streams.transport import fetch_high_watermarks, tansu_url

PARTITIONS = 4


def test_tansu_url_keeps_hosts():
    assert tansu_url("kafka://127.0.0.1:9092") == "tansu://127.0.0.1:9092"
    assert tansu_url("kafka://a:1,kafka://b:2") == "tansu://a:1,tansu://b:2"


def test_fetch_high_watermarks_are_the_real_end_offsets(tmp_path):
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        admin.create_topics([NewTopic("t", PARTITIONS, 1), NewTopic("empty", 1, 1)])["t"].result()
        producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 20,
                             "partitioner": "murmur2_random"})
        for i in range(3000):  # batched produce: the case where ListOffsets falls short
            producer.produce("t", key=b"k%d" % (i % 50), value=b"x" * 100)
        producer.flush(10)

        reader = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "reader",
                           "enable.partition.eof": True})
        listed = {TP("t", p): reader.get_watermark_offsets(TopicPartition("t", p), 5)[1]
                  for p in range(PARTITIONS)}
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
