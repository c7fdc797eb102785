"""CREATE TABLE ... SELECT on real MariaDB with `output_ddl`: the `table-create` is
published, in its place before the rows the statement writes (Maxwell publishes a
`table-create` for every CREATE TABLE, docs/docs/dataformat.md "DDL")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shardctl.core.event_ids import order_key
from tests.integration.cdc_support import ReaderProcess, TopicReader, binlog_end, reader_env

pytestmark = pytest.mark.integration

SHARDS = 3


def test_create_select_publishes_table_create_before_its_rows(
    stack: Any, unique: str, mysql_db: str, tmp_path: Path
) -> None:
    conn = stack.mysql_root(mysql_db)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE src (id INT PRIMARY KEY, name VARCHAR(10))")
        cur.execute("INSERT INTO src VALUES (1,'a'),(2,'b'),(3,'c')")
        start = binlog_end(conn)
    topic = f"{unique}_all"
    env = reader_env(
        stack,
        unique,
        "main",
        num_shards=SHARDS,
        kafka_topic=topic,
        dead_letter_topic=f"{unique}_dlq",
        filter=f"exclude: *.*, include: {mysql_db}.*",
        start_position=start,
        output_ddl="true",
    )
    reader = ReaderProcess(env, tmp_path, "reader")
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE copy (PRIMARY KEY (id)) SELECT id, name FROM src")
            cur.execute("INSERT INTO copy VALUES (4,'d')")
        records = TopicReader(stack.kafka_bootstrap, topic, SHARDS).read_until(
            lambda r: len(r) >= 5
        )
    finally:
        assert reader.terminate() == 0, reader.stderr()
    docs = [r.value for r in records]
    assert len(docs) == 5
    creates = [d for d in docs if d["type"] == "table-create"]
    assert len(creates) == 1, docs
    create = creates[0]
    assert (create["database"], create["table"]) == (mysql_db, "copy")
    rows = sorted((d for d in docs if d["type"] == "insert" and d["table"] == "copy"), key=_place)
    assert [d["data"]["id"] for d in rows] == [1, 2, 3, 4]
    # The CREATE and the three copied rows are one transaction: the DDL event comes
    # first in the stream's order, the rows after it, the next INSERT after them.
    create_place = _place(create)
    for row in rows[:3]:
        assert _place(row)[:-1] == create_place[:-1], "same transaction"
        assert _place(row) > create_place
    assert _place(rows[3]) > _place(rows[2])


def _place(doc: dict[str, Any]) -> tuple[int, ...]:
    key = order_key(doc["event_id"])
    assert key is not None, doc
    return key[1]
