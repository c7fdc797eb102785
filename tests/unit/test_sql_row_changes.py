"""The SQL sinks' batch writes: folding per primary key ends in the state that
applying every change in turn would, and the multi-row statements say so in each
dialect (MariaDB's VALUES(), MySQL 8's row alias, PostgreSQL's EXCLUDED)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.sinks.postgres import PostgresDialect, numbered
from workers.sinks.row_changes import MAX_STATEMENT_BYTES, RowChanges, chunks
from workers.sinks.sql import MariaDBDialect, uses_row_alias
from workers.sinks.sql_common import Dialect

COLUMNS = ("a", "b", "c")
Row = dict[str, Any]
Tables = dict[str, dict[tuple[Any, ...], Row]]


class RecordingDialect(Dialect):
    """Statements as JSON, so a model database can run them; small chunks."""

    rows_per_statement = 3
    max_parameters = 8

    def quote(self, name: str) -> str:
        return name

    def upsert(
        self,
        table: str,
        columns: Sequence[str],
        keys: Sequence[str],
        updates: Sequence[str],
        greatest: Sequence[str] = (),
        rows: int = 1,
    ) -> str:
        return json.dumps(["upsert", table, list(columns), list(keys), list(updates), rows])

    def delete(self, table: str, keys: Sequence[str], rows: int = 1) -> str:
        return json.dumps(["delete", table, list(keys), rows])


def run_statements(changes: RowChanges, tables: Tables) -> int:
    """Execute `changes` on the model `tables` like a database would; the statements run."""
    count = 0
    for sql, params in changes.statements(RecordingDialect()):
        count += 1
        op = json.loads(sql)
        if op[0] == "delete":
            _, table, keys, rows = op
            assert len(params) == rows * len(keys)
            assert rows <= RecordingDialect.rows_per_statement
            for n in range(rows):
                tables.setdefault(table, {}).pop(
                    tuple(params[n * len(keys) : (n + 1) * len(keys)]), None
                )
        else:
            _, table, columns, keys, updates, rows = op
            width = len(columns)
            assert len(params) == rows * width
            assert rows <= max(1, RecordingDialect.max_parameters // width)
            for n in range(rows):
                image = dict(zip(columns, params[n * width : (n + 1) * width], strict=True))
                key = tuple(image[k] for k in keys)
                stored = tables.setdefault(table, {}).get(key)
                if stored is None:
                    tables[table][key] = {c: None for c in COLUMNS} | {"id": key[0]} | image
                else:
                    stored.update({c: image[c] for c in updates})
    return count


def apply_in_turn(ops: list[tuple[str, str, int, Row]], tables: Tables) -> None:
    for kind, table, key, image in ops:
        rows = tables.setdefault(table, {})
        if kind == "delete":
            rows.pop((key,), None)
        elif (key,) in rows:
            rows[(key,)].update(image)
        else:
            rows[(key,)] = {c: None for c in COLUMNS} | {"id": key} | image


operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("upsert"),
            st.sampled_from(["t1", "t2"]),
            st.integers(0, 3),
            st.dictionaries(st.sampled_from(COLUMNS), st.integers(0, 9), max_size=3),
        ),
        st.tuples(
            st.just("delete"),
            st.sampled_from(["t1", "t2"]),
            st.integers(0, 3),
            st.just({}),
        ),
    ),
    max_size=30,
)

starting_rows = st.dictionaries(
    st.integers(0, 3), st.fixed_dictionaries({c: st.integers(0, 9) for c in COLUMNS}), max_size=4
)


def _record(ops: list[tuple[str, str, int, Row]], fold: bool) -> RowChanges:
    changes = RowChanges(fold=fold)
    for kind, table, key, image in ops:
        if kind == "delete":
            changes.delete(table, ["id"], [key])
        else:
            changes.upsert(table, ["id"], {"id": key, **image})
    return changes


@given(operations, starting_rows, st.booleans())
def test_the_batch_writes_end_as_every_change_applied_in_turn(
    ops: list[tuple[str, str, int, Row]], start: dict[int, Row], fold: bool
) -> None:
    def tables() -> Tables:
        return {"t1": {(k,): {"id": k, **row} for k, row in start.items()}, "t2": {}}

    expected = tables()
    apply_in_turn(ops, expected)
    got = tables()
    run_statements(_record(ops, fold), got)
    assert got == expected


@given(operations)
def test_folding_writes_each_row_at_most_twice_and_unfolded_once_per_change(
    ops: list[tuple[str, str, int, Row]],
) -> None:
    folded = _record(ops, fold=True)
    rows = {(table, key) for _kind, table, key, _image in ops}
    assert folded.writes() <= 2 * len(rows)
    assert _record(ops, fold=False).writes() == len(ops)


def test_several_changes_to_one_key_fold_into_a_delete_then_the_last_image() -> None:
    changes = RowChanges()
    changes.upsert("t", ["id"], {"id": 1, "a": 1, "b": 1})
    changes.delete("t", ["id"], [1])
    changes.upsert("t", ["id"], {"id": 1, "a": 2})
    changes.upsert("t", ["id"], {"id": 1, "b": 3})
    changes.upsert("t", ["id"], {"id": 2, "a": 5})
    assert list(changes.statements(RecordingDialect())) == [
        (json.dumps(["delete", "t", ["id"], 1]), [1]),
        (json.dumps(["upsert", "t", ["id", "a", "b"], ["id"], ["a", "b"], 1]), [1, 2, 3]),
        (json.dumps(["upsert", "t", ["id", "a"], ["id"], ["a"], 1]), [2, 5]),
    ]


def test_statements_are_cut_by_rows_parameters_and_size() -> None:
    dialect = RecordingDialect()
    assert [len(c) for c in chunks([(n,) for n in range(7)], dialect)] == [3, 3, 1]
    assert [len(c) for c in chunks([(n, n, n) for n in range(5)], dialect)] == [2, 2, 1]
    big = "x" * (MAX_STATEMENT_BYTES // 2 + 1)
    assert [len(c) for c in chunks([(big,), (big,), ("y",)], dialect)] == [1, 2]
    assert list(chunks([], dialect)) == []


def test_mariadb_writes_many_rows_with_values() -> None:
    sql = MariaDBDialect().upsert("`s`.`t`", ["id", "name"], ["id"], ["name"], rows=2)
    assert sql == (
        "INSERT INTO `s`.`t` (`id`, `name`) VALUES (%s, %s), (%s, %s) "
        "ON DUPLICATE KEY UPDATE `name` = VALUES(`name`)"
    )


def test_mysql_8_upserts_with_the_row_alias() -> None:
    """MySQL 8.0.19+: INSERT ... VALUES (...) AS alias ON DUPLICATE KEY UPDATE
    c = alias.c (the MySQL reference manual, INSERT ... ON DUPLICATE KEY UPDATE)."""
    mysql8 = MariaDBDialect(row_alias=True)
    assert mysql8.upsert("`s`.`t`", ["id", "name"], ["id"], ["name"], rows=2) == (
        "INSERT INTO `s`.`t` (`id`, `name`) VALUES (%s, %s), (%s, %s) AS `_new` "
        "ON DUPLICATE KEY UPDATE `name` = `_new`.`name`"
    )
    fence = mysql8.upsert(
        "shardctl_fences", ("scope", "shard", "token"), ("scope", "shard"), (), ("token",)
    )
    assert fence == (
        "INSERT INTO shardctl_fences (`scope`, `shard`, `token`) VALUES (%s, %s, %s) AS `_new` "
        "ON DUPLICATE KEY UPDATE `token` = GREATEST(`token`, `_new`.`token`)"
    )


@pytest.mark.parametrize(
    ("version", "alias"),
    [
        ("10.11.6-MariaDB-0+deb12u1", False),
        ("11.4.2-MariaDB", False),
        ("5.5.5-10.6.12-MariaDB", False),  # MariaDB's old replication-compatible prefix
        ("8.0.18", False),
        ("8.0.19", True),
        ("8.0.36-0ubuntu0.22.04.1", True),
        ("8.4.0", True),
        ("9.1.0", True),
        ("5.7.44-log", False),
        ("unknown", False),
    ],
)
def test_the_row_alias_is_used_from_mysql_8_0_19_never_on_mariadb(
    version: str, alias: bool
) -> None:
    assert uses_row_alias(version) is alias


def test_a_postgres_batch_upserts_many_rows_on_the_primary_key() -> None:
    sql = PostgresDialect().upsert('"s"."t"', ["id", "name"], ["id"], ["name"], rows=2)
    assert sql == (
        'INSERT INTO "s"."t" ("id", "name") VALUES (%s, %s), (%s, %s) '
        'ON CONFLICT ("id") DO UPDATE SET "name" = EXCLUDED."name"'
    )


def test_deletes_name_the_primary_key_in_one_statement() -> None:
    assert MariaDBDialect().delete("`t`", ["id"], rows=3) == (
        "DELETE FROM `t` WHERE `id` IN (%s, %s, %s)"
    )
    assert PostgresDialect().delete('"t"', ["a", "b"], rows=2) == (
        'DELETE FROM "t" WHERE ("a", "b") IN ((%s, %s), (%s, %s))'
    )


def test_postgres_statements_run_with_numbered_placeholders() -> None:
    sql = PostgresDialect().upsert('"t"', ["id", "name"], ["id"], ["name"], rows=2)
    assert numbered(sql) == (
        'INSERT INTO "t" ("id", "name") VALUES ($1, $2), ($3, $4) '
        'ON CONFLICT ("id") DO UPDATE SET "name" = EXCLUDED."name"'
    )
    assert numbered('DELETE FROM "t" WHERE "id" IN (%s)') == 'DELETE FROM "t" WHERE "id" IN ($1)'
