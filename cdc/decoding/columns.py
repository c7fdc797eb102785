"""How each column is read: a checked reader per column, used by the reference
(careful) row decoder and by the compiled one for the types it does not inline.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import Any

from cdc.decoding.mysql_json import parse_mysql_json
from cdc.decoding.values import (
    Reader,
    base64_text,
    double_value,
    float32_value,
    make_bit_reader,
    make_datetime2_reader,
    make_decimal_reader,
    make_enum_reader,
    make_set_reader,
    make_time2_reader,
    make_timestamp2_reader,
    read_date,
    read_datetime_v1,
    read_time_v1,
    read_timestamp_v1,
    read_year,
    text_decoder,
)
from cdc.schema import ColumnDef, ColumnType

_INT_STRUCTS: dict[tuple[ColumnType, bool], struct.Struct] = {
    (ColumnType.TINY, False): struct.Struct("<b"),
    (ColumnType.TINY, True): struct.Struct("<B"),
    (ColumnType.SHORT, False): struct.Struct("<h"),
    (ColumnType.SHORT, True): struct.Struct("<H"),
    (ColumnType.LONG, False): struct.Struct("<i"),
    (ColumnType.LONG, True): struct.Struct("<I"),
    (ColumnType.LONGLONG, False): struct.Struct("<q"),
    (ColumnType.LONGLONG, True): struct.Struct("<Q"),
}


class UnsupportedColumn(ValueError):
    """A column type or charset the decoder does not handle."""


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"JSON number {text} overflows a double")
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# One decoder for all documents: json.loads with hooks builds a new one per call.
_json_decoder = json.JSONDecoder(parse_float=_finite_float, parse_constant=_reject_constant)
_decode_json = _json_decoder.decode
_scan_json = getattr(_json_decoder, "scan_once")  # noqa: B009 - untyped attribute
_JSON_SPACE = frozenset(" \t\n\r")


def parse_json_text(raw: bytes) -> Any:
    """A JSON document stored as text (MariaDB's JSON): parsed, never passed on as
    a string. Duplicate keys keep the last value, as MariaDB's own functions do."""
    text = raw.decode("utf-8")
    if text and text[0] not in _JSON_SPACE:
        # The scanner alone, when the document fills the text exactly.
        try:
            value, end = _scan_json(text, 0)
        except StopIteration:
            pass
        else:
            if end == len(text):
                return value
    # Surrounding whitespace or an error: the full decoder (and its message).
    return _decode_json(text)


def int_struct(col: ColumnDef) -> struct.Struct | None:
    return _INT_STRUCTS.get((col.type, col.unsigned))


def value_converter(col: ColumnDef) -> Callable[[bytes], Any]:
    """bytes -> value for the length-prefixed types (strings, BLOB, JSON)."""
    if col.type is ColumnType.JSON:
        return parse_mysql_json
    if col.is_json:
        return parse_json_text
    if col.charset is None:
        raise UnsupportedColumn(f"column {col.name!r} has no character set")
    if col.is_binary:
        if col.type is ColumnType.STRING:
            # BINARY(n): the binlog drops the trailing 0x00 padding; put it back
            # so the value is the one the column holds.
            width = col.max_length

            def fixed_binary(raw: bytes) -> str:
                if len(raw) > width:
                    raise ValueError(f"BINARY({width}) value of {len(raw)} bytes")
                return base64_text(raw.ljust(width, b"\x00"))

            return fixed_binary
        return base64_text
    try:
        return text_decoder(col.charset)
    except ValueError as exc:
        raise UnsupportedColumn(f"column {col.name!r}: {exc}") from None


def length_prefix_size(col: ColumnDef) -> int:
    """Width of the length prefix in front of a string, BLOB or JSON value."""
    if col.type in (ColumnType.VARCHAR, ColumnType.VAR_STRING, ColumnType.STRING):
        return 2 if col.max_length > 255 else 1
    if col.type in (ColumnType.BLOB, ColumnType.JSON, ColumnType.GEOMETRY):
        if col.length_size not in (1, 2, 3, 4):
            raise UnsupportedColumn(f"column {col.name!r}: length size {col.length_size}")
        return col.length_size
    raise UnsupportedColumn(f"column {col.name!r} of type {col.type.name} has no length")


def _length_prefixed_reader(prefix: int, convert: Callable[[bytes], Any]) -> Reader:
    def read_length_prefixed(buf: bytes, p: int) -> tuple[Any, int]:
        if p + prefix > len(buf):
            raise ValueError("truncated length")
        length = int.from_bytes(buf[p : p + prefix], "little")
        start = p + prefix
        if start + length > len(buf):
            raise ValueError(f"truncated value: {length} bytes announced")
        return convert(buf[start : start + length]), start + length

    return read_length_prefixed


def _struct_reader(fmt: struct.Struct, post: Callable[[Any], Any] | None = None) -> Reader:
    size = fmt.size
    unpack = fmt.unpack_from

    def read_struct(buf: bytes, p: int) -> tuple[Any, int]:
        if p + size > len(buf):
            raise ValueError("truncated number")
        value = unpack(buf, p)[0]
        return (post(value) if post else value), p + size

    return read_struct


def _int24_reader(unsigned: bool) -> Reader:
    def read_int24(buf: bytes, p: int) -> tuple[int, int]:
        if p + 3 > len(buf):
            raise ValueError("truncated MEDIUMINT")
        return int.from_bytes(buf[p : p + 3], "little", signed=not unsigned), p + 3

    return read_int24


def column_reader(col: ColumnDef) -> Reader:
    """The checked reader of one column's value (not NULL)."""
    t = col.type
    fmt = int_struct(col)
    if fmt is not None:
        return _struct_reader(fmt)
    if t is ColumnType.INT24:
        return _int24_reader(col.unsigned)
    if t is ColumnType.FLOAT:
        return _struct_reader(struct.Struct("<f"), float32_value)
    if t is ColumnType.DOUBLE:
        return _struct_reader(struct.Struct("<d"), double_value)
    if t is ColumnType.NEWDECIMAL:
        return make_decimal_reader(col.precision, col.scale)
    if t is ColumnType.YEAR:
        return read_year
    if t in (ColumnType.DATE, ColumnType.NEWDATE):
        return read_date
    if t is ColumnType.DATETIME2:
        return make_datetime2_reader(col.fsp)
    if t is ColumnType.TIMESTAMP2:
        return make_timestamp2_reader(col.fsp)
    if t is ColumnType.TIME2:
        return make_time2_reader(col.fsp)
    if t is ColumnType.DATETIME:
        return read_datetime_v1
    if t is ColumnType.TIME:
        return read_time_v1
    if t is ColumnType.TIMESTAMP:
        return read_timestamp_v1
    if t is ColumnType.ENUM:
        return make_enum_reader(col.enum_values, col.size)
    if t is ColumnType.SET:
        return make_set_reader(col.set_values, col.size)
    if t is ColumnType.BIT:
        return make_bit_reader(col.bits)
    if t in (ColumnType.VARCHAR, ColumnType.VAR_STRING, ColumnType.STRING, ColumnType.BLOB):
        return _length_prefixed_reader(length_prefix_size(col), value_converter(col))
    if t is ColumnType.JSON:
        return _length_prefixed_reader(length_prefix_size(col), parse_mysql_json)
    raise UnsupportedColumn(f"column {col.name!r} has type {t.name}, which is not supported")
