"""`def`/`old` of DDL messages on real MariaDB and Kafka.

Expected definitions are built from Maxwell's documented form, not from our output:
docs/dataformat.md ("CREATE TABLE", "ALTER TABLE": `def` on a create, `old` and
`def` on an alter, `{database, charset, table, columns, primary-key}`), Maxwell's
ColumnDefSerializer for the column fields (`charset` on string types, `signed` on
integer types, `enum-values` on ENUM/SET, `column-length` on DATETIME/TIMESTAMP/
TIME) and ResolvedTableAlter for a RENAME (the renamed table in `table`, the new
name in `def`, the table before it in `old`); ResolvedTableDrop carries neither."""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from cdc.ddl import classify
from cdc.replication.position import BinlogPosition
from cdc.schema_model import SchemaModel
from tests.integration.cdc_support import (
    ReaderProcess,
    TopicReader,
    binlog_end,
    reader_env,
    wait_for,
)

pytestmark = pytest.mark.integration

SHARDS = 2
MODEL_READ = "schema model:"


def col(name: str, type_: str, **extra: Any) -> dict[str, Any]:
    """A column in Maxwell's ColumnDefSerializer order: type, name, then its one extra."""
    return {"type": type_, "name": name, **{k.replace("_", "-"): v for k, v in extra.items()}}


def table_def(db: str, table: str, charset: str, columns: list[Any], pk: list[str]) -> Any:
    return {"database": db, "charset": charset, "table": table, "columns": columns,
            "primary-key": pk}  # fmt: skip


def _reader(stack: Any, unique: str, tmp_path: Path, start: str, name: str) -> ReaderProcess:
    env = reader_env(
        stack, unique, "main", num_shards=SHARDS, kafka_topic=f"{unique}_all",
        dead_letter_topic=f"{unique}_dlq", filter=f"exclude: *.*, include: /^{unique}/.*",
        start_position=start, output_ddl="true",
    )  # fmt: skip
    return ReaderProcess(env, tmp_path, name)


def _execute(stack: Any, statements: list[str]) -> None:
    conn = stack.mysql_root()
    try:
        with conn.cursor() as cur:
            for sql in statements:
                cur.execute(sql)
    finally:
        conn.close()


def _ddl_docs(stack: Any, unique: str, expected: int) -> list[dict[str, Any]]:
    """The DDL messages in stream order (by event id: GTID or file:pos, then index)."""
    records = TopicReader(stack.kafka_bootstrap, f"{unique}_all", SHARDS).read_until(
        lambda r: len([x for x in r if "sql" in x.value]) >= expected
    )
    docs = [r.value for r in records if "sql" in r.value]
    assert len(docs) == expected, docs
    docs.sort(key=lambda d: [int(n) for n in re.findall(r"\d+", str(d["event_id"]))])
    return docs


def _start(stack: Any) -> str:
    conn = stack.mysql_root()
    try:
        return binlog_end(conn)
    finally:
        conn.close()


