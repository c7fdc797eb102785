"""`shardctl offsets mirror` copies the shards' offsets from etcd into a consumer
group that standard lag tools read: confluent-kafka's committed() sees them, and
the group has no member (commit only, never subscribe)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, ConsumerGroupState, TopicPartition
from confluent_kafka.admin import AdminClient

from shardctl.core.config import Settings
from shardctl.core.etcd import EtcdClient
from shardctl.core.keyspace import Keyspace
from shardctl.core.records import ClusterConfig, OffsetRecord
from tests.conftest import StackHandle
from tests.integration.workers_support import create_topic, delete_cluster, delete_topics, produce

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "shardctl.cli.main"]


@pytest.fixture
def topic(stack: StackHandle, settings: Settings, unique: str) -> Iterator[str]:
    name = f"{unique}-orders"
    create_topic(stack.kafka_bootstrap, name, 3)
    yield name
    delete_topics(stack.kafka_bootstrap, [name])
    asyncio.run(delete_cluster(settings))


async def _store(settings: Settings, topic: str, offsets: dict[int, int]) -> None:
    keys = Keyspace.of(settings)
    async with EtcdClient(settings.etcd) as client:
        await client.put(keys.config, ClusterConfig(num_shards=3, topics=[topic]).encode())
        for shard, offset in offsets.items():
            record = OffsetRecord(positions={topic: offset, "other": 99}, token=1)
            await client.put(keys.offset(shard), record.encode())


def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        parts = consumer.committed([TopicPartition(topic, p) for p in range(3)], timeout=30)
        return {p.partition: p.offset for p in parts}
    finally:
        consumer.close()


def test_mirrored_offsets_are_visible_to_committed_and_the_group_has_no_member(
    stack: StackHandle, settings: Settings, unique: str, topic: str
) -> None:
    produce(stack.kafka_bootstrap, topic, [(p, None, b"{}") for p in (0, 1) for _ in range(5)])
    asyncio.run(_store(settings, topic, {0: 5, 1: 2}))
    env = {**os.environ, **stack.env(), "SHARDCTL_CLUSTER": unique}
    result = subprocess.run(
        [*CLI, "offsets", "mirror", "--once"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    group = f"shardctl.{unique}.offsets"
    assert result.stdout.strip() == f"group {group}: 2 offset(s) committed"
    # Partition 2 has no stored offset: nothing is committed for it (-1001: none).
    assert committed(stack.kafka_bootstrap, group, topic) == {0: 5, 1: 2, 2: -1001}

    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})  # alive until answered
    described = admin.describe_consumer_groups([group])[group].result(30)
    assert described.members == []
    assert described.state == ConsumerGroupState.EMPTY
