"""A shard whose Kafka fetching stopped for good while the broker restarted gets its
records all the same.

A chaos run (`bench/chaos.py --sink postgres --seed 7 --kinds restart-kafka`) showed
it: after one of several Kafka restarts, one worker's librdkafka consumer never
fetched its two (assigned, unpaused) partitions again. The worker held the shards,
polled, and applied nothing more; the others went on. Which librdkafka state it was
is not known, so this test puts the partition in one that never fetches by itself:
paused inside librdkafka behind the consumer's back, across a Kafka stop and start.
The consumer notices that the shard got nothing for `fetch_stall_s` while the
broker holds newer records, and the transport fetches them again from the shard's
position (`Consumer._check_fetching`, `KafkaTransport.refetch_if_behind`)."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest

from tests.conftest import StackHandle
from tests.integration.workers_support import create_topic, delete_topics, produce
from tests.polling import wait_async
from workers.consumer import Consumer, ConsumerConfig, StaticClaim
from workers.deadletters import KafkaDeadLetterWriter
from workers.events import Batch
from workers.handlers import Handler
from workers.transports.kafka import KafkaTransport

pytestmark = pytest.mark.integration


class Seen:
    def __init__(self) -> None:
        self.positions: list[int | None] = []
        self._lock = threading.Lock()

    def on_events(self, batch: Batch) -> None:
        with self._lock:
            self.positions.extend(e.position for e in batch.events)

    def count(self) -> int:
        with self._lock:
            return len(self.positions)


def _records(start: int, count: int) -> list[tuple[int, bytes | None, bytes]]:
    return [
        (0, b"%d" % n, json.dumps({"type": "insert", "data": {"id": n}}).encode())
        for n in range(start, start + count)
    ]


def test_a_shard_whose_fetching_stopped_across_a_kafka_restart_gets_its_records(
    stack: StackHandle, unique: str
) -> None:
    topic = f"{unique}_stall"
    create_topic(stack.kafka_bootstrap, topic, 1)
    seen = Seen()

    async def scenario() -> None:
        transport = KafkaTransport(
            {"bootstrap.servers": stack.kafka_bootstrap}, [topic], group_id=f"test.{unique}"
        )
        consumer = Consumer(
            transport,
            Handler("seen", seen),
            KafkaDeadLetterWriter({"bootstrap.servers": stack.kafka_bootstrap}, "w-test"),
            ConsumerConfig(batch_size=10, idle_wait_s=0.2, fetch_stall_s=2.0),
        )
        await consumer.open()
        try:
            produce(stack.kafka_bootstrap, topic, _records(0, 5))
            await consumer.start(StaticClaim(0))
            await wait_async("the first 5 records handled", lambda: seen.count() == 5, 60)
            # librdkafka stops fetching the partition; the consumer is not told.
            kafka: Any = transport._require()
            await transport._run(lambda: kafka.pause(transport._partitions(0)))
            await asyncio.to_thread(stack.stop, "kafka")
            await asyncio.to_thread(stack.start, "kafka")
            await asyncio.to_thread(produce, stack.kafka_bootstrap, topic, _records(5, 5))
            await wait_async(
                "the 5 records produced after the restart handled", lambda: seen.count() == 10, 90
            )
        finally:
            await consumer.close()

    try:
        asyncio.run(scenario())
    finally:
        delete_topics(stack.kafka_bootstrap, [topic])
    assert seen.positions == list(range(10))
