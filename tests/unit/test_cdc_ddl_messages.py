"""DDL messages built as Maxwell builds them. The expected documents follow
Maxwell's DDLMap.toJSON (the resolved change's fields, then `ts`, `sql`, then
`position` only with output_binlog_position) and its resolved changes:
ResolvedDatabaseCreate/Alter carry `database` and `charset`,
ResolvedDatabaseDrop only `database`, and a RENAME is a ResolvedTableAlter
whose `database`/`table` are the renamed table's, the new name in `def`."""

from __future__ import annotations

import json

import pytest

from cdc.ddl import classify
from cdc.filtering import Filter
from cdc.formatter import FormatterOptions, MaxwellFormatter
from cdc.partitioner import Partitioner
from cdc.publisher import Publisher
from cdc.replication.position import Checkpoint
from cdc.replication.transaction import Statement, Transaction
from cdc.rows import TxnContext

CTX = TxnContext(server_id=1, thread_id=4, gtid=None, file="b.000001", pos=100, ts=7, xid=12)


def _publish(
    sql: str,
    options: FormatterOptions | None = None,
    row_filter: str | None = None,
    server_charset: str | None = "utf8mb4",
) -> list[dict[str, object]]:
    publisher = Publisher(
        MaxwellFormatter(options or FormatterOptions(output_ddl=True)),
        Partitioner(4),
        Filter(row_filter),
        server_charset=server_charset,
    )
    txn = Transaction(
        ctx=CTX, end=Checkpoint("b.000001", 300, None, 1, 1), changes=[],
        statement=Statement("cur", sql),
    )  # fmt: skip
    return [json.loads(m.value) for m in publisher.messages(txn)]


def _expected(**fields: object) -> dict[str, object]:
    return {**fields, "ts": 7000, "event_id": "b.000001:100#0"}


@pytest.mark.parametrize(
    ("sql", "charset"),
    [
        ("CREATE DATABASE shop CHARACTER SET latin1", "latin1"),
        ("create schema if not exists `shop` default charset = 'utf8mb4'", "utf8mb4"),
        ("CREATE DATABASE shop COLLATE cp1251_general_ci", "cp1251"),
        # Names none: the server's charset, as Maxwell's DatabaseCreate.resolve.
        ("CREATE DATABASE shop", "utf8mb4"),
    ],
)
def test_database_create_carries_charset_and_no_table(sql: str, charset: str) -> None:
    assert _publish(sql) == [
        _expected(type="database-create", database="shop", charset=charset, sql=sql)
    ]


def test_database_alter_and_drop() -> None:
    alter = "ALTER DATABASE shop CHARACTER SET = latin1"
    assert _publish(alter) == [
        _expected(type="database-alter", database="shop", charset="latin1", sql=alter)
    ]
    assert _publish("DROP DATABASE shop") == [
        _expected(type="database-drop", database="shop", sql="DROP DATABASE shop")
    ]


def test_rename_names_the_old_table_and_the_new_name_is_in_def() -> None:
    sql = "RENAME TABLE a TO b, x.y TO z.w"
    first = _expected(type="table-alter", database="cur", table="a", sql=sql)
    second = _expected(type="table-alter", database="x", table="y", sql=sql)
    first["def"] = {"database": "cur", "table": "b"}
    second["def"] = {"database": "z", "table": "w"}
    second["event_id"] = "b.000001:100#1"
    assert _publish(sql) == [first, second]


def test_position_only_with_output_binlog_position() -> None:
    sql = "ALTER TABLE t ADD COLUMN c INT"
    assert "position" not in _publish(sql)[0]
    with_position = FormatterOptions(output_ddl=True, output_binlog_position=True)
    doc = _publish(sql, with_position)[0]
    assert doc == _expected(
        type="table-alter", database="cur", table="t", sql=sql, position="b.000001:100"
    )
    assert list(doc) == ["type", "database", "table", "ts", "sql", "position", "event_id"]


def test_the_filter_sees_the_names_the_message_carries() -> None:
    # Maxwell filters a RENAME on the table renamed (ResolvedSchemaChange.shouldOutput).
    only_keep = "exclude: *.*, include: keep.*"
    assert len(_publish("RENAME TABLE keep.a TO other.b", row_filter=only_keep)) == 1
    assert _publish("RENAME TABLE other.b TO keep.a", row_filter=only_keep) == []


def test_classify_reads_the_database_charset() -> None:
    assert [c.charset for c in classify("CREATE DATABASE d COLLATE binary", "cur")] == ["binary"]
    assert [c.charset for c in classify("CREATE DATABASE d", "cur")] == [None]
    assert [c.charset for c in classify("DROP DATABASE d", "cur")] == [None]
