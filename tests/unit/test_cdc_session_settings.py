"""Changes written under a session binlog setting without full rows stop the stream,
naming the setting, the transaction's position and the recovery commands."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from pymysql.protocol import MysqlPacket
from pymysqlreplication.packet import BinLogPacketWrapper
from pymysqlreplication.row_event import PartialUpdateRowsEvent

from cdc.decoding import BinlogDecoder
from cdc.filtering import Filter
from cdc.replication.decoding import FilteredDecoding
from cdc.replication.errors import ServerSettingError, SessionSettingError
from cdc.replication.server_check import check_server
from cdc.replication.source import _EVENTS
from cdc.replication.transaction import (
    RowChange,
    TransactionAssembler,
    dml_statement,
    dml_table,
)
from cdc.rows import RowImage

FILE = "binlog.000002"


class AllRows:
    """Decoding that checks images like the reader's and returns one row per event."""

    def on_table_map(self, event: Any, where: str) -> None:
        return None

    def on_rotate(self, next_file: str) -> None:
        return None

    def decode_rows(self, event: Any, where: str) -> Sequence[RowChange]:
        from cdc.replication.decoding import check_full_image

        check_full_image(event)
        return [RowChange("t", RowImage("insert", {"id": 1}))]


def ev(end: int, size: int = 10, **fields: Any) -> Any:
    packet = SimpleNamespace(log_pos=end, event_size=size, server_id=1)
    return SimpleNamespace(packet=packet, timestamp=100, **fields)


def query(end: int, sql: str, schema: bytes = b"db") -> Any:
    return ev(end, query=sql, schema=schema, slave_proxy_id=9)


def rows(end: int, bitmap: bytes, after: bytes | None = None, columns: int = 3) -> Any:
    fields: dict[str, Any] = {
        "schema": "db",
        "table": "t",
        "event_type": 31 if after is not None else 30,
        "number_of_columns": columns,
        "columns_present_bitmap": bitmap,
    }
    if after is not None:
        fields["columns_present_bitmap2"] = after
    return ev(end, **fields)


def opened(asm: TransactionAssembler) -> None:
    asm.gtid(ev(110), "0-1-5", flags=0, begun=True)  # the transaction starts at 100


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO t VALUES (1)",
        "  /* app */ update `db`.`t` set v = 1",
        "DELETE FROM t WHERE id = 1",
        "REPLACE INTO t VALUES (1)",
    ],
)
def test_dml_as_a_statement_inside_a_transaction_stops_naming_binlog_format(sql: str) -> None:
    asm = TransactionAssembler(AllRows(), None, FILE, source="main")
    opened(asm)
    with pytest.raises(SessionSettingError) as caught:
        asm.query(query(150, sql))
    message = str(caught.value)
    assert caught.value.setting == "binlog_format"
    assert caught.value.position == f"{FILE}:100"
    assert f"position={FILE}:100 gtid=0-1-5 " in message
    assert f"shardctl cdc checkpoint skip --source main --position {FILE}:100" in message
    assert "shardctl cdc bootstrap db.t --source main" in message
    assert f"at {FILE}:140" in message  # the offending event itself


def test_dml_as_a_standalone_statement_stops_too() -> None:
    asm = TransactionAssembler(AllRows(), None, FILE, source="main")
    with pytest.raises(SessionSettingError, match=r"position=binlog\.000002:140 gtid=none"):
        asm.query(query(150, "INSERT INTO other.t2 VALUES (1)"))


def test_savepoint_and_ddl_are_not_taken_for_dml() -> None:
    asm = TransactionAssembler(AllRows(), None, FILE, source="main")
    opened(asm)
    assert asm.query(query(150, "SAVEPOINT s1")) is None
    txn = asm.xid(ev(200, xid=1))
    assert txn.end.pos == 200
    ddl = asm.query(query(300, "ALTER TABLE t ADD COLUMN inserted INT"))
    assert ddl is not None and ddl.statement is not None


@pytest.mark.parametrize(
    ("bitmap", "after"),
    [
        (b"\x01", None),  # MINIMAL insert/delete: only the key
        (b"\x07", b"\x03"),  # NOBLOB/MINIMAL update: after image without a column
        (b"\x01", b"\x07"),  # MINIMAL update: before image is only the key
    ],
)
def test_rows_event_without_every_column_stops_naming_binlog_row_image(
    bitmap: bytes, after: bytes | None
) -> None:
    asm = TransactionAssembler(AllRows(), None, FILE, source="main")
    opened(asm)
    with pytest.raises(SessionSettingError) as caught:
        asm.rows(rows(150, bitmap, after))
    assert caught.value.setting == "binlog_row_image"
    assert caught.value.table == "db.t"
    assert f"position={FILE}:100 " in str(caught.value)


def test_full_image_passes() -> None:
    asm = TransactionAssembler(AllRows(), None, FILE, source="main")
    opened(asm)
    asm.rows(rows(150, b"\x07", b"\x07"))
    asm.rows(rows(180, b"\xff\x01", columns=9))
    assert len(asm.xid(ev(200, xid=1)).changes) == 2


