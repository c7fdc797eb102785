"""Offsets belong to one incarnation of a topic: after the topic is deleted and
re-created, the stored offsets are refused (the shard stops, naming the shard, the
topic, both topic ids and the recovery command) instead of skipping the new
topic's first events; `shardctl offsets reset` is that recovery."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading

import pytest

from shardctl.core.config import Settings
from shardctl.core.etcd import EtcdClient
from shardctl.core.keyspace import Keyspace
from shardctl.core.records import OffsetRecord
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


class Seen:
    def __init__(self) -> None:
        self.ids: list[int] = []
        self._lock = threading.Lock()

    def on_events(self, batch: Batch) -> None:
        with self._lock:
            self.ids.extend(int(e.data["id"]) for e in batch.events)

    def count(self) -> int:
        with self._lock:
            return len(self.ids)


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardctl.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


async def _record(settings: Settings, shard: int) -> OffsetRecord | None:
    keys = Keyspace.of(settings)
    async with EtcdClient(settings.etcd) as client:
        kv = await client.get(keys.offset(shard))
    return None if kv is None else OffsetRecord.decode(kv.key, kv.value)


def test_offsets_of_a_deleted_and_recreated_topic_stop_the_shard_until_reset(
    stack: StackHandle, settings: Settings, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    topic = f"reborn-{unique}"
    worker_id = f"w-{unique}"
    env = {**os.environ, **stack.env(), "SHARDCTL_CLUSTER": unique}
    create_topic(stack.kafka_bootstrap, topic, 1)
    produce(stack.kafka_bootstrap, topic, [(0, None, maxwell(n, 0)) for n in range(20)])

    async def run_worker(seen: Seen, until: object) -> Worker:
        consumer = Consumer(
            KafkaTransport(
                {"bootstrap.servers": stack.kafka_bootstrap}, [topic], group_id=f"t.{unique}"
            ),
            Handler("test:seen", seen),
            KafkaDeadLetterWriter({"bootstrap.servers": stack.kafka_bootstrap}, worker_id),
            ConsumerConfig(batch_size=10),
            worker_id=worker_id,
        )
        await consumer.open()
        worker = Worker(
            settings,
            WorkerOptions(worker_id=worker_id, ttl=5, commit_interval_s=0.2, drain_timeout_s=2),
            consumer,
        )
        task = asyncio.get_running_loop().create_task(worker.run())
        try:
            await until  # type: ignore[misc]
        finally:
            worker.stop_requested.set()
            await asyncio.wait_for(task, 60)
            await consumer.close()
        return worker

    async def first_life() -> None:
        await write_assignment(settings, [worker_id], generation=1)
        seen = Seen()

        async def done() -> None:
            await wait_async("20 events", lambda: seen.count() == 20)
            while (r := await _record(settings, 0)) is None or r.positions != {topic: 20}:
                await asyncio.sleep(0.1)
            refused = await asyncio.to_thread(
                _cli, env, "offsets", "reset", "--shard", "0", "--topic", topic,
                "--to-earliest", "--execute",
            )  # fmt: skip
            assert refused.returncode == 1 and "owned" in refused.stderr, refused

        await run_worker(seen, done())

    async def second_life(old_id: str | None) -> None:
        seen = Seen()

        def refused() -> bool:
            return any(
                "shard 0" in r.message
                and topic in r.message
                and "shardctl offsets reset --shard 0" in r.message
                and (old_id or "?") in r.message
                for r in caplog.records
            )

        async def done() -> None:
            await wait_async("the shard refusing the old offsets", refused, timeout=60)

        await run_worker(seen, done())
        assert seen.ids == [], f"events of the new topic handled from stale offsets: {seen.ids}"

    async def third_life() -> list[int]:
        seen = Seen()

        async def done() -> None:
            await wait_async("all 25 events of the new topic", lambda: seen.count() == 25)

        await run_worker(seen, done())
        return seen.ids

    caplog.set_level("ERROR")
    try:
        asyncio.run(first_life())
        before = asyncio.run(_record(settings, 0))
        assert before is not None and before.topic_ids.get(topic), before
        delete_topics(stack.kafka_bootstrap, [topic])
        create_topic(stack.kafka_bootstrap, topic, 1)
        produce(stack.kafka_bootstrap, topic, [(0, None, maxwell(n, 0)) for n in range(25)])

        asyncio.run(second_life(before.topic_ids[topic]))

        dry = _cli(env, "offsets", "reset", "--shard", "0", "--topic", topic, "--to-earliest")
        assert dry.returncode == 0, dry
        assert "dry run" in dry.stdout and f"{topic}@20 -> {topic}@0" in dry.stdout, dry.stdout
        assert asyncio.run(_record(settings, 0)) == before
        done = _cli(
            env, "offsets", "reset", "--shard", "0", "--topic", topic, "--to-earliest", "--execute"
        )
        assert done.returncode == 0, done
        after = asyncio.run(_record(settings, 0))
        assert after is not None and after.positions == {topic: 0}
        assert after.topic_ids[topic] not in ("", before.topic_ids[topic])

        assert asyncio.run(third_life()) == list(range(25))
    finally:
        delete_topics(stack.kafka_bootstrap, [topic])
        asyncio.run(delete_cluster(settings))
