"""`shardctl cluster init|show` against real etcd and Kafka: it creates the topics
and the config once, changes nothing the second time, and refuses a conflict."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from confluent_kafka.admin import AdminClient

from shardctl.core.config import Settings
from shardctl.core.etcd import EtcdClient
from shardctl.core.keyspace import Keyspace
from shardctl.core.records import ClusterConfig
from tests.conftest import StackHandle
from tests.integration.workers_support import create_topic, delete_cluster, delete_topics

pytestmark = pytest.mark.integration


def shardctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardctl.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def stored_config(settings: Settings) -> tuple[ClusterConfig, int] | None:
    async def read() -> tuple[ClusterConfig, int] | None:
        async with EtcdClient(settings.etcd) as client:
            kv = await client.get(Keyspace.of(settings).config)
        return None if kv is None else (ClusterConfig.decode(kv.key, kv.value), kv.mod_revision)

    return asyncio.run(read())


def partitions(bootstrap: str, topic: str) -> int | None:
    meta = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics.get(topic)
    return None if meta is None or meta.error is not None else len(meta.partitions)


@pytest.fixture
def env(stack: StackHandle, settings: Settings, unique: str) -> Iterator[dict[str, str]]:
    yield {**os.environ, **stack.env(), "SHARDCTL_CLUSTER": unique}
    asyncio.run(delete_cluster(settings))


@pytest.fixture
def topics(stack: StackHandle, unique: str) -> Iterator[list[str]]:
    names = [f"{unique}-orders", f"{unique}-users"]
    yield names
    delete_topics(stack.kafka_bootstrap, names)


def test_init_twice_then_a_conflict(
    stack: StackHandle, settings: Settings, env: dict[str, str], topics: list[str]
) -> None:
    args = ["cluster", "init", "--shards", "4", "--topic", topics[0], "--topic", topics[1]]
    first = shardctl(env, *args, "--min-insync-replicas", "1")
    assert first.returncode == 0, first.stderr
    assert f"topic {topics[0]}: created with 4 partitions" in first.stdout
    assert [partitions(stack.kafka_bootstrap, t) for t in topics] == [4, 4]
    stored = stored_config(settings)
    assert stored is not None
    config, revision = stored
    assert (config.num_shards, config.topics, config.transport) == (4, topics, "kafka")

    again = shardctl(env, *args)
    assert again.returncode == 0, again.stderr
    assert "already initialised; nothing to change" in again.stdout
    assert stored_config(settings) == (config, revision)  # not even rewritten

    conflict = shardctl(env, "cluster", "init", "--shards", "8", "--topic", topics[0],
                        "--topic", topics[1])  # fmt: skip
    assert conflict.returncode == 2
    assert "num_shards is 4, asked for 8" in conflict.stderr
    assert "shardctl shards set 8" in conflict.stderr
    assert "Traceback" not in conflict.stderr
    assert stored_config(settings) == (config, revision)
    assert [partitions(stack.kafka_bootstrap, t) for t in topics] == [4, 4]

    show = shardctl(env, "cluster", "show", "--json")
    assert show.returncode == 0, show.stderr
    shown = json.loads(show.stdout)
    assert shown["config"] == {
        "num_shards": 4,
        "topics": topics,
        "transport": "kafka",
        "weights": {},
        "affinity": {},
        "shard_hash": "jump",
    }
    assert shown["kafka_topics"][topics[0]] == {
        "partitions": 4,
        "replication_factor": 1,
        "min_insync_replicas": 1,
    }


def test_init_refuses_an_existing_topic_with_other_partitions(
    stack: StackHandle, settings: Settings, env: dict[str, str], topics: list[str]
) -> None:
    create_topic(stack.kafka_bootstrap, topics[0], 3)
    result = shardctl(env, "cluster", "init", "--shards", "4", "--topic", topics[0])
    assert result.returncode == 2
    assert f"topic {topics[0]} has 3 partitions, not 4" in result.stderr
    assert stored_config(settings) is None  # nothing written


def test_show_says_when_the_cluster_is_not_initialised(env: dict[str, str]) -> None:
    result = shardctl(env, "cluster", "show")
    assert result.returncode == 1
    assert "not initialised" in result.stderr and "cluster init" in result.stderr