def test_create_alter_rename_drop_carry_maxwells_definitions(
    stack: Any, unique: str, mysql_db: str, tmp_path: Path
) -> None:
    db = mysql_db
    reader = _reader(stack, unique, tmp_path, _start(stack), "reader")
    try:
        # The model is read as the reader starts; statements after it are followed.
        wait_for("the schema model", lambda: MODEL_READ in reader.stderr(), timeout=60)
        statements = [
            f"CREATE TABLE `{db}`.e (id INT(10) NOT NULL PRIMARY KEY AUTO_INCREMENT, m DOUBLE, "
            "c TIMESTAMP(6) NULL, comment VARCHAR(255) CHARSET 'latin1') DEFAULT CHARSET=utf8mb4",
            f"ALTER TABLE `{db}`.e ADD COLUMN torvalds BIGINT UNSIGNED AFTER m",
            f"ALTER TABLE `{db}`.e DROP COLUMN m",
            f"ALTER TABLE `{db}`.e RENAME COLUMN comment TO note",
            f"ALTER TABLE `{db}`.e MODIFY note ENUM('a','b') CHARACTER SET latin1",
            f"RENAME TABLE `{db}`.e TO `{db}`.f",
            f"DROP TABLE `{db}`.f",
        ]
        _execute(stack, statements)
        docs = _ddl_docs(stack, unique, len(statements))
    finally:
        assert reader.terminate() == 0, reader.stderr()
    create, add, drop, rename_col, modify, rename, drop_table = docs
    assert [d["sql"] for d in docs[:-1]] == statements[:-1]
    id_col = col("id", "int", signed=True)
    m_col = col("m", "double")
    c_col = col("c", "timestamp", column_length=6)
    t_col = col("torvalds", "bigint", signed=False)
    comment = col("comment", "varchar", charset="latin1")
    note = col("note", "varchar", charset="latin1")
    note_enum = col("note", "enum", enum_values=["a", "b"])
    # dataformat.md's CREATE TABLE example, in this database.
    e0 = table_def(db, "e", "utf8mb4", [id_col, m_col, c_col, comment], ["id"])
    assert create["type"] == "table-create" and "old" not in create
    assert create["def"] == e0
    # dataformat.md's ALTER TABLE example: old is the table before, def after.
    e1 = table_def(db, "e", "utf8mb4", [id_col, m_col, t_col, c_col, comment], ["id"])
    assert (add["old"], add["def"]) == (e0, e1)
    e2 = table_def(db, "e", "utf8mb4", [id_col, t_col, c_col, comment], ["id"])
    assert (drop["old"], drop["def"]) == (e1, e2)
    e3 = table_def(db, "e", "utf8mb4", [id_col, t_col, c_col, note], ["id"])
    assert (rename_col["old"], rename_col["def"]) == (e2, e3)
    e4 = table_def(db, "e", "utf8mb4", [id_col, t_col, c_col, note_enum], ["id"])
    assert (modify["old"], modify["def"]) == (e3, e4)
    # ResolvedTableAlter: a RENAME names the renamed table, the new name in def.
    assert (rename["type"], rename["table"]) == ("table-alter", "e")
    assert rename["old"] == e4 and rename["def"] == {**e4, "table": "f"}
    assert drop_table["type"] == "table-drop" and drop_table["table"] == "f"
    assert "def" not in drop_table and "old" not in drop_table
    # Field order of a table statement (DDLMap: the resolved change, then ts, sql).
    assert list(add)[:6] == ["type", "database", "table", "old", "def", "ts"]


def test_statements_before_the_read_have_no_definitions_and_later_ones_do(
    stack: Any, unique: str, mysql_db: str, tmp_path: Path
) -> None:
    """The documented restart case: a reader that starts behind the head reads the
    model at the head, so the backlog's DDL gets no def/old (with a warning), and
    statements after the read get definitions from the state the server had then."""
    db = mysql_db
    start = _start(stack)
    backlog = [
        f"CREATE TABLE `{db}`.t (id INT PRIMARY KEY, a VARCHAR(3)) CHARSET latin1",
        f"ALTER TABLE `{db}`.t ADD COLUMN b INT UNSIGNED",
    ]
    _execute(stack, backlog)
    reader = _reader(stack, unique, tmp_path, start, "reader")
    try:
        wait_for("the schema model", lambda: MODEL_READ in reader.stderr(), timeout=60)
        later = f"ALTER TABLE `{db}`.t DROP COLUMN a"
        _execute(stack, [later])
        docs = _ddl_docs(stack, unique, 3)
        stderr = reader.stderr()
    finally:
        assert reader.terminate() == 0, reader.stderr()
    assert [d["sql"] for d in docs] == [*backlog, later]
    for doc in docs[:2]:
        assert "def" not in doc and "old" not in doc, doc
        assert str(doc["sql"])[:60] in stderr  # the warning names the statement
    id_col, a_col = col("id", "int", signed=True), col("a", "varchar", charset="latin1")
    b_col = col("b", "int", signed=False)
    before = table_def(db, "t", "latin1", [id_col, a_col, b_col], ["id"])
    after = table_def(db, "t", "latin1", [id_col, b_col], ["id"])
    assert (docs[2]["old"], docs[2]["def"]) == (before, after)


