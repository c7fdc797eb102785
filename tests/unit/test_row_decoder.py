"""RowDecoder on whole rows-event bodies: updates, deletes, partial images, errors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from cdc.decoding import DecodeError, RowDecoder
from cdc.decoding.row_decoder import resolve_where
from cdc.schema import ColumnDef, ColumnType, TableDef
from tests.unit.binlog_encoding import all_present, encode_row

T = ColumnType
COLUMNS = (
    ColumnDef("id", T.LONG),
    ColumnDef("name", T.VARCHAR, charset="utf8mb4", max_length=80),
    ColumnDef("doc", T.BLOB, charset="utf8mb4", length_size=4, is_json=True),
)
TABLE = TableDef(3, "db", "t", COLUMNS, ("id",))


def test_update_rows_pair_before_and_after_images() -> None:
    body = (
        encode_row(COLUMNS, [1, b"a", b'{"x": 1}'])
        + encode_row(COLUMNS, [1, b"b", b'{"x": 1}'])
        + encode_row(COLUMNS, [2, None, b'{"x": 1}'])
        + encode_row(COLUMNS, [2, b"c", b'{"x": true}'])
    )
    rows = RowDecoder(TABLE).decode_body("update", body, all_present(3), all_present(3))
    assert [(r.type, r.data, r.old) for r in rows] == [
        ("update", {"id": 1, "name": "b", "doc": {"x": 1}}, {"name": "a"}),
        # NULL -> "c" changes; 1 -> true changes although 1 == True in Python.
        ("update", {"id": 2, "name": "c", "doc": {"x": True}}, {"name": None, "doc": {"x": 1}}),
    ]


def test_delete_rows_carry_the_deleted_row() -> None:
    body = encode_row(COLUMNS, [9, b"gone", b"[]"])
    rows = RowDecoder(TABLE).decode_body("delete", body, all_present(3))
    assert [(r.type, r.data, r.old) for r in rows] == [
        ("delete", {"id": 9, "name": "gone", "doc": []}, None)
    ]


def test_partial_row_image_only_has_the_present_columns() -> None:
    # binlog_row_image=MINIMAL style: only id and doc present (bitmap 0b101).
    present = (COLUMNS[0], COLUMNS[2])
    body = encode_row(present, [4, b'"s"'])
    rows = RowDecoder(TABLE).decode_body("delete", body, b"\x05")
    assert rows[0].data == {"id": 4, "doc": "s"}


def test_invalid_json_text_stops_with_the_column() -> None:
    body = encode_row(COLUMNS, [1, b"a", b"{not json"])
    with pytest.raises(DecodeError) as info:
        RowDecoder(TABLE).decode_body("insert", body, all_present(3), position="binlog.000001:5")
    assert info.value.column == "doc" and info.value.position == "binlog.000001:5"


def test_invalid_utf8_stops_with_the_column() -> None:
    body = encode_row(COLUMNS, [1, b"\xff\xfe", b"1"])
    with pytest.raises(DecodeError, match="'name'"):
        RowDecoder(TABLE).decode_body("insert", body, all_present(3))


def test_unsupported_type_is_reported_when_the_table_is_first_decoded() -> None:
    table = TableDef(5, "db", "shapes", (ColumnDef("g", T.GEOMETRY, length_size=4),), ())
    with pytest.raises(DecodeError, match=r"db\.shapes.*'g'.*GEOMETRY"):
        RowDecoder(table).decode_body("insert", b"\x00", b"\x01", position="binlog.000001:6")


def test_unsupported_charset_is_reported() -> None:
    col = ColumnDef("s", T.VARCHAR, charset="swe7", max_length=10)
    with pytest.raises(DecodeError, match="swe7"):
        RowDecoder(TableDef(5, "db", "t", (col,), ())).decode_body("insert", b"\x00\x00", b"\x01")


def test_bitmap_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(DecodeError, match="bitmap"):
        RowDecoder(TABLE).decode_body("insert", b"", b"\x07\x00")


def test_error_position_is_the_start_of_the_event() -> None:
    event = SimpleNamespace(packet=SimpleNamespace(log_pos=1500, event_size=100))
    assert resolve_where(event, "binlog.000007") == "binlog.000007:1400"
    assert resolve_where(event, "binlog.000007:1234") == "binlog.000007:1234"
    assert resolve_where(event, None) == "?:1400"
