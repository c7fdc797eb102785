"""`shardctl status --watch` on a cluster of 1000 shards, against the real etcd and
Kafka: every refresh reuses one Kafka admin client, the view fits the screen as a
summary (unowned shards first, then the most lag), and a wrong --topic is one clear
error line with exit 2 that creates no topic.

The cluster's keys are written directly (workers/, owners/, the assignment), as the
workers and the coordinator would write them: what is under test is the read side.
"""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from rich.console import Console

from shardctl.cli import kafka_admin
from shardctl.cli.live import LiveView, Rates, SnapshotSource, watch_status
from shardctl.core.config import Settings
from shardctl.core.etcd import EtcdClient
from shardctl.core.keyspace import Keyspace
from shardctl.core.records import WorkerRecord
from tests.conftest import StackHandle
from tests.integration.workers_support import (
    delete_cluster,
    delete_topics,
    produce,
    write_assignment,
)
from tests.polling import wait_for

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "shardctl.cli.main"]
SHARDS = 1000
WORKERS = ("w1", "w2")
UNOWNED = (5, 6, 700)
MESSAGES = {512: 9, 7: 5, 999: 3}  # partition -> records produced (its lag: nothing committed)
HEIGHT = 40


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def env(stack: StackHandle, settings: Settings, unique: str) -> Iterator[dict[str, str]]:
    yield {**os.environ, **stack.env(), "SHARDCTL_CLUSTER": unique}
    asyncio.run(delete_cluster(settings))


@pytest.fixture
def topic(stack: StackHandle, unique: str) -> Iterator[str]:
    name = f"{unique}-watch"
    yield name
    delete_topics(stack.kafka_bootstrap, [name])


async def _write_cluster(settings: Settings) -> None:
    keys = Keyspace.of(settings)
    async with EtcdClient(settings.etcd) as client:
        for n, wid in enumerate(WORKERS):
            await client.put(keys.worker(wid), WorkerRecord(host="h", pid=n + 1).encode())
        for shard in range(SHARDS):
            if shard not in UNOWNED:
                await client.put(keys.owner(shard), WORKERS[shard % 2].encode())
    await write_assignment(settings, [WORKERS[s % 2] for s in range(SHARDS)], generation=1)


@pytest.fixture
def big_cluster(stack: StackHandle, settings: Settings, env: dict[str, str], topic: str) -> str:
    made = cli(env, "cluster", "init", "--shards", str(SHARDS), "--topic", topic)
    assert made.returncode == 0, made.stderr
    asyncio.run(_write_cluster(settings))
    wait_for(
        "every partition of the new topic answering",
        lambda: end_offsets_answered(settings, topic),
        60,
    )
    produce(
        stack.kafka_bootstrap,
        topic,
        [(p, None, b"{}") for p, count in MESSAGES.items() for _ in range(count)],
    )
    return topic


def end_offsets_answered(settings: Settings, topic: str) -> bool:
    """A new topic's partitions answer once each has a leader."""
    try:
        kafka_admin.EndOffsets(settings).end_offsets(topic, SHARDS)
    except kafka_admin.KafkaUnavailable:
        return False
    return True


def shard_column(lines: list[str]) -> list[int]:
    """The shard numbers of the shard table's rows, in order."""
    start = next(i for i, line in enumerate(lines) if "shown (unowned first" in line)
    shards = []
    for line in lines[start:]:
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if len(cells) == 4 and cells[0].isdigit():
            shards.append(int(cells[0]))
    return shards


def test_watch_1000_shards_one_kafka_client_and_a_summary_that_fits(
    settings: Settings, big_cluster: str
) -> None:
    console = Console(file=io.StringIO(), width=160, height=HEIGHT, record=True)

    source = asyncio.run(watch_status(settings, big_cluster, 0.2, console=console, refreshes=4))

    assert source.kafka_clients_opened == 1
    lines = console.export_text().rstrip("\n").splitlines()
    assert len(lines) <= HEIGHT
    assert [*UNOWNED, *MESSAGES] == shard_column(lines)[: len(UNOWNED) + len(MESSAGES)]
    assert any(f"{SHARDS - len(UNOWNED)} of 1,000 owned" in line for line in lines)
    assert any("total lag" in line and str(sum(MESSAGES.values())) in line for line in lines)


def test_a_snapshot_of_1000_shards_renders_within_the_height(
    settings: Settings, big_cluster: str
) -> None:
    async def take() -> Any:
        source = SnapshotSource(settings, big_cluster)
        try:
            return await source.take()
        finally:
            await source.close()

    snap = asyncio.run(take())
    assert snap.kafka_error is None
    assert snap.end_offsets is not None and len(snap.end_offsets) == SHARDS
    assert {s: snap.lag(s) for s in MESSAGES} == MESSAGES
    assert snap.status.unowned == list(UNOWNED)
    console = Console(file=io.StringIO(), width=160, height=HEIGHT, record=True)
    console.print(LiveView("watch", height=HEIGHT).render(snap, Rates(None, 0)))
    lines = console.export_text().rstrip("\n").splitlines()
    assert len(lines) <= HEIGHT
    assert shard_column(lines)[: len(UNOWNED) + len(MESSAGES)] == [*UNOWNED, *MESSAGES]


def test_a_wrong_topic_is_one_error_line_and_creates_nothing(
    stack: StackHandle, settings: Settings, env: dict[str, str], unique: str
) -> None:
    wrong = f"{unique}-no-such-topic"
    result = cli(env, "status", "--watch", "--topic", wrong)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: --topic: topic {wrong} does not exist at {stack.kafka_bootstrap}; "
        "`shardctl cluster show` lists the cluster's topics"
    ]
    assert kafka_admin.partition_counts(settings, [wrong]) == {wrong: None}
