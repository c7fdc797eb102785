"""`output_row_query`: the `query` field of row messages, the statement carried from
the ANNOTATE_ROWS / ROWS_QUERY event to the rows after it, and the dump request
flag that makes MariaDB send ANNOTATE_ROWS events."""

from __future__ import annotations

import json
import struct
from types import SimpleNamespace
from typing import Any

from pymysql.constants.COMMAND import COM_BINLOG_DUMP, COM_QUERY

from cdc.formatter import FormatterOptions, MaxwellFormatter
from cdc.replication.source import BINLOG_SEND_ANNOTATE_ROWS_EVENT, AnnotateRowsConnection
from cdc.replication.transaction import RowChange, SpilledRows, TransactionAssembler
from cdc.rows import RowImage, TxnContext
from cdc.schema import ColumnDef, ColumnType, TableDef

TABLE = TableDef(1, "shop", "t", (ColumnDef("id", ColumnType.LONG),), ("id",))
CTX = TxnContext(server_id=1, thread_id=2, gtid=None, file="b.000001", pos=4, ts=5, xid=6)
ROW = RowImage("insert", {"id": 7})
SQL = 'insert into t set id = 7 /* "quoted" */'


def test_query_follows_table_as_in_maxwells_row_map() -> None:
    # Maxwell's RowMap.toJSON: database, table, query, type, ...
    fmt = MaxwellFormatter(FormatterOptions(output_row_query=True))
    doc = json.loads(fmt.format(CTX, TABLE, ROW, 0, True, SQL).value)
    assert list(doc)[:4] == ["database", "table", "query", "type"]
    assert doc["query"] == SQL
    # No statement logged for the row: no field.
    assert "query" not in json.loads(fmt.format(CTX, TABLE, ROW, 0, True, None).value)
    # Off (the default): no field even with a statement.
    plain = MaxwellFormatter(FormatterOptions()).format(CTX, TABLE, ROW, 0, True, SQL)
    assert "query" not in json.loads(plain.value)


class _Decoding:
    def on_table_map(self, event: Any, where: str) -> None: ...

    def on_rotate(self, next_file: str) -> None: ...

    def decode_rows(self, event: Any, where: str) -> list[RowChange]:
        return [RowChange(TABLE, RowImage("insert", {"id": i})) for i in event.ids]


def _event(pos: int, **attrs: Any) -> Any:
    packet = SimpleNamespace(log_pos=pos, event_size=10, server_id=1)
    return SimpleNamespace(packet=packet, timestamp=5, flags=0, **attrs)


def test_each_statement_goes_with_the_rows_after_it_and_through_a_spill() -> None:
    # memory_rows=1: the second and third rows are spilled and read back.
    asm = TransactionAssembler(_Decoding(), None, "b.000001", memory_rows=1)
    asm.gtid(_event(20), "0-1-1", 0, begun=True)
    asm.row_query(_event(30), "first")
    asm.rows(_event(40, ids=[1, 2]))
    asm.row_query(_event(50), "second")
    asm.rows(_event(60, ids=[3]))
    txn = asm.xid(_event(70, xid=9))
    assert txn.spilled is not None
    assert [(c.row.data["id"], c.query) for c in txn.rows()] == [
        (1, "first"),
        (2, "first"),
        (3, "second"),
    ]


def test_spilled_rows_keep_their_statement() -> None:
    spilled = SpilledRows()
    spilled.append(RowChange(TABLE, ROW, "q"))
    spilled.append(RowChange(TABLE, ROW))
    assert [c.query for c in spilled] == ["q", None]
    spilled.close()


class _Socket:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.sent.append(bytes(data))

    def settimeout(self, timeout: float | None) -> None:
        pass


def _written(packet: bytes) -> bytes:
    conn = AnnotateRowsConnection(defer_connect=True)
    sock = _Socket()
    conn._sock = sock  # type: ignore[assignment]
    conn._current_timeout = None  # set by connect(), which a deferred connection skips
    conn._write_bytes(packet)
    return sock.sent[0]


def test_dump_request_asks_for_annotate_rows_events() -> None:
    # COM_BINLOG_DUMP: int<4> position, int<2> flags, int<4> server_id, file name.
    name = b"mariadb-bin.000001"
    body = bytes([COM_BINLOG_DUMP]) + struct.pack("<IHI", 1234, 0, 99) + name
    packet = struct.pack("<i", len(body)) + body
    sent = _written(packet)
    position, flags, server_id = struct.unpack("<IHI", sent[5:15])
    assert (position, server_id, sent[15:]) == (1234, 99, name)
    assert flags == BINLOG_SEND_ANNOTATE_ROWS_EVENT
    # Other commands go out unchanged.
    query = struct.pack("<i", 20) + bytes([COM_QUERY]) + b"x" * 19
    assert _written(query) == query
