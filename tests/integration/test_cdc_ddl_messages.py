"""DDL messages on real MariaDB and Kafka, following Maxwell. The expected
documents are built from Maxwell's DDL form: DDLMap.toJSON writes the resolved
change's fields, then `ts` (ms) and `sql`, and `position` only with
output_binlog_position; ResolvedDatabaseCreate/Alter carry `database` and
`charset` (a CREATE naming none gets the server's charset,
DatabaseCreate.resolve), ResolvedDatabaseDrop only `database`; a RENAME TABLE
is a ResolvedTableAlter naming the renamed table, its new name in `def`, and
`old`/`def` are the tables before and after (docs/dataformat.md; the column
fields are ColumnDefSerializer's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.cdc_support import (
    ReaderProcess,
    TopicReader,
    binlog_end,
    reader_env,
    wait_for,
)

pytestmark = pytest.mark.integration

SHARDS = 2


def _run(
    stack: Any, unique: str, tmp_path: Path, statements: list[str], expected: int, **cdc: str
) -> list[dict[str, Any]]:
    conn = stack.mysql_root()
    try:
        start = binlog_end(conn)
        topic = f"{unique}_all"
        env = reader_env(
            stack, unique, "main", num_shards=SHARDS, kafka_topic=topic,
            dead_letter_topic=f"{unique}_dlq", filter=f"exclude: *.*, include: /^{unique}/.*",
            start_position=start, output_ddl="true", **cdc,
        )  # fmt: skip
        reader = ReaderProcess(env, tmp_path, "reader")
        try:
            # The table definitions follow the statements after the model's read.
            wait_for("the schema model", lambda: "schema model:" in reader.stderr(), timeout=60)
            with conn.cursor() as cur:
                for sql in statements:
                    cur.execute(sql)
            records = TopicReader(stack.kafka_bootstrap, topic, SHARDS).read_until(
                lambda r: (
                    len([x for x in r if str(x.value["database"]).startswith(unique)]) >= expected
                )
            )
        finally:
            assert reader.terminate() == 0, reader.stderr()
    finally:
        conn.close()
    docs = [r.value for r in records if str(r.value["database"]).startswith(unique)]
    return sorted(docs, key=lambda d: str(d["event_id"]))


def _server_charset(stack: Any) -> str:
    conn = stack.mysql_root()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT @@character_set_server")
            return str(cur.fetchone()[0])
    finally:
        conn.close()


# Both read stages: the server's charset reaches the second process too.
@pytest.mark.parametrize("pipeline", ["one-process", "two-process"])
def test_database_ddl_and_rename_in_maxwell_form(
    stack: Any, unique: str, mysql_db: str, tmp_path: Path, pipeline: str
) -> None:
    other = f"{unique}_x"
    plain = f"{unique}_y"
    statements = [
        f"CREATE DATABASE `{other}` CHARACTER SET latin1",
        f"ALTER DATABASE `{other}` CHARACTER SET utf8mb4",
        f"CREATE DATABASE `{plain}`",
        f"CREATE TABLE `{mysql_db}`.a (id INT PRIMARY KEY)",
        f"RENAME TABLE `{mysql_db}`.a TO `{other}`.b",
        f"DROP DATABASE `{plain}`",
        f"DROP DATABASE `{other}`",
    ]
    try:
        docs = _run(
            stack, unique, tmp_path, statements, expected=len(statements), pipeline=pipeline
        )
    finally:
        conn = stack.mysql_root()
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{other}`")
            cur.execute(f"DROP DATABASE IF EXISTS `{plain}`")
        conn.close()
    assert len(docs) == len(statements), docs
    for doc in docs:
        assert isinstance(doc["ts"], int) and doc["ts"] % 1000 == 0
        assert "position" not in doc  # output_binlog_position is off
    by_sql = {d["sql"]: {k: v for k, v in d.items() if k not in ("ts", "event_id")} for d in docs}
    id_column = {"type": "int", "name": "id", "signed": True}
    a_def = {"database": mysql_db, "charset": _server_charset(stack), "table": "a",
             "columns": [id_column], "primary-key": ["id"]}  # fmt: skip
    assert by_sql == {
        statements[0]: {"type": "database-create", "database": other, "charset": "latin1",
                        "sql": statements[0]},
        statements[1]: {"type": "database-alter", "database": other, "charset": "utf8mb4",
                        "sql": statements[1]},
        statements[2]: {"type": "database-create", "database": plain,
                        "charset": _server_charset(stack), "sql": statements[2]},
        statements[3]: {"type": "table-create", "database": mysql_db, "table": "a",
                        "def": a_def, "sql": statements[3]},
        statements[4]: {"type": "table-alter", "database": mysql_db, "table": "a", "old": a_def,
                        "def": {**a_def, "database": other, "table": "b"},
                        "sql": statements[4]},
        statements[5]: {"type": "database-drop", "database": plain, "sql": statements[5]},
        statements[6]: {"type": "database-drop", "database": other, "sql": statements[6]},
    }  # fmt: skip


def test_position_with_output_binlog_position(
    stack: Any, unique: str, mysql_db: str, tmp_path: Path
) -> None:
    conn = stack.mysql_root()
    try:
        before = binlog_end(conn)
    finally:
        conn.close()
    sql = f"ALTER TABLE `{mysql_db}`.t ADD COLUMN c INT"
    docs = _run(
        stack, unique, tmp_path,
        [f"CREATE TABLE `{mysql_db}`.t (id INT PRIMARY KEY)", sql],
        expected=2, output_binlog_position="true",
    )  # fmt: skip
    conn = stack.mysql_root()
    try:
        after = binlog_end(conn)
    finally:
        conn.close()
    alter = next(d for d in docs if d["sql"] == sql)
    assert list(alter) == [
        "type", "database", "table", "old", "def", "ts", "sql", "position", "event_id"
    ]  # fmt: skip
    file, pos = str(alter["position"]).rsplit(":", 1)
    # The statement's position lies between the binlog ends read around it.
    start_file, start_pos = before.rsplit(":", 1)
    end_file, end_pos = after.rsplit(":", 1)
    assert start_file == file == end_file
    assert int(start_pos) <= int(pos) < int(end_pos)
