"""The schema model of DDL messages: applying DDL statements in stream order.

Expected definitions follow Maxwell's form (docs/dataformat.md "CREATE TABLE" and
"ALTER TABLE" examples; ColumnDefSerializer): `{database, charset, table, columns,
primary-key}`, a column `{type, name}` plus `charset` (string types; `binary` for
binary ones), `signed` (integers), `enum-values` (ENUM/SET) or `column-length`
(fractional digits of DATETIME/TIMESTAMP/TIME)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc.ddl import classify
from cdc.replication.position import BinlogPosition
from cdc.schema_model import (
    ColumnModel,
    Definitions,
    SchemaModel,
    ServerFacts,
    TableModel,
    enum_values,
)

READ_AT = BinlogPosition("bin.000002", 100)
LATER = BinlogPosition("bin.000002", 500)

FACTS = ServerFacts(
    server_charset="utf8mb4",
    mariadb=True,
    collations={
        "latin1_swedish_ci": "latin1",
        "latin1_bin": "latin1",
        "utf8mb4_bin": "utf8mb4",
        "utf8mb3_general_ci": "utf8mb3",
    },
    charset_maxlen={"latin1": 1, "utf8mb4": 4, "utf8mb3": 3, "binary": 1},
)


def model(tables: dict[tuple[str, str], TableModel] | None = None) -> SchemaModel:
    return SchemaModel({"shop": "utf8mb4", "other": "latin1"}, tables or {}, READ_AT, FACTS)


def run(
    m: SchemaModel, sql: str, at: BinlogPosition = LATER, db: str = "shop"
) -> list[Definitions]:
    return [m.apply(change, at) for change in classify(sql, db)]


# Maxwell's dataformat.md CREATE TABLE example, as Maxwell documents its def.
MAXWELL_E = {
    "database": "shop",
    "charset": "utf8mb4",
    "table": "e",
    "columns": [
        {"type": "int", "name": "id", "signed": True},
        {"type": "double", "name": "m"},
        {"type": "timestamp", "name": "c", "column-length": 6},
        {"type": "varchar", "name": "comment", "charset": "latin1"},
    ],
    "primary-key": ["id"],
}


def test_create_table_gives_maxwells_documented_def() -> None:
    m = model()
    (defs,) = run(
        m,
        "create table shop.e ( id int(10) not null primary key auto_increment, m double, "
        "c timestamp(6), comment varchar(255) charset 'latin1' )",
    )
    assert defs == Definitions(None, MAXWELL_E)


def test_alter_add_column_after_gives_maxwells_documented_old_and_def() -> None:
    m = model()
    run(
        m,
        "create table shop.e ( id int(10) not null primary key auto_increment, m double, "
        "c timestamp(6), comment varchar(255) charset 'latin1' )",
    )
    (defs,) = run(m, "alter table shop.e add column torvalds bigint unsigned after m")
    new = dict(MAXWELL_E)
    new["columns"] = [
        *MAXWELL_E["columns"][:2],  # type: ignore[index]
        {"type": "bigint", "name": "torvalds", "signed": False},
        *MAXWELL_E["columns"][2:],  # type: ignore[index]
    ]
    assert defs == Definitions(MAXWELL_E, new)


def test_column_types_charsets_and_keys() -> None:
    m = model()
    (defs,) = run(
        m,
        "CREATE TABLE `t` (a TINYINT UNSIGNED, b BOOL, c SERIAL, d DECIMAL(10,2), "
        "e ENUM('x','y''z') CHARACTER SET latin1, f SET('p','q'), g DATETIME, h TIME(3), "
        "i TEXT(300), j VARCHAR(3) CHARACTER SET binary, k BLOB, l JSON, n CHAR(2) "
        "COLLATE latin1_bin, o FLOAT(30), p VARBINARY(4), PRIMARY KEY (C, a)) "
        "DEFAULT CHARSET=latin1",
    )
    assert defs.new == {
        "database": "shop",
        "charset": "latin1",
        "table": "t",
        "columns": [
            {"type": "tinyint", "name": "a", "signed": False},
            {"type": "tinyint", "name": "b", "signed": True},
            {"type": "bigint", "name": "c", "signed": False},
            {"type": "decimal", "name": "d"},
            {"type": "enum", "name": "e", "enum-values": ["x", "y'z"]},
            {"type": "set", "name": "f", "enum-values": ["p", "q"]},
            {"type": "datetime", "name": "g", "column-length": 0},
            {"type": "time", "name": "h", "column-length": 3},
            # TEXT(300) of latin1: 300 bytes, more than TINYTEXT holds.
            {"type": "text", "name": "i", "charset": "latin1"},
            {"type": "varbinary", "name": "j", "charset": "binary"},
            {"type": "blob", "name": "k", "charset": "binary"},
            {"type": "json", "name": "l"},
            {"type": "char", "name": "n", "charset": "latin1"},
            {"type": "double", "name": "o"},
            {"type": "varbinary", "name": "p", "charset": "binary"},
        ],
        "primary-key": ["c", "a"],
    }


def test_table_charset_defaults_to_the_database_and_utf8_is_utf8mb3() -> None:
    m = model()
    (defs,) = run(m, "CREATE TABLE other.t (a VARCHAR(3), b VARCHAR(3) CHARSET utf8)")
    assert defs.new is not None
    assert defs.new["charset"] == "latin1"
    assert [c["charset"] for c in defs.new["columns"]] == ["latin1", "utf8mb3"]


def test_alter_drop_change_modify_rename_and_keys() -> None:
    m = model()
    run(m, "CREATE TABLE t (id INT, a INT, b VARCHAR(5), c INT, PRIMARY KEY (id, a))")
    (drop,) = run(m, "ALTER TABLE t DROP COLUMN a")
    assert drop.new is not None
    assert [c["name"] for c in drop.new["columns"]] == ["id", "b", "c"]
    assert drop.new["primary-key"] == ["id"]  # a dropped key column leaves the key
    (change,) = run(m, "ALTER TABLE t CHANGE COLUMN ID pk BIGINT UNSIGNED FIRST")
    assert change.new is not None
    assert change.new["columns"][0] == {"type": "bigint", "name": "pk", "signed": False}
    assert change.new["primary-key"] == ["pk"]
    (modify,) = run(m, "ALTER TABLE t MODIFY b TEXT CHARACTER SET latin1 AFTER c")
    assert modify.new is not None
    assert [c["name"] for c in modify.new["columns"]] == ["pk", "c", "b"]
    assert modify.new["columns"][2] == {"type": "text", "name": "b", "charset": "latin1"}
    (rename,) = run(m, "ALTER TABLE t RENAME COLUMN c TO d, DROP PRIMARY KEY, ADD PRIMARY KEY (d)")
    assert rename.old == modify.new
    assert rename.new is not None
    assert [c["name"] for c in rename.new["columns"]] == ["pk", "d", "b"]
    assert rename.new["primary-key"] == ["d"]
    (nothing,) = run(m, "ALTER TABLE t ADD INDEX i (d), ALGORITHM=INPLACE, ENGINE=InnoDB")
    assert nothing.old == nothing.new == rename.new
    (drop_index,) = run(m, "ALTER TABLE t DROP INDEX `PRIMARY`, ADD COLUMN z INT ZEROFILL")
    assert drop_index.new is not None
    assert drop_index.new["primary-key"] == []
    assert drop_index.new["columns"][-1] == {"type": "int", "name": "z", "signed": False}


def test_rename_table_moves_the_definition() -> None:
    m = model()
    run(m, "CREATE TABLE a (id INT PRIMARY KEY)")
    first, second = run(m, "RENAME TABLE a TO b, b TO other.c")
    assert first.old is not None and first.new is not None
    assert (first.old["table"], first.new["table"]) == ("a", "b")
    assert second.new is not None
    assert (second.new["database"], second.new["table"]) == ("other", "c")
    assert set(m.tables) == {("other", "c")}
    (alter_rename,) = run(m, "ALTER TABLE other.c RENAME TO other.d", db="x")
    assert alter_rename.new is not None and alter_rename.new["table"] == "d"
    assert set(m.tables) == {("other", "d")}


def test_drop_table_and_database_leave_the_model() -> None:
    m = model()
    run(m, "CREATE TABLE a (id INT)")
    run(m, "CREATE TABLE other.b (id INT)")
    assert run(m, "DROP TABLE a") == [Definitions()]
    assert ("shop", "a") not in m.tables
    run(m, "DROP DATABASE other")
    assert m.tables == {} and "other" not in m.databases
    run(m, "CREATE DATABASE fresh COLLATE latin1_bin")
    (defs,) = run(m, "CREATE TABLE fresh.t (s CHAR(1))")
    assert defs.new is not None and defs.new["charset"] == "latin1"


def test_create_like_copies_the_source() -> None:
    m = model()
    run(m, "CREATE TABLE a (id INT PRIMARY KEY, s VARCHAR(2))")
    (defs,) = run(m, "CREATE TABLE b LIKE a")
    assert defs.new is not None
    assert defs.new["table"] == "b"
    assert defs.new["columns"] == m.tables[("shop", "a")].to_json()["columns"]


def test_statement_before_the_read_is_not_applied(caplog: pytest.LogCaptureFixture) -> None:
    table = TableModel("shop", "t", "utf8mb4", (ColumnModel("id", "int", signed=True),), ("id",))
    m = model({("shop", "t"): table})
    early = BinlogPosition("bin.000001", 900)  # an older file: before READ_AT
    with caplog.at_level(logging.WARNING):
        (defs,) = run(m, "ALTER TABLE t ADD COLUMN x INT", at=early)
    assert defs == Definitions()
    assert m.tables[("shop", "t")] == table
    assert "bin.000001:900" in caplog.text and "ADD COLUMN x" in caplog.text


@pytest.mark.parametrize(
    "sql",
    [
        "ALTER TABLE t ADD COLUMN id INT",  # exists already
        "ALTER TABLE t DROP COLUMN nope",
        "ALTER TABLE missing ADD COLUMN x INT",
        "ALTER TABLE t CONVERT TO CHARACTER SET latin1",  # sqlglot cannot read it
        "ALTER TABLE t ADD COLUMN big INT8",  # sqlglot reads INT8 as TINYINT
        "CREATE TABLE u SELECT 1 AS a",
        "RENAME TABLE missing TO u",
    ],
)
def test_statement_the_model_cannot_apply_has_no_definitions_and_reads_again(
    sql: str, caplog: pytest.LogCaptureFixture
) -> None:
    table = TableModel("shop", "t", "utf8mb4", (ColumnModel("id", "int", signed=True),), ("id",))
    read_again: list[list[tuple[str, str]]] = []
    server_t = TableModel("shop", "t", "latin1", (ColumnModel("id", "int", signed=True),), ())

    def reader(
        keys: list[tuple[str, str]],
    ) -> tuple[BinlogPosition, dict[tuple[str, str], TableModel | None]]:
        read_again.append(keys)
        return BinlogPosition("bin.000003", 4), {
            k: (server_t if k == ("shop", "t") else None) for k in keys
        }

    m = SchemaModel({"shop": "utf8mb4"}, {("shop", "t"): table}, READ_AT, FACTS, reader)
    with caplog.at_level(logging.WARNING):
        defs = run(m, sql)
    assert defs == [Definitions()]
    assert read_again and "cannot apply" in caplog.text and "bin.000002:500" in caplog.text
    # The tables read again are as the server has them; statements on them before
    # the position of that read are not applied.
    for key in read_again[0]:
        assert m.tables.get(key) == (server_t if key == ("shop", "t") else None)
    db, name = read_again[0][0]
    assert run(m, f"ALTER TABLE {db}.{name} ADD COLUMN z INT") == [Definitions()]


def test_enum_values_of_information_schema_column_type() -> None:
    assert enum_values("enum('a','b''c','d,e')") == ("a", "b'c", "d,e")
    assert enum_values("set('')") == ("",)


# --- a property: column ADD/DROP/RENAME/MODIFY statements against a plain list ------

_NAMES = st.sampled_from(["a", "b", "c", "d", "e"])
_OPS = st.lists(
    st.tuples(st.sampled_from(["add", "drop", "rename", "modify", "first"]), _NAMES, _NAMES),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(ops=_OPS)
def test_column_statements_match_a_list_model(ops: list[tuple[str, str, str]]) -> None:
    m = model()
    run(m, "CREATE TABLE p (id INT PRIMARY KEY)")
    expected: list[tuple[str, str]] = [("id", "int")]
    names = lambda: [n for n, _ in expected]  # noqa: E731
    for op, x, y in ops:
        if op == "add" and x not in names():
            sql, expected = f"ALTER TABLE p ADD COLUMN {x} VARCHAR(3)", [*expected, (x, "varchar")]
        elif op == "drop" and x in names():
            sql, expected = f"ALTER TABLE p DROP COLUMN {x}", [c for c in expected if c[0] != x]
        elif op == "rename" and x in names() and y not in names():
            sql = f"ALTER TABLE p RENAME COLUMN {x} TO {y}"
            expected = [(y if n == x else n, t) for n, t in expected]
        elif op == "modify" and x in names():
            sql = f"ALTER TABLE p MODIFY {x} BIGINT"
            expected = [(n, "bigint" if n == x else t) for n, t in expected]
        elif op == "first" and x in names():
            kind = dict(expected)[x]
            sql = f"ALTER TABLE p MODIFY COLUMN {x} {kind.upper()}(3) FIRST".replace(
                "INT(3)", "INT"
            )
            expected = [(x, kind), *[c for c in expected if c[0] != x]]
        else:
            continue
        (defs,) = run(m, sql)
        assert defs.new is not None, sql
        got: list[Any] = [(c["name"], c["type"]) for c in defs.new["columns"]]
        assert got == expected, sql
        assert defs.new["primary-key"] == (["id"] if "id" in names() else [])


def test_definitions_match_the_published_json_schema() -> None:
    schema = json.loads(
        (Path(__file__).parents[2] / "docs" / "schemas" / "ddl-message.json").read_text()
    )
    m = model()
    run(m, "CREATE TABLE t (id INT PRIMARY KEY, e ENUM('a'), at DATETIME(3), b BLOB, f FLOAT)")
    (defs,) = run(m, "ALTER TABLE t ADD COLUMN s VARCHAR(3)")
    message = {"type": "table-alter", "database": "shop", "table": "t", "old": defs.old,
               "def": defs.new, "ts": 0, "sql": "ALTER", "event_id": "f:4#0"}  # fmt: skip
    jsonschema.validate(message, schema)
    bad = {**message, "def": {**MAXWELL_E, "columns": [{"type": "int", "name": "id", "x": 1}]}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
