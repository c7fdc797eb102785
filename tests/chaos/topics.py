"""Read a whole Kafka topic (every partition, from offset 0 to its end)."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, TopicPartition


def read_topic(bootstrap: str, topic: str, partitions: int, timeout: float = 120.0) -> list[bytes]:
    """Every message value of `topic`, up to each partition's end at the time of the call."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"chaos-verify-{topic}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    try:
        ends: dict[int, int] = {}
        for p in range(partitions):
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            ends[p] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions) if ends[p] > 0])
        values: list[bytes] = []
        next_offset = {p: 0 for p in ends}
        deadline = time.monotonic() + timeout
        while any(next_offset[p] < ends[p] for p in ends):
            if time.monotonic() > deadline:
                missing = {p: (next_offset[p], ends[p]) for p in ends if next_offset[p] < ends[p]}
                raise TimeoutError(f"reading {topic}: partitions not read to their end: {missing}")
            for message in consumer.consume(1000, 1.0):
                if message.error() is not None:
                    raise RuntimeError(f"reading {topic}: {message.error()}")
                value = message.value()
                if value is not None:
                    values.append(value)
                partition, offset = message.partition(), message.offset()
                if partition is not None and offset is not None:
                    next_offset[partition] = offset + 1
        return values
    finally:
        consumer.close()
