"""A transient failure never dead-letters: with the SQL sink's own MariaDB stopped far
longer than the retry window while changes keep coming, the shard waits, says so
(metrics, its offset record, `shardctl doctor`), and every change ends in the sink."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pymysql
import pytest
from prometheus_client import REGISTRY

from shardctl.cli.doctor import check_stalled_shards
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
    read_all,
    wait_async,
    write_assignment,
)
from workers.consumer import Consumer, ConsumerConfig
from workers.deadletters import KafkaDeadLetterWriter
from workers.handlers import HandlerContext, load_handler
from workers.pipeline import ensure_kafka_topics
from workers.retry import RetryPolicy
from workers.transports.kafka import KafkaTransport
from workers.worker import Worker, WorkerOptions

pytestmark = pytest.mark.integration

# The old give-up window of this policy: 0.1 + 0.2 = 0.3 s of retries, then the DLQ.
QUICK = RetryPolicy(attempts=3, initial_delay_s=0.1, max_delay_s=1.0)


def _sample(name: str, worker: str, shard: int) -> float:
    value = REGISTRY.get_sample_value(name, {"worker": worker, "shard": str(shard)})
    return 0.0 if value is None else value


def _rows(stack: StackHandle, db: str) -> int:
    try:
        conn = stack.mysql_root(db)
    except pymysql.err.MySQLError:  # the server is down on purpose
        return -1
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM items")
            row: Any = cur.fetchone()
            return int(row[0])
    finally:
        conn.close()


def _execute(stack: StackHandle, db: str | None, sql: str) -> None:
    conn = stack.mysql_root(db)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


async def _offset_record(settings: Settings, shard: int) -> OffsetRecord | None:
    keys = Keyspace.of(settings)
    async with EtcdClient(settings.etcd) as client:
        kv = await client.get(keys.offset(shard))
    return None if kv is None else OffsetRecord.decode(kv.key, kv.value)


def test_a_sink_outage_longer_than_the_retry_window_dead_letters_nothing(
    stack: StackHandle,
    settings: Settings,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topic = f"outage-{unique}"
    dlq = f"{topic}.dlq"
    worker_id = f"w-{unique}"
    create_topic(stack.kafka_bootstrap, topic, 1)
    assert ensure_kafka_topics(settings, [dlq]) == [dlq]
    # A database of its own, not the `mysql_db` fixture: that one holds a connection
    # across the test, which the outage would cut.
    mysql_db = unique
    _execute(stack, None, f"CREATE DATABASE `{mysql_db}`")
    _execute(stack, mysql_db, "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(50))")
    monkeypatch.setenv("SHARDCTL_SINK_SQL_PORT", str(stack.mysql_port))
    monkeypatch.setenv("SHARDCTL_SINK_SQL_USER", "root")
    monkeypatch.delenv("SHARDCTL_SINK_SQL_PASSWORD", raising=False)

    def changes(ns: range) -> list[tuple[int, bytes | None, bytes]]:
        return [(0, b"k%d" % n, maxwell(n, 0, database=mysql_db)) for n in ns]

    dead = "shardctl_worker_dead_letters_total"
    retries = "shardctl_worker_transient_retries_total"
    stalled = "shardctl_worker_shard_stalled"

    async def scenario() -> None:
        handler = load_handler(
            "sql",
            HandlerContext(
                worker_id=worker_id,
                settings=settings,
                options={"database": mysql_db, "scope": unique},
            ),
        )
        consumer = Consumer(
            KafkaTransport(
                {"bootstrap.servers": stack.kafka_bootstrap}, [topic], group_id=f"t.{unique}"
            ),
            handler,
            KafkaDeadLetterWriter({"bootstrap.servers": stack.kafka_bootstrap}, worker_id),
            ConsumerConfig(batch_size=20, retry=QUICK),
            worker_id=worker_id,
        )
        await consumer.open()
        worker = Worker(
            settings,
            WorkerOptions(worker_id=worker_id, ttl=5, commit_interval_s=0.2, drain_timeout_s=5),
            consumer,
        )
        task = asyncio.get_running_loop().create_task(worker.run())
        down = False
        try:
            await write_assignment(settings, [worker_id], generation=1)
            produce(stack.kafka_bootstrap, topic, changes(range(100)))
            await wait_async("the first 100 rows", lambda: _rows(stack, mysql_db) == 100)

            stack.stop("mariadb")
            down = True
            produce(stack.kafka_bootstrap, topic, changes(range(100, 300)))
            # Past the old retry window many times over: 20 transient retries (0.5 to 1 s
            # each at the 1 s cap, so 10 to 20 s), or a dead letter, which must not happen.
            await wait_async(
                "20 transient retries (or a dead letter)",
                lambda: _sample(retries, worker_id, 0) >= 20 or _sample(dead, worker_id, 0) > 0,
                timeout=120,
            )
            assert _sample(dead, worker_id, 0) == 0, "a transient failure was dead-lettered"
            assert _sample(stalled, worker_id, 0) == 1
            record = await _offset_record(settings, 0)
            assert record is not None and record.stalled is not None, record
            assert "2003" in record.stalled.error or "2013" in record.stalled.error, record
            findings = await asyncio.to_thread(check_stalled_shards, settings)
            stalled_findings = [f for f in findings if f.level == "problem"]
            assert len(stalled_findings) == 1, findings
            assert "shard 0" in stalled_findings[0].what
            assert topic in stalled_findings[0].what, stalled_findings[0]

            stack.start("mariadb")
            down = False
            await wait_async(
                "all 300 rows in the sink",
                lambda: _rows(stack, mysql_db) == 300 or _sample(dead, worker_id, 0) > 0,
                timeout=120,
            )
            assert _sample(dead, worker_id, 0) == 0
            await wait_async("the stall cleared", lambda: _sample(stalled, worker_id, 0) == 0)
            # The final position, committed after the stall cleared.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                record = await _offset_record(settings, 0)
                if record is not None and record.positions == {topic: 300}:
                    break
                await asyncio.sleep(0.1)
            assert record is not None and record.stalled is None, record
            assert record.positions == {topic: 300}
            findings = await asyncio.to_thread(check_stalled_shards, settings)
            assert [f for f in findings if f.level == "problem"] == [], findings
        finally:
            if down:
                stack.start("mariadb")
            worker.stop_requested.set()
            await asyncio.wait_for(task, 60)
            await consumer.close()
            await delete_cluster(settings)

    try:
        asyncio.run(scenario())
        assert read_all(stack.kafka_bootstrap, dlq, 1, expect=1, timeout=3) == []
    finally:
        delete_topics(stack.kafka_bootstrap, [topic, dlq])
        _execute(stack, None, f"DROP DATABASE IF EXISTS `{mysql_db}`")


def test_a_shard_moved_away_while_stalled_is_released_and_loses_nothing(
    stack: StackHandle,
    settings: Settings,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stall must not hold up a handoff: the release ends the wait, commits only what
    was applied, and the next owner applies the rest once the sink is back."""
    topic = f"handoff-{unique}"
    dlq = f"{topic}.dlq"
    create_topic(stack.kafka_bootstrap, topic, 1)
    assert ensure_kafka_topics(settings, [dlq]) == [dlq]
    mysql_db = unique
    _execute(stack, None, f"CREATE DATABASE `{mysql_db}`")
    _execute(stack, mysql_db, "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(50))")
    monkeypatch.setenv("SHARDCTL_SINK_SQL_PORT", str(stack.mysql_port))
    monkeypatch.setenv("SHARDCTL_SINK_SQL_USER", "root")
    monkeypatch.delenv("SHARDCTL_SINK_SQL_PASSWORD", raising=False)
    keys = Keyspace.of(settings)

    def changes(ns: range) -> list[tuple[int, bytes | None, bytes]]:
        return [(0, b"k%d" % n, maxwell(n, 0, database=mysql_db)) for n in ns]

    async def owner_gone() -> bool:
        async with EtcdClient(settings.etcd) as client:
            return await client.get(keys.owner(0)) is None

    async def scenario() -> None:
        started: list[tuple[Worker, Consumer, asyncio.Task[None]]] = []

        async def start(worker_id: str) -> None:
            consumer = Consumer(
                KafkaTransport(
                    {"bootstrap.servers": stack.kafka_bootstrap}, [topic], group_id=f"t.{unique}"
                ),
                load_handler(
                    "sql",
                    HandlerContext(
                        worker_id=worker_id,
                        settings=settings,
                        options={"database": mysql_db, "scope": unique},
                    ),
                ),
                KafkaDeadLetterWriter({"bootstrap.servers": stack.kafka_bootstrap}, worker_id),
                ConsumerConfig(batch_size=20, retry=QUICK),
                worker_id=worker_id,
            )
            await consumer.open()
            worker = Worker(
                settings,
                WorkerOptions(worker_id=worker_id, ttl=5, commit_interval_s=0.2, drain_timeout_s=5),
                consumer,
            )
            started.append((worker, consumer, asyncio.get_running_loop().create_task(worker.run())))

        first, second = f"a-{unique}", f"b-{unique}"
        down = False
        try:
            await start(first)
            await start(second)
            await write_assignment(settings, [first], generation=1)
            produce(stack.kafka_bootstrap, topic, changes(range(50)))
            await wait_async("the first 50 rows", lambda: _rows(stack, mysql_db) == 50)
            stack.stop("mariadb")
            down = True
            produce(stack.kafka_bootstrap, topic, changes(range(50, 150)))
            await wait_async(
                "shard 0 stalled", lambda: _sample("shardctl_worker_shard_stalled", first, 0) == 1
            )
            await write_assignment(settings, [None], generation=2)
            deadline = time.monotonic() + 30
            while not await owner_gone():
                assert time.monotonic() < deadline, "timed out after 30 s waiting for the release"
                await asyncio.sleep(0.1)
            record = await _offset_record(settings, 0)
            assert record is not None and record.positions == {topic: 50}, record
            assert record.stalled is None, record

            stack.start("mariadb")
            down = False
            await write_assignment(settings, [second], generation=3)
            await wait_async("all 150 rows", lambda: _rows(stack, mysql_db) == 150, timeout=60)
            for worker_id in (first, second):
                assert _sample("shardctl_worker_dead_letters_total", worker_id, 0) == 0
        finally:
            if down:
                stack.start("mariadb")
            for worker, _consumer, _task in started:
                worker.stop_requested.set()
            for _worker, consumer, task in started:
                await asyncio.wait_for(task, 60)
                await consumer.close()
            await delete_cluster(settings)

    try:
        asyncio.run(scenario())
        assert read_all(stack.kafka_bootstrap, dlq, 1, expect=1, timeout=3) == []
    finally:
        delete_topics(stack.kafka_bootstrap, [topic, dlq])
        _execute(stack, None, f"DROP DATABASE IF EXISTS `{mysql_db}`")
