"""A topic's own max.message.bytes: batches never exceed it, and only a single message
over it goes to the dead-letter topic, as Maxwell's primary-key skeleton."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

from shardctl.core.hashing import shard_of
from tests.integration.cdc_support import (
    ReaderProcess,
    TopicReader,
    binlog_end,
    reader_env,
    stored_checkpoint,
    wait_for,
)

pytestmark = pytest.mark.integration

SHARDS = 2
LIMIT = 20000


def _create_topic(admin: AdminClient, topic: str, config: dict[str, str]) -> None:
    admin.create_topics([NewTopic(topic, SHARDS, 1, config=config)])[topic].result()


def _set_limit(admin: AdminClient, topic: str, limit: int) -> None:
    resource = ConfigResource(
        "topic",
        topic,
        incremental_configs=[
            ConfigEntry(
                "max.message.bytes", str(limit), incremental_operation=AlterConfigOpType.SET
            )
        ],
    )
    for future in admin.incremental_alter_configs([resource]).values():
        future.result()


def _env(stack: Any, unique: str, db: str, **cdc: Any) -> dict[str, str]:
    with stack.mysql_root() as conn:
        start = binlog_end(conn)
    return reader_env(
        stack,
        unique,
        "main",
        num_shards=SHARDS,
        kafka_topic=f"{unique}_%{{table}}",
        dead_letter_topic=f"{unique}_dlq",
        filter=f"exclude: *.*, include: {db}.*",
        start_position=start,
        **cdc,
    )


def _start(stack: Any, tmp_path: Path, unique: str, db: str, **cdc: Any) -> ReaderProcess:
    return ReaderProcess(_env(stack, unique, db, **cdc), tmp_path, "reader")


def _insert_rows(conn: Any, first: int, count: int, size: int = 400) -> None:
    """One transaction; random hex bodies, so compression cannot shrink the batches."""
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO t VALUES " + ",".join(["(%s, %s)"] * count),
            [v for i in range(first, first + count) for v in (i, os.urandom(size // 2).hex())],
        )


def test_small_topic_limit_publishes_every_row_and_dead_letters_only_the_big_one(
    stack: Any, settings: Any, unique: str, mysql_db: str, tmp_path: Path
) -> None:
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    _create_topic(admin, f"{unique}_t", {"max.message.bytes": str(LIMIT)})
    conn = stack.mysql_root(mysql_db)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE t (id INT PRIMARY KEY, body LONGTEXT)")
    reader = _start(stack, tmp_path, unique, mysql_db)
    main = TopicReader(stack.kafka_bootstrap, f"{unique}_t", SHARDS)
    dlq = TopicReader(stack.kafka_bootstrap, f"{unique}_dlq", SHARDS)
    try:
        wait_for("initial checkpoint", lambda: stored_checkpoint(settings, "main"))
        _insert_rows(conn, 0, 300)  # one transaction: 300 messages of about 480 bytes
        _insert_rows(conn, 1000, 1, size=32000)
        _insert_rows(conn, 300, 300)
        rows = main.read_until(lambda rs: len(rs) >= 600, timeout=120)
        dead = dlq.read_until(lambda rs: len(rs) >= 1)
        with stack.mysql_root() as root:
            end = binlog_end(root)
        wait_for(
            "checkpoint at the end",
            lambda: (
                (cp := stored_checkpoint(settings, "main")) is not None
                and f"{cp.file}:{cp.pos}" == end
            ),
        )
    finally:
        assert reader.terminate() == 0, reader.stderr()
        main.close()
        dlq.close()
    assert sorted(r.value["data"]["id"] for r in rows) == list(range(600))
    assert len(dead) == 1
    letter = dead[0].value
    assert {k: letter[k] for k in ("database", "table", "type", "data")} == {
        "database": mysql_db,
        "table": "t",
        "type": "insert",
        "data": {"id": 1000},
    }
    assert str(LIMIT) in letter["reason"], letter
    assert letter["event_id"].endswith("#0") and letter["position"] and letter["error"]
    assert letter["shard"] == dead[0].partition == shard_of(dead[0].key, SHARDS)


def test_a_lowered_topic_limit_is_read_while_running(
    stack: Any, settings: Any, unique: str, mysql_db: str, tmp_path: Path
) -> None:
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    _create_topic(admin, f"{unique}_t", {})
    conn = stack.mysql_root(mysql_db)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE t (id INT PRIMARY KEY, body LONGTEXT)")
    reader = _start(stack, tmp_path, unique, mysql_db, kafka_topic_config_refresh_s=0.5)
    main = TopicReader(stack.kafka_bootstrap, f"{unique}_t", SHARDS)
    try:
        wait_for("initial checkpoint", lambda: stored_checkpoint(settings, "main"))
        _insert_rows(conn, 0, 10)
        main.read_until(lambda rs: len(rs) >= 10)
        _set_limit(admin, f"{unique}_t", LIMIT)
        wait_for("the reader sees the new limit", lambda: f"{LIMIT} bytes" in reader.stderr())
        _insert_rows(conn, 10, 300)
        rows = main.read_until(lambda rs: len(rs) >= 310, timeout=120)
    finally:
        assert reader.terminate() == 0, reader.stderr()
        main.close()
    assert sorted(r.value["data"]["id"] for r in rows) == list(range(310))


def test_a_batch_refused_after_an_unseen_lowering_stops_then_resumes_whole(
    stack: Any, settings: Any, unique: str, mysql_db: str, tmp_path: Path
) -> None:
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    _create_topic(admin, f"{unique}_t", {})
    conn = stack.mysql_root(mysql_db)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE t (id INT PRIMARY KEY, body LONGTEXT)")
    # The reader does not read the limit again while this test runs.
    env = _env(stack, unique, mysql_db, kafka_topic_config_refresh_s=3600)
    reader = ReaderProcess(env, tmp_path, "reader")
    main = TopicReader(stack.kafka_bootstrap, f"{unique}_t", SHARDS)
    try:
        wait_for("initial checkpoint", lambda: stored_checkpoint(settings, "main"))
        _insert_rows(conn, 0, 10)
        main.read_until(lambda rs: len(rs) >= 10)
        before = wait_for(
            "checkpoint past the first rows",
            lambda: (
                (cp := stored_checkpoint(settings, "main")) is not None
                and cp.event_id is not None
                and cp
            ),
        )
        _set_limit(admin, f"{unique}_t", LIMIT)
        _insert_rows(conn, 10, 300)
        assert reader.wait(120) == 1
        error = reader.stderr()
        assert "refused the batch" in error and "max.message.bytes" in error, error
        after = stored_checkpoint(settings, "main")
        assert after is not None and after.position == before.position
        again = ReaderProcess(env, tmp_path, "again")
        try:
            rows = main.read_until(
                lambda rs: {r.value["data"]["id"] for r in rs} >= set(range(310)), timeout=120
            )
        finally:
            assert again.terminate() == 0, again.stderr()
    finally:
        if reader.proc.poll() is None:
            reader.terminate()
        main.close()
    assert {r.value["data"]["id"] for r in rows} == set(range(310))
    for log in (error, again.stderr()):
        assert "sending it to dead-letter topic" not in log
