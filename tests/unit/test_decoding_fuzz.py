"""Malformed rows: truncated or corrupted event bodies raise DecodeError naming
the binlog position and the table; they never hang and never return anything
but what the checked reference reader returns for the same bytes."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc.decoding import DecodeError, RowDecoder
from cdc.decoding.mysql_json import parse_mysql_json
from cdc.schema import ColumnDef, ColumnType, TableDef
from tests.unit.binlog_encoding import all_present, encode_mysql_json, encode_row

FUZZ = settings(max_examples=200)

# Columns with a strategy of raw values the test encoder takes.
CATALOG: list[tuple[ColumnDef, st.SearchStrategy[Any]]] = [
    (ColumnDef("i8", ColumnType.TINY), st.integers(-128, 127)),
    (ColumnDef("u16", ColumnType.SHORT, unsigned=True), st.integers(0, 65535)),
    (ColumnDef("i24", ColumnType.INT24), st.integers(-(2**23), 2**23 - 1)),
    (ColumnDef("i32", ColumnType.LONG), st.integers(-(2**31), 2**31 - 1)),
    (ColumnDef("u64", ColumnType.LONGLONG, unsigned=True), st.integers(0, 2**64 - 1)),
    (ColumnDef("dbl", ColumnType.DOUBLE), st.floats(allow_nan=False, allow_infinity=False)),
    (
        ColumnDef("flt", ColumnType.FLOAT),
        st.floats(width=32, allow_nan=False, allow_infinity=False),
    ),
    (
        ColumnDef("dec", ColumnType.NEWDECIMAL, precision=12, scale=3),
        st.integers(-(10**12) + 1, 10**12 - 1).map(lambda n: Decimal(n).scaleb(-3)),
    ),
    (
        ColumnDef("vc", ColumnType.VARCHAR, charset="utf8mb4", max_length=400),
        st.text(max_size=40).map(str.encode),
    ),
    (
        ColumnDef("lat", ColumnType.VARCHAR, charset="latin1", max_length=40),
        st.binary(max_size=40),
    ),
    (ColumnDef("bl", ColumnType.BLOB, charset="binary", length_size=2), st.binary(max_size=60)),
    (
        ColumnDef("dt", ColumnType.DATETIME2, fsp=3),
        st.tuples(
            st.integers(1, 9999),
            st.integers(1, 12),
            st.integers(1, 28),
            st.integers(0, 23),
            st.integers(0, 59),
            st.integers(0, 59),
            st.integers(0, 999).map(lambda n: n * 1000),
        ),
    ),
    (
        ColumnDef("tm", ColumnType.TIME2, fsp=6),
        st.tuples(
            st.booleans(),
            st.integers(0, 838),
            st.integers(0, 59),
            st.integers(0, 59),
            st.integers(0, 999999),
        ).filter(lambda t: any(t[1:]) or not t[0]),
    ),
    (ColumnDef("ts", ColumnType.TIMESTAMP2, fsp=0), st.tuples(st.integers(1, 2**31), st.just(0))),
    (
        ColumnDef("d", ColumnType.DATE),
        st.tuples(st.integers(0, 9999), st.integers(0, 12), st.integers(0, 31)),
    ),
    (ColumnDef("e", ColumnType.ENUM, enum_values=("", "a", "b"), size=1), st.integers(0, 2)),
    (ColumnDef("s", ColumnType.SET, set_values=("x", "y", "z"), size=1), st.integers(0, 7)),
    (ColumnDef("b", ColumnType.BIT, bits=12), st.integers(0, 4095)),
    (ColumnDef("y", ColumnType.YEAR), st.sampled_from([0, 1901, 2024, 2155])),
    (
        ColumnDef("j", ColumnType.BLOB, charset="utf8mb4", length_size=4, is_json=True),
        st.sampled_from([b'{"a": 1}', b"[1, 2, 3]", b'"x"', b"null"]),
    ),
    (
        ColumnDef("mj", ColumnType.JSON, length_size=4),
        st.sampled_from([{"a": [1, "b"]}, [1.5, None, True], "s", 7]).map(encode_mysql_json),
    ),
]


@st.composite
def event_bodies(draw: st.DrawFn) -> tuple[TableDef, bytes, list[int]]:
    """A table, a valid rows-event body for it, and the row boundaries."""
    picks = draw(
        st.lists(st.sampled_from(range(len(CATALOG))), min_size=1, max_size=8, unique=True)
    )
    columns = tuple(CATALOG[i][0] for i in picks)
    rows = draw(
        st.lists(st.tuples(*(st.none() | CATALOG[i][1] for i in picks)), min_size=1, max_size=4)
    )
    body = b""
    boundaries = [0]
    for row in rows:
        body += encode_row(columns, list(row))
        boundaries.append(len(body))
    return TableDef(42, "fuzzdb", "t", columns, ()), body, boundaries


def _decode(table: TableDef, body: bytes, reference: bool = False) -> list[dict[str, Any]]:
    decoder = RowDecoder(table)
    rows = decoder.decode_body(
        "insert",
        body,
        all_present(len(table.columns)),
        position="binlog.000009:777",
        reference=reference,
    )
    return [r.data for r in rows]


def _assert_names_position(exc: DecodeError) -> None:
    assert "binlog.000009:777" in str(exc)
    assert "fuzzdb.t" in str(exc)


@FUZZ
@given(event_bodies())
def test_valid_bodies_decode_the_same_both_ways(case: tuple[TableDef, bytes, list[int]]) -> None:
    table, body, boundaries = case
    rows = _decode(table, body)
    assert len(rows) == len(boundaries) - 1
    assert rows == _decode(table, body, reference=True)


@FUZZ
@given(event_bodies(), st.data())
def test_truncated_rows_raise_decode_error(
    case: tuple[TableDef, bytes, list[int]], data: st.DataObject
) -> None:
    table, body, boundaries = case
    cuts = [k for k in range(1, len(body)) if k not in boundaries]
    if not cuts:
        return
    cut = data.draw(st.sampled_from(cuts))
    with pytest.raises(DecodeError) as info:
        _decode(table, body[:cut])
    _assert_names_position(info.value)


@FUZZ
@given(event_bodies(), st.data())
def test_corrupted_bytes_give_the_reference_result_or_decode_error(
    case: tuple[TableDef, bytes, list[int]], data: st.DataObject
) -> None:
    table, body, _ = case
    mutated = bytearray(body)
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(mutated) - 1))
        mutated[index] = data.draw(st.integers(0, 255))
    try:
        fast = _decode(table, bytes(mutated))
    except DecodeError as exc:
        _assert_names_position(exc)
        with pytest.raises(DecodeError):
            _decode(table, bytes(mutated), reference=True)
        return
    assert fast == _decode(table, bytes(mutated), reference=True)


@FUZZ
@given(event_bodies(), st.binary(min_size=1, max_size=200))
def test_random_bodies_never_escape_as_other_errors(
    case: tuple[TableDef, bytes, list[int]], garbage: bytes
) -> None:
    table, _, _ = case
    try:
        fast = _decode(table, garbage)
    except DecodeError as exc:
        _assert_names_position(exc)
        return
    assert fast == _decode(table, garbage, reference=True)


@FUZZ
@given(st.binary(max_size=300))
def test_binary_json_garbage_is_refused_or_parsed(doc: bytes) -> None:
    try:
        value = parse_mysql_json(doc)
    except ValueError:
        return
    # Whatever parses is a plain JSON value.
    json.dumps(value, allow_nan=False, default=str)


def test_binary_json_shared_offsets_cannot_explode() -> None:
    # 30 nested arrays whose two entries both point at the next one: 2**30 visits
    # if offsets were followed blindly. The document is 305 bytes.
    body = (0).to_bytes(2, "little") + (4).to_bytes(2, "little")
    for _ in range(30):
        size = 10 + len(body)
        entry = b"\x02" + (10).to_bytes(2, "little")
        body = (2).to_bytes(2, "little") + size.to_bytes(2, "little") + entry * 2 + body
    with pytest.raises(ValueError, match="more values than bytes"):
        parse_mysql_json(b"\x02" + body)


def test_decode_error_names_the_column() -> None:
    col = ColumnDef("status", ColumnType.ENUM, enum_values=("", "a"), size=1)
    table = TableDef(1, "db", "orders", (col,), ())
    with pytest.raises(DecodeError) as info:
        RowDecoder(table).decode_body("insert", b"\x00\x05", b"\x01", position="binlog.000002:99")
    assert info.value.column == "status"
    assert info.value.position == "binlog.000002:99"
    assert "ENUM index 5" in str(info.value)
