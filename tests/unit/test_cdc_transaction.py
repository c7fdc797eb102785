"""Transaction assembly: boundaries, DDL statements, and replays detected."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest

from cdc.replication.errors import SourceError, TransactionOrderError
from cdc.replication.position import MariadbGtidState
from cdc.replication.transaction import RowChange, TransactionAssembler
from cdc.rows import RowImage


class Rows:
    """Decoding that turns each rows event's `ids` into row images."""

    def __init__(self) -> None:
        self.rotations: list[str] = []

    def on_table_map(self, event: Any, where: str) -> None:
        return None

    def on_rotate(self, next_file: str) -> None:
        self.rotations.append(next_file)

    def decode_rows(self, event: Any, where: str) -> Sequence[RowChange]:
        return [RowChange("t", RowImage("insert", {"id": i})) for i in event.ids]


def ev(end: int, size: int = 10, **fields: Any) -> Any:
    packet = SimpleNamespace(log_pos=end, event_size=size, server_id=1)
    return SimpleNamespace(packet=packet, timestamp=100, **fields)


def query(end: int, sql: str, schema: bytes = b"db") -> Any:
    return ev(end, query=sql, schema=schema, slave_proxy_id=9)


def test_mariadb_row_transaction_ends_at_xid_with_the_state_after_it() -> None:
    state = MariadbGtidState("0-1-4")
    asm = TransactionAssembler(Rows(), state, "binlog.000002")
    asm.gtid(ev(110), "0-1-5", flags=0, begun=True)
    asm.rows(ev(150, ids=[1, 2]))
    asm.rows(ev(190, ids=[3]))
    txn = asm.xid(ev(220, xid=77))
    assert [c.row.data["id"] for c in txn.changes] == [1, 2, 3]
    assert (txn.ctx.file, txn.ctx.pos, txn.ctx.gtid, txn.ctx.xid) == (
        "binlog.000002",
        100,
        "0-1-5",
        77,
    )
    assert (txn.end.file, txn.end.pos, txn.end.gtid) == ("binlog.000002", 220, "0-1-5")
    assert not asm.in_transaction


def test_mysql_begin_commit_and_standalone_ddl() -> None:
    asm = TransactionAssembler(Rows(), None, "b.000001")
    assert asm.query(query(120, "BEGIN")) is None
    asm.rows(ev(160, ids=[1]))
    txn = asm.query(query(200, "COMMIT"))
    assert txn is not None and txn.ctx.xid is None and txn.ctx.thread_id == 9
    ddl = asm.query(query(300, "ALTER TABLE t ADD c INT"))
    assert ddl is not None and ddl.statement is not None
    assert (ddl.statement.database, ddl.end.pos, ddl.ctx.pos) == ("db", 300, 290)


def test_standalone_mariadb_gtid_makes_the_next_query_a_statement() -> None:
    asm = TransactionAssembler(Rows(), MariadbGtidState(), "b.000001")
    asm.gtid(ev(110), "0-1-9", flags=1, begun=True)  # FL_STANDALONE
    txn = asm.query(query(200, "CREATE TABLE x (id INT)"))
    assert txn is not None and txn.statement is not None and txn.end.gtid == "0-1-9"


@pytest.mark.parametrize(
    "interrupt",
    [
        lambda asm: asm.rotate("b.000001"),
        lambda asm: asm.format_description(ev(0)),
        lambda asm: asm.gtid(ev(400), "0-1-5", flags=0, begun=True),
        lambda asm: asm.query(query(400, "BEGIN")),
    ],
)
def test_reconnect_or_replay_inside_a_transaction_is_detected(interrupt: Any) -> None:
    asm = TransactionAssembler(Rows(), MariadbGtidState(), "b.000001")
    asm.gtid(ev(110), "0-1-5", flags=0, begun=True)
    asm.rows(ev(150, ids=[1]))
    with pytest.raises(TransactionOrderError, match=r"b\.000001:100"):
        interrupt(asm)


def test_rows_outside_a_transaction_are_an_error() -> None:
    asm = TransactionAssembler(Rows(), None, "b.000001")
    with pytest.raises(TransactionOrderError, match="outside a transaction"):
        asm.rows(ev(150, ids=[1]))


def test_rotation_between_transactions_switches_file() -> None:
    rows = Rows()
    asm = TransactionAssembler(rows, None, "b.000001")
    asm.rotate("b.000002")
    assert asm.file == "b.000002" and rows.rotations == ["b.000002"]


# --- CREATE TABLE ... SELECT: the schema change comes with its rows ---------------


def test_mariadb_create_select_keeps_its_create_with_the_rows() -> None:
    # MariaDB logs CREATE TABLE ... SELECT as GTID (not standalone), the CREATE
    # query, the rows, then the XID (or a COMMIT query): one transaction.
    asm = TransactionAssembler(Rows(), MariadbGtidState("0-1-4"), "b.000001")
    asm.gtid(ev(110), "0-1-5", flags=0, begun=True)
    assert asm.query(query(200, "CREATE TABLE `copy` (`id` int(11) NOT NULL)")) is None
    asm.rows(ev(260, ids=[1, 2]))
    txn = asm.xid(ev(300, xid=12))
    assert txn.statement is not None
    assert txn.statement.sql.startswith("CREATE TABLE `copy`")
    assert [c.row.data["id"] for c in txn.changes] == [1, 2]
    assert txn.ctx.xid == 12 and txn.end.pos == 300


def test_mysql_atomic_create_select_starts_the_transaction() -> None:
    # MySQL 8.0.21+: `CREATE TABLE ... START TRANSACTION`, rows, XID, with no BEGIN.
    asm = TransactionAssembler(Rows(), None, "b.000001")
    sql = "CREATE TABLE `copy` (`id` int NOT NULL) START TRANSACTION"
    assert asm.query(query(200, sql)) is None
    asm.rows(ev(260, ids=[7]))
    txn = asm.xid(ev(300, xid=3))
    assert txn.statement is not None and txn.statement.sql == sql
    assert [c.row.data["id"] for c in txn.changes] == [7]


def test_other_statements_inside_a_transaction_are_not_kept() -> None:
    asm = TransactionAssembler(Rows(), None, "b.000001")
    asm.query(query(120, "BEGIN"))
    assert asm.query(query(150, "SAVEPOINT a")) is None
    asm.rows(ev(160, ids=[1]))
    txn = asm.query(query(200, "COMMIT"))
    assert txn is not None and txn.statement is None


def test_a_schema_change_after_rows_stops_the_reader() -> None:
    asm = TransactionAssembler(Rows(), None, "b.000001")
    asm.query(query(120, "BEGIN"))
    asm.rows(ev(160, ids=[1]))
    with pytest.raises(SourceError, match=r"b\.000001:190 .* cannot place it"):
        asm.query(query(200, "CREATE TABLE z (id INT)"))
