"""MariaDB JSON columns (LONGTEXT + CHECK json_valid) are judged by the schema as of
each event's position, not by today's: replays after DDL decode as they did first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.cdc_support import (
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


def _replay_after(
    stack: Any,
    settings: Any,
    unique: str,
    mysql_db: str,
    tmp_path: Path,
    setup: list[str],
    changes: list[str],
    table: str,
    count: int,
) -> list[Record]:
    """Create tables, store a checkpoint, make `changes` while no reader runs, then
    start a reader at that checkpoint and read `count` records of `table`."""
    conn = stack.mysql_root(mysql_db)
    with conn.cursor() as cur:
        for sql in setup:
            cur.execute(sql)
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
        start_position=start,
    )
    first = ReaderProcess(env, tmp_path, "first")
    wait_for("initial checkpoint", lambda: stored_checkpoint(settings, "main"))
    assert first.terminate() == 0, first.stderr()
    with conn.cursor() as cur:
        for sql in changes:
            cur.execute(sql)
    conn.close()
    topic = TopicReader(stack.kafka_bootstrap, f"{unique}_{table}", SHARDS)
    second = ReaderProcess(env, tmp_path, "second")
    try:
        # Until the records are there, or the reader stopped (the old failure).
        records = topic.read_until(
            lambda rs: len(rs) >= count or second.proc.poll() is not None, timeout=60
        )
    finally:
        code = second.terminate()
        topic.close()
    assert code == 0, second.stderr()
    return records


def test_values_before_modify_to_json_decode_as_text_on_replay(
    stack: Any, settings: Any, unique: str, mysql_db: str, tmp_path: Path
) -> None:
    records = _replay_after(
        stack,
        settings,
        unique,
        mysql_db,
        tmp_path,
        ["CREATE TABLE later (id INT PRIMARY KEY, c LONGTEXT)"],
        [
            "INSERT INTO later VALUES (1, 'plain text, not JSON')",
            "DELETE FROM later WHERE id = 1",
            "ALTER TABLE later MODIFY c JSON",
            """INSERT INTO later VALUES (2, '{"now": "json"}')""",
        ],
        "later",
        3,
    )
    by_id: dict[int, list[tuple[str, Any]]] = {}
    for record in records:  # in order within a row's shard
        by_id.setdefault(record.value["data"]["id"], []).append(
            (record.value["type"], record.value["data"]["c"])
        )
    assert by_id == {
        1: [("insert", "plain text, not JSON"), ("delete", "plain text, not JSON")],
        2: [("insert", {"now": "json"})],
    }


def test_json_of_a_dropped_table_is_still_json_on_replay(
    stack: Any, settings: Any, unique: str, mysql_db: str, tmp_path: Path
) -> None:
    records = _replay_after(
        stack,
        settings,
        unique,
        mysql_db,
        tmp_path,
        ["CREATE TABLE gone (id INT PRIMARY KEY, doc JSON)"],
        ["""INSERT INTO gone VALUES (1, '{"a": [1, 2]}')""", "DROP TABLE gone"],
        "gone",
        1,
    )
    assert [r.value["data"] for r in records] == [{"id": 1, "doc": {"a": [1, 2]}}]
