"""A worker whose Kafka consumer reaches no broker, while the broker is up, replaces
that consumer and loses and repeats nothing.

A chaos run (`make flake-hunt`, seed 7, "restart kafka") showed it: after the
broker came back, all three workers' librdkafka consumers said "All broker
connections are down" for minutes, while the CDC reader's producer went on
delivering to the same broker; the workers applied nothing more. How librdkafka got
there is not known, so this test makes a consumer in the same state: one whose
bootstrap address answers nothing, put in the transport's place at the shard's
position. The consumer notices that the shard got nothing for `fetch_stall_s`;
the transport finds that its client reads no metadata while its topic-id client
does, and replaces the client (`KafkaTransport._replace_consumer`)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from typing import Any

import pytest
from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import TopicPartition

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


def _closed_port() -> int:
    """A local port nothing listens on: connecting to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_a_consumer_that_reaches_no_broker_is_replaced_at_its_position(
    stack: StackHandle, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    topic = f"{unique}_cut"
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
            cut_off: Any = KafkaConsumer(
                {**transport._config, "bootstrap.servers": f"127.0.0.1:{_closed_port()}"}
            )

            def swap() -> None:
                live = transport._require()
                transport._consumer = cut_off
                transport._assign_flowing([TopicPartition(topic, 0, 5)])
                live.close()

            await transport._run(swap)
            await asyncio.to_thread(produce, stack.kafka_bootstrap, topic, _records(5, 5))
            await wait_async(
                "the 5 records produced after the cut handled", lambda: seen.count() == 10, 90
            )
            assert transport._require() is not cut_off
        finally:
            await consumer.close()

    with caplog.at_level("WARNING", logger="workers.transports.kafka"):
        try:
            asyncio.run(scenario())
        finally:
            delete_topics(stack.kafka_bootstrap, [topic])
    assert seen.positions == list(range(10))
    assert "the consumer reaches no broker while the topic-id client does" in caplog.text
