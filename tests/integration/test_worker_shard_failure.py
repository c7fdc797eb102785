"""A shard that breaks on its own is given up alone: committed, released, acquired again
after a backoff, while the worker's other shards keep flowing (real Kafka and etcd)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from shardctl.core.config import Settings
from shardctl.core.etcd import EtcdClient
from shardctl.core.keyspace import Keyspace
from shardctl.core.records import WorkerRecord
from tests.conftest import StackHandle
from tests.integration.workers_support import (
    create_topic,
    delete_cluster,
    delete_topics,
    maxwell,
    produce,
    wait_async,
    write_assignment,
)
from workers.consumer import Consumer, ConsumerConfig
from workers.deadletters import KafkaDeadLetterWriter
from workers.events import Batch
from workers.handlers import Handler
from workers.transports.kafka import KafkaTransport
from workers.worker import Worker, WorkerOptions

pytestmark = pytest.mark.integration


class BreaksOnce:
    """on_assign of shard 1 fails the first time (e.g. its database was unreachable)."""

    def __init__(self) -> None:
        self.assigned: list[tuple[int, int]] = []
        self.handled: dict[int, list[int | None]] = {0: [], 1: []}
        self._lock = threading.Lock()

    def on_assign(self, shard: int, token: int) -> None:
        with self._lock:
            self.assigned.append((shard, token))
            first = [s for s, _ in self.assigned].count(shard) == 1
        if shard == 1 and first:
            raise ConnectionError("shard 1's target is unreachable")

    def on_events(self, batch: Batch) -> None:
        with self._lock:
            self.handled[batch.shard].extend(e.position for e in batch.events)

    def count(self, shard: int) -> int:
        with self._lock:
            return len(self.handled[shard])


def test_a_failed_shard_restarts_alone_with_a_new_token_and_the_worker_keeps_serving(
    stack: StackHandle, settings: Settings, unique: str
) -> None:
    topic = f"fails-{unique}"
    create_topic(stack.kafka_bootstrap, topic, 2)
    produce(
        stack.kafka_bootstrap, topic, [(s, None, maxwell(n, s)) for s in (0, 1) for n in range(5)]
    )

    async def scenario() -> None:
        handler = BreaksOnce()
        consumer = Consumer(
            KafkaTransport({"bootstrap.servers": stack.kafka_bootstrap}, [topic], f"t.{unique}"),
            Handler("test:breaks-once", handler),
            KafkaDeadLetterWriter({"bootstrap.servers": stack.kafka_bootstrap}, "wf"),
            ConsumerConfig(batch_size=10),
        )
        await consumer.open()
        options = WorkerOptions(worker_id="wf", ttl=3, commit_interval_s=0.2, drain_timeout_s=1.0)
        worker = Worker(settings, options, consumer)
        task = asyncio.get_running_loop().create_task(worker.run())
        keys = Keyspace.of(settings)
        try:
            await write_assignment(settings, ["wf", "wf"], generation=1)
            await wait_async("shard 0's events", lambda: handler.count(0) == 5)
            await wait_async("shard 1 after its restart", lambda: handler.count(1) == 5)
            # Shard 0 went on meanwhile: it was never released.
            produce(stack.kafka_bootstrap, topic, [(0, None, maxwell(n, 0)) for n in range(5, 8)])
            await wait_async("shard 0's later events", lambda: handler.count(0) == 8)
            async with EtcdClient(settings.etcd) as client:
                owner1 = await client.get(keys.owner(1))
                record = await client.get(keys.worker("wf"))
            assert record is not None
            assert WorkerRecord.decode(record.key, record.value).state == "active"
        finally:
            worker.stop_requested.set()
            await asyncio.wait_for(task, 30)
            await consumer.close()
            await delete_cluster(settings)
        tokens = {s: [t for x, t in handler.assigned if x == s] for s in (0, 1)}
        assert len(tokens[0]) == 1, f"shard 0 restarted: {handler.assigned}"
        assert len(tokens[1]) == 2 and tokens[1][1] > tokens[1][0], handler.assigned
        assert owner1 is not None and owner1.create_revision == tokens[1][1]
        assert handler.handled[0] == list(range(8))
        assert handler.handled[1] == list(range(5))

    try:
        asyncio.run(scenario())
    finally:
        delete_topics(stack.kafka_bootstrap, [topic])
