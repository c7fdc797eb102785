"""CREATE TABLE ... SELECT with `output_ddl`: its `table-create` is published in its
place, before the rows it writes (Maxwell publishes the DDL event of every CREATE
TABLE; the server logs this one inside the transaction of its rows)."""

from __future__ import annotations

import json

from cdc.filtering import Filter
from cdc.formatter import FormatterOptions, MaxwellFormatter
from cdc.partitioner import Partitioner
from cdc.publisher import Publisher
from cdc.replication.position import Checkpoint
from cdc.replication.transaction import RowChange, Statement, Transaction
from cdc.rows import RowImage, TxnContext
from cdc.schema import ColumnDef, ColumnType, TableDef
from shardctl.core.event_ids import order_key

TABLE = TableDef(3, "shop", "copy", (ColumnDef("id", ColumnType.LONG),), ("id",))
CTX = TxnContext(server_id=1, thread_id=4, gtid="0-1-5", file="b.000001", pos=100, ts=1, xid=12)
SQL = "CREATE TABLE `copy` (`id` int(11) NOT NULL, PRIMARY KEY (`id`))"


def _publish(output_ddl: bool) -> list[dict[str, object]]:
    publisher = Publisher(
        MaxwellFormatter(FormatterOptions(output_ddl=output_ddl)), Partitioner(4), Filter(None)
    )
    txn = Transaction(
        ctx=CTX,
        end=Checkpoint("b.000001", 300, "0-1-5", 1, 1),
        changes=[RowChange(TABLE, RowImage("insert", {"id": i})) for i in (1, 2)],
        statement=Statement("shop", SQL),
    )
    return [json.loads(m.value) for m in publisher.messages(txn)]


def test_table_create_comes_before_its_rows() -> None:
    docs = _publish(output_ddl=True)
    assert [d["type"] for d in docs] == ["table-create", "insert", "insert"]
    assert docs[0]["table"] == "copy" and docs[0]["sql"] == SQL
    assert [d["data"] for d in docs[1:]] == [{"id": 1}, {"id": 2}]
    ids = [str(d["event_id"]) for d in docs]
    assert len(set(ids)) == 3
    # Event ids follow the stream order: the DDL, then the rows.
    keys = [order_key(i) for i in ids]
    places = [k[1] for k in keys if k is not None]
    assert len(places) == 3 and places == sorted(places)
    assert ids[0] == "0-1-5#0"


def test_rows_are_published_without_output_ddl() -> None:
    docs = _publish(output_ddl=False)
    assert [d["type"] for d in docs] == ["insert", "insert"]
    # The ids do not depend on output_ddl: the same change has the same id.
    assert [d["event_id"] for d in docs] == ["0-1-5#1", "0-1-5#2"]