def test_a_statement_the_model_cannot_apply_is_read_again_from_the_server(
    stack: Any, unique: str, mysql_db: str, tmp_path: Path
) -> None:
    db = mysql_db
    _execute(stack, [f"CREATE TABLE `{db}`.t (id INT PRIMARY KEY, s VARCHAR(3)) CHARSET utf8mb4"])
    reader = _reader(stack, unique, tmp_path, _start(stack), "reader")
    try:
        wait_for("the schema model", lambda: MODEL_READ in reader.stderr(), timeout=60)
        # sqlglot cannot read CONVERT TO: no definitions, and the table is read again.
        convert = f"ALTER TABLE `{db}`.t CONVERT TO CHARACTER SET latin1"
        _execute(stack, [convert])
        wait_for("the warning", lambda: "cannot apply" in reader.stderr(), timeout=60)
        later = f"ALTER TABLE `{db}`.t ADD COLUMN n INT"
        _execute(stack, [later])
        docs = _ddl_docs(stack, unique, 2)
    finally:
        assert reader.terminate() == 0, reader.stderr()
    assert [d["sql"] for d in docs] == [convert, later]
    assert "def" not in docs[0] and "old" not in docs[0]
    id_col, s_col = col("id", "int", signed=True), col("s", "varchar", charset="latin1")
    converted = table_def(db, "t", "latin1", [id_col, s_col], ["id"])
    assert docs[1]["old"] == converted
    assert docs[1]["def"] == table_def(
        db, "t", "latin1", [id_col, s_col, col("n", "int", signed=True)], ["id"]
    )


def test_the_model_follows_statements_as_the_server_applies_them(stack: Any, mysql_db: str) -> None:
    """After each statement, the model's table equals information_schema's own view
    of it (read afresh): the parser's reading of types, charsets, keys and column
    order is the server's."""
    db = mysql_db
    connect = partial(stack.mysql_root)
    model = SchemaModel.from_server(connect)
    statements = [
        f"CREATE TABLE `{db}`.k (id INT UNSIGNED NOT NULL, tiny TINYINT, small SMALLINT(5) "
        "ZEROFILL, med MEDIUMINT, big BIGINT UNSIGNED, flag BOOL, f FLOAT, f2 FLOAT(30), "
        "d DOUBLE PRECISION, dec1 DECIMAL(10,2), fx FIXED(4,1), c CHAR(3), vc VARCHAR(20) "
        "CHARACTER SET latin1, tt TINYTEXT, t TEXT(300), mt MEDIUMTEXT COLLATE utf8mb4_bin, "
        "lt LONGTEXT, bn BINARY(4), vb VARBINARY(8), bl BLOB, lb LONGBLOB, dt DATE, "
        "dtm DATETIME(3), ts TIMESTAMP(6) NULL, tm TIME, y YEAR, "
        "e ENUM('a','b''c') CHARACTER SET latin1, st SET('x','y'), b BIT(3), j JSON, "
        "u8 VARCHAR(3) CHARSET utf8, vbin VARCHAR(4) CHARACTER SET binary, "
        "PRIMARY KEY (id, c)) DEFAULT CHARSET=utf8mb4",
        f"ALTER TABLE `{db}`.k ADD COLUMN a1 INT FIRST, ADD COLUMN a2 TEXT AFTER tiny",
        f"ALTER TABLE `{db}`.k DROP COLUMN med, DROP COLUMN dt",
        f"ALTER TABLE `{db}`.k CHANGE COLUMN small smaller INT UNSIGNED AFTER y",
        f"ALTER TABLE `{db}`.k MODIFY vc VARCHAR(30), RENAME COLUMN tt TO tt2",
        f"ALTER TABLE `{db}`.k DROP PRIMARY KEY, ADD PRIMARY KEY (a1)",
        f"ALTER TABLE `{db}`.k DROP COLUMN c",
        f"ALTER TABLE `{db}`.k DEFAULT CHARSET latin1, ADD COLUMN late VARCHAR(2)",
        f"CREATE TABLE `{db}`.k2 LIKE `{db}`.k",
        f"RENAME TABLE `{db}`.k2 TO `{db}`.k3",
        f"ALTER TABLE `{db}`.k3 RENAME TO `{db}`.k4",
    ]
    for sql in statements:
        _execute(stack, [sql])
        at = BinlogPosition.parse(_start(stack))
        for change in classify(sql, db):
            model.apply(change, at)
        for table in ("k", "k4"):
            server = SchemaModel.from_server(connect).tables.get((db, table))
            ours = model.tables.get((db, table))
            mismatched = [
                (mine, theirs)
                for mine, theirs in zip(
                    (ours.to_json()["columns"] if ours else []),
                    (server.to_json()["columns"] if server else []),
                    strict=False,
                )
                if mine != theirs
            ]
            assert mismatched == [], (sql, table)
            assert (ours and ours.to_json()) == (server and server.to_json()), (sql, table)
