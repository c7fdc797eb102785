"""`shardctl offsets describe|reset` and `status --json`'s offsets on the real stack: a
coordinator and a worker consume a topic, describe shows committed offsets, ends,
lag, owner and token; reset is refused while a shard is owned, then moves offsets
(dry run and execute) to an offset, by a shift, to a time and to the ends."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from shardctl.core.config import Settings
from shardctl.core.etcd import EtcdClient
from shardctl.core.keyspace import Keyspace
from shardctl.core.records import OffsetRecord
from tests.conftest import StackHandle
from tests.integration.workers_support import delete_cluster, delete_topics, maxwell
from tests.polling import wait_for

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "shardctl.cli.main"]
# Record times of the two batches on shard 0: an hour apart, so a reset to the time
# between them lands on the first record of the second batch.
EARLY_MS = 1_780_000_000_000
LATE_MS = EARLY_MS + 3_600_000


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def describe(env: dict[str, str], *args: str) -> list[dict[str, Any]]:
    result = cli(env, "offsets", "describe", "--json", *args)
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


async def _positions(settings: Settings, shard: int) -> dict[str, int] | None:
    keys = Keyspace.of(settings)
    async with EtcdClient(settings.etcd) as client:
        kv = await client.get(keys.offset(shard))
    return None if kv is None else OffsetRecord.decode(kv.key, kv.value).positions


def positions(settings: Settings, shard: int) -> dict[str, int] | None:
    return asyncio.run(_positions(settings, shard))


@pytest.fixture
def env(stack: StackHandle, settings: Settings, unique: str) -> Iterator[dict[str, str]]:
    yield {**os.environ, **stack.env(), "SHARDCTL_CLUSTER": unique}
    asyncio.run(delete_cluster(settings))
    delete_topics(stack.kafka_bootstrap, [f"{unique}-orders"])


def test_offsets_describe_and_reset_around_a_running_worker(
    stack: StackHandle, env: dict[str, str], settings: Settings, unique: str, tmp_path: Path
) -> None:
    topic = f"{unique}-orders"
    init = cli(env, "cluster", "init", "--shards", "2", "--topic", topic)
    assert init.returncode == 0, init.stderr
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap, "acks": "all"})
    for n in range(10):  # shard 0: 4 early records, 6 late ones
        stamp = EARLY_MS + n if n < 4 else LATE_MS + n
        producer.produce(topic, value=maxwell(n, 0), partition=0, timestamp=stamp)
    for n in range(3):
        producer.produce(topic, value=maxwell(n, 1), partition=1, timestamp=LATE_MS)
    assert producer.flush(30) == 0

    before = describe(env)
    assert [(r["shard"], r["committed"], r["end"], r["lag"], r["owner"]) for r in before] == [
        (0, None, 10, 10, None),
        (1, None, 3, 3, None),
    ]

    procs: list[subprocess.Popen[bytes]] = []
    try:
        for args in (
            ["coordinator", "run", "--id", "c1", "--stabilization", "0.2"],
            ["worker", "run", "--handler", "stdout", "--id", "w1", "--ttl", "3",
             "--commit-interval", "0.2"],
        ):  # fmt: skip
            log = (tmp_path / f"{args[0]}.log").open("wb")
            procs.append(subprocess.Popen([*CLI, *args], env=env, stdout=log, stderr=log))

        def caught_up() -> list[dict[str, Any]] | None:
            rows = describe(env)
            return rows if all(r["lag"] == 0 and r["owner"] == "w1" for r in rows) else None

        rows = wait_for("the worker to consume both shards", caught_up, 90)
        assert [(r["shard"], r["topic"], r["committed"], r["end"]) for r in rows] == [
            (0, topic, 10, 10),
            (1, topic, 3, 3),
        ]
        assert all(isinstance(r["token"], int) and r["token"] > 0 for r in rows)

        table = cli(env, "offsets", "describe", "--shard", "1")
        assert table.returncode == 0, table.stderr
        (line,) = [x for x in table.stdout.splitlines() if x.strip().startswith("1 ")]
        assert line.split() == ["1", topic, "3", "3", "0", "w1", str(rows[1]["token"])]

        status = cli(env, "status", "--json")
        assert status.returncode == 0, status.stderr
        shards = json.loads(status.stdout)["shards"]
        assert json.loads(status.stdout)["kafka_errors"] == {}
        assert [(s["shard"], s["owner"], s["offsets"][topic]) for s in shards] == [
            (0, "w1", {"committed": 10, "earliest": 0, "end": 10, "lag": 0}),
            (1, "w1", {"committed": 3, "earliest": 0, "end": 3, "lag": 0}),
        ]

        refused = cli(
            env, "offsets", "reset", "--topic", topic, "--shard", "0", "--to-earliest",
            "--execute",
        )  # fmt: skip
        assert refused.returncode == 1
        assert f"shard 0 by 'w1' (token {rows[0]['token']})" in refused.stderr
        assert "nothing written" in refused.stderr
        assert positions(settings, 0) == {topic: 10}

        procs[1].terminate()  # drains: its shards are released
        assert procs[1].wait(60) == 0
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)
    assert all(r["owner"] is None for r in describe(env))

    def reset(*args: str) -> subprocess.CompletedProcess[str]:
        return cli(env, "offsets", "reset", "--topic", topic, *args)

    dry = reset("--all-shards", "--shift-by", "-2")
    assert dry.returncode == 0, dry.stderr
    assert f"shard 0: {topic}@10 -> {topic}@8" in dry.stdout
    assert f"shard 1: {topic}@3 -> {topic}@1" in dry.stdout
    assert "dry run: nothing written" in dry.stdout
    assert (positions(settings, 0), positions(settings, 1)) == ({topic: 10}, {topic: 3})

    done = reset("--shard", "0", "--shard", "1", "--to-offset", "2", "--execute")
    assert done.returncode == 0, done.stderr
    assert (positions(settings, 0), positions(settings, 1)) == ({topic: 2}, {topic: 2})

    # A target past the end is clamped to the end, as Kafka's tool does.
    assert reset("--shard", "1", "--shift-by", "100", "--execute").returncode == 0
    assert positions(settings, 1) == {topic: 3}

    between = datetime.fromtimestamp((EARLY_MS + LATE_MS) / 2000, UTC).isoformat()
    assert reset("--shard", "0", "--to-datetime", between, "--execute").returncode == 0
    assert positions(settings, 0) == {topic: 4}

    assert reset("--all-shards", "--to-latest", "--execute").returncode == 0
    assert [(r["committed"], r["lag"]) for r in describe(env)] == [(10, 0), (3, 0)]
    assert reset("--shard", "0", "--to-earliest", "--execute").returncode == 0
    assert [(r["committed"], r["lag"]) for r in describe(env, "--shard", "0")] == [(0, 10)]

    # A topic Kafka no longer has: status still answers, and names the topic's error.
    delete_topics(stack.kafka_bootstrap, [topic])
    status = cli(env, "status", "--json")
    assert status.returncode == 0, status.stderr
    document = json.loads(status.stdout)
    assert list(document["kafka_errors"]) == [topic]
    assert f"warning: offsets and lag: topic {topic}" in status.stderr
    assert document["shards"][0]["offsets"][topic] == {
        "committed": 0, "earliest": None, "end": None, "lag": None,
    }  # fmt: skip
    gone = cli(env, "offsets", "describe")
    assert gone.returncode == 1 and f"topic {topic}" in gone.stderr
    assert "Traceback" not in gone.stderr


def test_offsets_reset_refuses_bad_usage(env: dict[str, str], unique: str) -> None:
    both = cli(env, "offsets", "reset", "--topic", "t", "--shard", "0", "--to-earliest",
               "--to-offset", "3")  # fmt: skip
    assert both.returncode == 2
    assert "give exactly one of" in both.stderr and "Traceback" not in both.stderr
    none = cli(env, "offsets", "reset", "--topic", "t", "--to-latest")
    assert none.returncode == 2 and "--all-shards" in none.stderr
    when = cli(env, "offsets", "reset", "--topic", "t", "--shard", "0", "--to-datetime", "soon")
    assert when.returncode == 2 and "--to-datetime 'soon'" in when.stderr
    no_config = cli(env, "offsets", "describe")
    assert no_config.returncode == 2 and "shardctl cluster init" in no_config.stderr
