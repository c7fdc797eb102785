"""`output_row_query` on real MariaDB and Kafka.

The expected messages follow Maxwell's conformance fixture
`src/test/resources/sql/json/test_row_query_log_is_on`: each row message carries
`"query"`, the statement exactly as the client sent it (a trailing comment
included), and RowMap.toJSON writes it after `table`, before `type`. MariaDB
logs the statement as an ANNOTATE_ROWS event (binlog_annotate_row_events, on by
default) and sends it only to a dump that asks for it; both read modes must."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.cdc_support import ReaderProcess, TopicReader, binlog_end, reader_env

pytestmark = pytest.mark.integration

SHARDS = 2


@pytest.mark.parametrize("mode", ["file_pos", "gtid"])
def test_row_messages_carry_the_statement(
    stack: Any, unique: str, mysql_db: str, tmp_path: Path, mode: str
) -> None:
    db = mysql_db
    conn = stack.mysql_root()
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE TABLE `{db}`.row_query (id INT PRIMARY KEY, n INT)")
        start = binlog_end(conn)
        statements = [
            f"insert into `{db}`.`row_query` set id = 10",
            f"insert into `{db}`.`row_query` (id) values (20), (30) /* comment:insert */",
            f"update `{db}`.`row_query` set n = 1 where id = 10 /* comment:update */",
            f"delete from `{db}`.`row_query` where id = 30",
        ]
        with conn.cursor() as cur:
            for sql in statements:
                cur.execute(sql)
        if mode == "gtid":
            with conn.cursor() as cur:
                cur.execute("SELECT BINLOG_GTID_POS(%s, %s)", tuple(start.rsplit(":", 1)))
                start = "gtid:" + str(cur.fetchone()[0])
    finally:
        conn.close()
    topic = f"{unique}_all"
    env = reader_env(
        stack, unique, "main", num_shards=SHARDS, kafka_topic=topic,
        dead_letter_topic=f"{unique}_dlq", filter=f"exclude: *.*, include: {db}.*",
        start_position=start, output_row_query="true", mode=mode,
    )  # fmt: skip
    reader = ReaderProcess(env, tmp_path, "reader")
    try:
        records = TopicReader(stack.kafka_bootstrap, topic, SHARDS).read_until(
            lambda r: len(r) >= 5
        )
    finally:
        assert reader.terminate() == 0, reader.stderr()
    by_id = {(r.value["type"], r.value["data"]["id"]): r.value for r in records}
    expected = {
        ("insert", 10): statements[0],
        ("insert", 20): statements[1],
        ("insert", 30): statements[1],
        ("update", 10): statements[2],
        ("delete", 30): statements[3],
    }
    assert {k: v["query"] for k, v in by_id.items()} == expected
    for doc in by_id.values():
        assert list(doc)[:4] == ["database", "table", "query", "type"]
