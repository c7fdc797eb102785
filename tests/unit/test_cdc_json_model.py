"""The JSON-column model follows DDL in stream order and travels with the checkpoint."""

from __future__ import annotations

import pytest

from cdc.decoding.json_columns import JsonSchemaModel, UnknownDdl
from cdc.replication.position import Checkpoint


def model(*tables: tuple[str, str, tuple[str, ...]]) -> JsonSchemaModel:
    return JsonSchemaModel(tuple(tables))


def after(m: JsonSchemaModel, *statements: str) -> dict[str, list[str]]:
    for sql in statements:
        m.apply_ddl(sql, "db", "binlog.000001:4")
    return {f"{db}.{t}": list(cols) for db, t, cols in m.state}


def test_create_table_with_json_types_and_checks() -> None:
    assert after(
        model(),
        "CREATE TABLE t (id INT PRIMARY KEY, a JSON NOT NULL, b LONGTEXT CHECK (json_valid(`b`)),"
        " c LONGTEXT, d TEXT, CONSTRAINT d_ok CHECK (json_valid(`d`)), KEY k (id),"
        " `weird``name` json DEFAULT NULL)",
    ) == {"db.t": ["a", "b", "d", "weird`name"]}


def test_modify_add_change_drop_rename_columns() -> None:
    m = model(("db", "t", ("a",)))
    assert after(m, "ALTER TABLE t MODIFY c JSON") == {"db.t": ["a", "c"]}
    assert after(m, "ALTER TABLE t MODIFY COLUMN a LONGTEXT") == {"db.t": ["c"]}
    assert after(m, "ALTER TABLE t ADD COLUMN e JSON AFTER c, ADD INDEX i (id)") == {
        "db.t": ["c", "e"]
    }
    assert after(m, "ALTER TABLE db.t CHANGE e f JSON, RENAME COLUMN c TO g") == {
        "db.t": ["f", "g"]
    }
    assert after(m, "ALTER TABLE t DROP COLUMN f, DROP INDEX i, ALGORITHM=INPLACE") == {
        "db.t": ["g"]
    }
    assert after(m, "ALTER TABLE t ADD CONSTRAINT h_json CHECK (json_valid(`h`))") == {
        "db.t": ["g", "h"]
    }


def test_drop_rename_like_and_drop_database() -> None:
    m = model(("db", "t", ("a",)), ("other", "x", ("j",)))
    assert after(m, "RENAME TABLE t TO u") == {"db.u": ["a"], "other.x": ["j"]}
    assert after(m, "CREATE TABLE v LIKE u") == {
        "db.u": ["a"],
        "db.v": ["a"],
        "other.x": ["j"],
    }
    assert after(m, "ALTER TABLE v RENAME TO w") == {
        "db.u": ["a"],
        "db.w": ["a"],
        "other.x": ["j"],
    }
    assert after(m, "DROP TABLE IF EXISTS u, w") == {"other.x": ["j"]}
    assert after(m, "DROP DATABASE other") == {}


def test_statements_that_are_not_ddl_change_nothing() -> None:
    m = model(("db", "t", ("a",)))
    assert after(m, "GRANT SELECT ON db.* TO x", "CREATE TEMPORARY TABLE tmp (j JSON)") == {
        "db.t": ["a"]
    }


def test_ddl_it_cannot_read_is_refused_without_a_server() -> None:
    with pytest.raises(UnknownDdl, match="no column list"):
        model().apply_ddl("CREATE TABLE t AS SELECT * FROM u", "db", "binlog.000001:4")


def test_checkpoint_document_carries_the_model() -> None:
    m = model(("db", "t", ("b", "a")))
    cp = Checkpoint("binlog.000001", 400, "0-1-5", 1, 1, "0-1-5#0", m.state)
    back = Checkpoint.from_json(cp.to_json())
    assert back == cp
    assert JsonSchemaModel(back.json_columns or ()).json_columns("db", "t") == {"a", "b"}
    plain = Checkpoint("binlog.000001", 400, None, 1, 1)
    assert b"json_columns" not in plain.to_json()
    assert Checkpoint.from_json(plain.to_json()).json_columns is None


class FakeServer:
    """A DB-API connection answering VERSION() and the CHECK constraint queries."""

    def __init__(self, version: str, checks: list[tuple[str, str, str]]) -> None:
        self.version = version
        self.checks = checks
        self.rows: list[tuple[str, ...]] = []

    def __call__(self) -> FakeServer:
        return self

    def cursor(self) -> FakeServer:
        return self

    def __enter__(self) -> FakeServer:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def close(self) -> None:
        return None

    def execute(self, sql: str, args: tuple[str, str] | None = None) -> None:
        if "VERSION()" in sql:
            self.rows = [(self.version,)]
        elif args is None:
            self.rows = list(self.checks)
        else:
            self.rows = [(c,) for db, t, c in self.checks if (db, t) == args]

    def fetchone(self) -> tuple[str, ...]:
        return self.rows[0]

    def fetchall(self) -> list[tuple[str, ...]]:
        return self.rows


def test_model_from_mariadb_and_fallback_for_unreadable_ddl() -> None:
    server = FakeServer(
        "10.11.6-MariaDB",
        [("db", "t", "json_valid(`a`)"), ("db", "t", "`n` > 0"), ("db", "s", "json_valid(`j`)")],
    )
    m = JsonSchemaModel.from_server(server)
    assert m.state == (("db", "s", ("j",)), ("db", "t", ("a",)))
    server.checks.append(("db", "copy", "json_valid(`j`)"))
    assert after(m, "CREATE TABLE copy AS SELECT * FROM s")["db.copy"] == ["j"]


def test_mysql_needs_no_model() -> None:
    m = JsonSchemaModel.from_server(FakeServer("8.0.36", [("db", "t", "json_valid(`a`)")]))
    assert m.state == ()
    assert after(m, "CREATE TABLE t2 AS SELECT 1") == {}
