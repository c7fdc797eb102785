"""A session binlog setting without full rows stops the reader, naming the setting and
the position; `checkpoint skip` plus a bootstrap recover without losing a visible row."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cdc_support import (
    SHARDCTL,
    ReaderProcess,
    Record,
    TopicReader,
    binlog_end,
    reader_env,
    stored_checkpoint,
    wait_for,
)

pytestmark = pytest.mark.integration

SHARDS = 2


def _rows(records: list[Record], kind: str) -> list[dict[str, Any]]:
    return [r.value["data"] for r in records if r.value["type"] == kind]


@pytest.mark.parametrize(
    ("setting", "value", "statement", "mode"),
    [
        ("binlog_format", "STATEMENT", "INSERT INTO t VALUES (2, 'two', 'x')", "file_pos"),
        ("binlog_format", "STATEMENT", "INSERT INTO t VALUES (2, 'two', 'x')", "gtid"),
        ("binlog_format", "MIXED", "UPDATE t SET v = 'changed' WHERE id = 1", "file_pos"),
        ("binlog_row_image", "MINIMAL", "UPDATE t SET v = 'changed' WHERE id = 1", "file_pos"),
        ("binlog_row_image", "NOBLOB", "UPDATE t SET v = 'changed' WHERE id = 1", "gtid"),
    ],
)
def test_session_setting_stops_the_reader_and_skip_recovers(
    stack: Any,
    settings: Any,
    unique: str,
    mysql_db: str,
    tmp_path: Path,
    setting: str,
    value: str,
    statement: str,
    mode: str,
) -> None:
    conn = stack.mysql_root(mysql_db)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20), b TEXT)")
        cur.execute("INSERT INTO t VALUES (1, 'one', 'blob one')")
    with stack.mysql_root() as root:
        start = binlog_end(root)
    env = reader_env(
        stack,
        unique,
        "main",
        num_shards=SHARDS,
        kafka_topic=f"{unique}_%{{table}}",
        dead_letter_topic=f"{unique}_dlq",
        filter=f"exclude: *.*, include: {mysql_db}.*",
        start_position=start if mode == "file_pos" else "current",
        mode=mode,
    )
    topic = TopicReader(stack.kafka_bootstrap, f"{unique}_t", SHARDS)
    reader = ReaderProcess(env, tmp_path, "reader")
    try:
        wait_for("initial checkpoint", lambda: stored_checkpoint(settings, "main"))
        with conn.cursor() as cur:
            cur.execute("INSERT INTO t VALUES (3, 'three', 'blob three')")
        with stack.mysql_root(mysql_db) as session, session.cursor() as cur:
            cur.execute(f"SET SESSION {setting} = '{value}'")
            cur.execute(statement)
        with conn.cursor() as cur:
            cur.execute("INSERT INTO t VALUES (4, 'four', 'blob four')")

        assert reader.wait(60) == 1, reader.stderr()
        error = reader.stderr()
        assert setting in error, error
        # The error line's position (log lines carry `position=` fields too).
        stop = next(line for line in error.splitlines() if line.startswith("error:"))
        found = re.search(r"position=(\S+)", stop)
        assert found is not None, error
        position = found.group(1)
        assert f"shardctl cdc checkpoint skip --source main --position {position}" in error
        assert f"shardctl cdc bootstrap {mysql_db}.t --source main" in error
        # Everything before the transaction is published and checkpointed; nothing of it
        # or after it is published.
        records = topic.read_until(lambda rs: len(rs) >= 1)
        checkpoint = stored_checkpoint(settings, "main")
        assert checkpoint is not None
        assert f"{checkpoint.file}:{checkpoint.pos}" == position
        assert [r["id"] for r in _rows(records, "insert")] == [3]
        assert _rows(records, "update") == []

        # A reader started again stops at the same transaction, again.
        again = ReaderProcess(env, tmp_path, "again")
        assert again.wait(60) == 1
        assert f"position={position} " in again.stderr()

        skip = subprocess.run(
            [SHARDCTL, "cdc", "checkpoint", "skip", "--source", "main", "--position", position],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert skip.returncode == 0, skip.stderr
        assert f"{mysql_db}.t" in skip.stdout, skip.stdout
        moved = stored_checkpoint(settings, "main")
        assert moved is not None and moved.position.sort_key() > checkpoint.position.sort_key()
        # Skipping again is refused: the checkpoint no longer sits at that transaction.
        twice = subprocess.run(
            [SHARDCTL, "cdc", "checkpoint", "skip", "--source", "main", "--position", position],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert twice.returncode == 1 and "not at" in twice.stderr, twice.stderr

        resumed = ReaderProcess(env, tmp_path, "resumed")
        try:
            boot = subprocess.run(
                [SHARDCTL, "cdc", "bootstrap", f"{mysql_db}.t", "--source", "main"],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert boot.returncode == 0, boot.stderr
            with conn.cursor() as cur:
                cur.execute("SELECT id, v, b FROM t ORDER BY id")
                table = [dict(zip(("id", "v", "b"), row, strict=True)) for row in cur.fetchall()]

            # Each row has its own shard: bootstrap-complete may be read before a
            # bootstrap-insert or an insert of another partition.
            def complete(rs: list[Record]) -> bool:
                return (
                    any(r.value["type"] == "bootstrap-complete" for r in rs)
                    and len(_rows(rs, "bootstrap-insert")) >= len(table)
                    and {3, 4} <= {r["id"] for r in _rows(rs, "insert")}
                )

            records = topic.read_until(complete)
        finally:
            assert resumed.terminate() == 0, resumed.stderr()
        assert [r["id"] for r in _rows(records, "insert")] == [3, 4]
        assert sorted(_rows(records, "bootstrap-insert"), key=lambda r: r["id"]) == table
    finally:
        if reader.proc.poll() is None:
            reader.terminate()
        topic.close()
        conn.close()