def test_a_handler_collects_instead_and_the_transaction_still_ends() -> None:
    found: list[SessionSettingError] = []
    asm = TransactionAssembler(
        AllRows(), None, FILE, source="main", on_session_setting=found.append
    )
    opened(asm)
    assert asm.query(query(150, "INSERT INTO t VALUES (1)")) is None
    asm.rows(rows(170, b"\x01"))
    txn = asm.xid(ev(200, xid=1))
    assert txn.changes == [] and txn.end.pos == 200
    assert [f.setting for f in found] == ["binlog_format", "binlog_row_image"]


def test_dml_table_names() -> None:
    assert dml_table("INSERT IGNORE INTO `my db`.`t``x` VALUES (1)", "d") == "my db.t`x"
    assert dml_table("UPDATE LOW_PRIORITY t SET a = 1", "d") == "d.t"
    assert dml_table("DELETE QUICK FROM s . t WHERE 1", "d") == "s.t"
    assert dml_table("WITH x AS (SELECT 1) UPDATE t SET a = 1", "d") == "<database>.<table>"
    assert dml_statement("-- note\nINSERT INTO t VALUES (1)") == "INSERT INTO t VALUES (1)"
    assert dml_statement("CREATE TABLE t (insert_at INT)") is None


def _partial_update_rows_event() -> Any:
    """A PARTIAL_UPDATE_ROWS_EVENT (type 39) laid out as MySQL documents it
    (libbinlogevents rows_event.h), parsed by the replication library."""
    table_id = 108
    # Post-header: table id (6), flags (2), extra data length (2, itself only).
    post = table_id.to_bytes(6, "little") + struct.pack("<HH", 1, 2)
    # Body: column count, before-image bitmap, after-image bitmap (id INT, doc JSON).
    body = bytes([2]) + b"\x03" + b"\x03"
    doc = b"\x04\x01"  # binary JSON literal true
    # Before image: null bitmap, id, doc (4-byte length + binary JSON).
    body += b"\x00" + struct.pack("<i", 1) + struct.pack("<I", len(doc)) + doc
    # After image: value_options = PARTIAL_JSON_UPDATES (1), partial bits (doc is a
    # diff), null bitmap, id, doc as a diff: REPLACE '$' with the new value.
    path = b"$"
    diff = b"\x00" + bytes([len(path)]) + path + bytes([len(doc)]) + doc
    body += b"\x01" + b"\x01" + b"\x00" + struct.pack("<i", 1) + struct.pack("<I", len(diff))
    body += diff
    size = 19 + len(post) + len(body)
    header = struct.pack("<IBIIIH", 1_700_000_000, 39, 1, size, 1000 + size, 0)
    table_map = {
        table_id: SimpleNamespace(data={"primary_key": ["id"]}, schema="db", table="j", columns=[])
    }
    wrapper = BinLogPacketWrapper(
        MysqlPacket(b"\x00" + header + post + body, "utf8"),
        table_map,
        SimpleNamespace(charset="utf8", _get_dbms=lambda: "mysql"),
        (8, 0, 36),
        False,
        frozenset(_EVENTS),
        None,
        None,
        None,
        None,
        False,
        False,
        False,
        False,
        False,
    )
    return wrapper.event


def test_partial_json_update_event_reaches_the_reader_and_stops_it() -> None:
    event = _partial_update_rows_event()
    # Listed in the source's events, so the library hands it over instead of dropping it.
    assert isinstance(event, PartialUpdateRowsEvent)
    asm = TransactionAssembler(
        FilteredDecoding(BinlogDecoder(), Filter(None)), None, FILE, source="main"
    )
    opened(asm)
    with pytest.raises(SessionSettingError) as caught:
        asm.rows(event)
    assert caught.value.setting == "binlog_row_value_options"
    assert caught.value.table == "db.j"
    assert f"position={FILE}:100 " in str(caught.value)
    assert f"--position {FILE}:100" in str(caught.value)


class Variables:
    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.rows: list[tuple[str, str]] = []

    def cursor(self) -> Variables:
        return self

    def __enter__(self) -> Variables:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def execute(self, sql: str, names: list[str]) -> None:
        self.rows = [(n, self.values[n]) for n in names if n in self.values]

    def __iter__(self) -> Any:
        return iter(self.rows)


MYSQL_OK = {
    "log_bin": "ON",
    "binlog_format": "ROW",
    "binlog_row_image": "FULL",
    "binlog_row_metadata": "FULL",
    "server_id": "1",
    "version": "8.0.36",
    "gtid_mode": "ON",
    "binlog_transaction_compression": "OFF",
    "binlog_row_value_options": "",
}


def test_partial_json_is_refused_at_start() -> None:
    assert check_server(Variables(MYSQL_OK), 99).flavor == "mysql"
    bad = {**MYSQL_OK, "binlog_row_value_options": "PARTIAL_JSON"}
    with pytest.raises(ServerSettingError, match="binlog_row_value_options"):
        check_server(Variables(bad), 99)
