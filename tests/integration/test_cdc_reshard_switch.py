"""The reader's side of an online change of the shard count (`shardctl shards set`),
with either read stage (`cdc.pipeline`), on real MariaDB, etcd and Kafka.

The rows committed before the switch are on their shard of the old count, the rows
committed after it on their shard of the new count (jump hash of the key bytes, as
`cluster init` records it), each shard in commit order, and the reader switches
within its leadership: it builds its read stage again with the new count instead of
campaigning again.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest

from shardctl.core.config import Settings
from shardctl.core.event_ids import order_key
from shardctl.core.hashing import shard_of
from shardctl.core.keyspace import Keyspace
from shardctl.core.records import Reshard
from tests.conftest import StackHandle
from tests.integration.cdc_support import (
    SHARDCTL,
    ReaderProcess,
    Record,
    TopicReader,
    binlog_end,
    etcd_get,
    reader_env,
    wait_for,
)
from tests.integration.workers_support import delete_cluster, delete_topics

pytestmark = pytest.mark.integration

OLD, NEW = 4, 6
ROWS = 60
PER_TRANSACTION = 10


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SHARDCTL, *args], env=env, capture_output=True, text=True, timeout=90, check=False
    )


def _reshard(settings: Settings) -> Reshard | None:
    key = Keyspace.of(settings).reshard
    raw = etcd_get(settings, key)
    return None if raw is None else Reshard.decode(key, raw)


def _switched(settings: Settings) -> Reshard | None:
    record = _reshard(settings)
    return record if record is not None and record.state == "switched" else None


def _in_transactions(conn: Any, statements: list[str]) -> None:
    with conn.cursor() as cur:
        for start in range(0, len(statements), PER_TRANSACTION):
            for sql in statements[start : start + PER_TRANSACTION]:
                cur.execute(sql)
            conn.commit()


@pytest.mark.parametrize("pipeline", ["one-process", "two-process"])
def test_the_reader_switches_the_shard_count_at_a_transaction_boundary(
    stack: StackHandle,
    settings: Settings,
    unique: str,
    mysql_db: str,
    tmp_path: Path,
    pipeline: str,
) -> None:
    topic = f"{unique}_items"
    with stack.mysql_root() as root:
        start = binlog_end(root)
    # No cdc.num_shards: the reader follows the cluster config through the change.
    env = reader_env(
        stack,
        unique,
        "main",
        pipeline=pipeline,
        kafka_topic=topic,
        dead_letter_topic=f"{unique}_dlq",
        filter=f"exclude: *.*, include: {mysql_db}.*",
        start_position=start,
    )
    init = _cli(env, "cluster", "init", "--shards", str(OLD), "--topic", topic)
    assert init.returncode == 0, init.stderr
    conn = stack.mysql_root(mysql_db)
    reader = ReaderProcess(env, tmp_path, "reader")
    readers: list[TopicReader] = []
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE items (id INT PRIMARY KEY, n INT NOT NULL)")
        _in_transactions(conn, [f"INSERT INTO items VALUES ({i}, 0)" for i in range(ROWS)])
        readers.append(TopicReader(stack.kafka_bootstrap, topic, OLD))
        readers[0].read_until(lambda r: len(r) >= ROWS)

        done = _cli(env, "shards", "set", str(NEW))
        assert done.returncode == 0, done.stderr
        assert "requested" in done.stdout
        switched = wait_for("the reader's switch", lambda: _switched(settings), 60)
        assert switched.to_shards == NEW and switched.position is not None
        _in_transactions(conn, [f"UPDATE items SET n = 1 WHERE id = {i}" for i in range(ROWS)])
        readers.append(TopicReader(stack.kafka_bootstrap, topic, NEW))
        records = readers[1].read_until(lambda r: len(r) >= 2 * ROWS)
    finally:
        conn.close()
        status = reader.terminate()
        for topic_reader in readers:
            topic_reader.close()
        asyncio.run(delete_cluster(settings))
        delete_topics(stack.kafka_bootstrap, [topic, f"{unique}_dlq"])
    log = reader.stderr()
    assert status == 0, log
    assert len(records) == 2 * ROWS

    for record in records:
        count = OLD if record.value["type"] == "insert" else NEW
        assert record.partition == shard_of(record.key, count, "jump"), record.value
    moved = {r.key for r in records if shard_of(r.key, OLD, "jump") != shard_of(r.key, NEW, "jump")}
    assert moved, "some keys change shard"
    # P4: within a shard, the changes are in commit order.
    by_partition: dict[int, list[Record]] = {}
    for record in sorted(records, key=lambda r: r.offset):
        by_partition.setdefault(record.partition, []).append(record)
    for shard_records in by_partition.values():
        keys = [order_key(r.value["event_id"], r.value["source"]) for r in shard_records]
        assert None not in keys and keys == sorted(keys)  # type: ignore[type-var]
    # One leadership throughout: the switch rebuilt the read stage, nothing campaigned.
    assert log.count("campaigning for source") == 1, log
    assert "leading again to switch the shard count" in log
