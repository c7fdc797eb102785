"""Test-side encoders of MySQL's binlog row formats, written from the server's
documented layouts (decimal.c, my_time.c, rows events). The decoder under test
must read back what these write."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from decimal import Decimal, localcontext
from typing import Any

from cdc.schema import ColumnDef, ColumnType

_DIG2BYTES = (0, 1, 1, 2, 2, 3, 3, 4, 4, 4)


def encode_decimal(value: Decimal, precision: int, scale: int) -> bytes:
    """MySQL's decimal2bin."""
    with localcontext() as ctx:
        ctx.prec = 100
        sign, digits, _ = value.quantize(Decimal(1).scaleb(-scale)).as_tuple()
    text = "".join(map(str, digits)).rjust(precision, "0")
    assert len(text) == precision, (value, precision, scale)
    intg = precision - scale
    int_digits, frac_digits = text[:intg], text[intg:]
    groups: list[tuple[str, int]] = []
    lead = intg % 9
    if lead:
        groups.append((int_digits[:lead], _DIG2BYTES[lead]))
    groups += [(int_digits[i : i + 9], 4) for i in range(lead, intg, 9)]
    groups += [(frac_digits[i : i + 9], 4) for i in range(0, scale - scale % 9, 9)]
    if scale % 9:
        groups.append((frac_digits[scale - scale % 9 :], _DIG2BYTES[scale % 9]))
    out = bytearray()
    for group, nbytes in groups:
        out += int(group).to_bytes(nbytes, "big")
    if sign:
        out = bytearray(b ^ 0xFF for b in out)
    out[0] ^= 0x80
    return bytes(out)


def _fraction(micros: int, fsp: int) -> bytes:
    nbytes = (fsp + 1) // 2
    if nbytes == 0:
        return b""
    raw = micros // (1, 10000, 100, 1)[nbytes]
    return raw.to_bytes(nbytes, "big")


def encode_datetime2(
    year: int, month: int, day: int, hour: int, minute: int, second: int, micros: int, fsp: int
) -> bytes:
    ym = year * 13 + month
    packed = (ym << 22) | (day << 17) | (hour << 12) | (minute << 6) | second
    return (packed + 0x8000000000).to_bytes(5, "big") + _fraction(micros, fsp)


def encode_timestamp2(seconds: int, micros: int, fsp: int) -> bytes:
    return seconds.to_bytes(4, "big") + _fraction(micros, fsp)


def encode_time2(
    negative: bool, hour: int, minute: int, second: int, micros: int, fsp: int
) -> bytes:
    """my_time_packed_to_binary: the integer part is the arithmetic shift of the
    packed value, the fraction its C remainder (negative for negative times)."""
    packed = (((hour << 12) | (minute << 6) | second) << 24) + micros
    if negative:
        packed = -packed
    nbytes = (fsp + 1) // 2
    if nbytes == 3:
        return (packed + 0x800000000000).to_bytes(6, "big")
    head = (packed >> 24) + 0x800000
    if nbytes == 0:
        return head.to_bytes(3, "big")
    frac = -((-packed) % (1 << 24)) if packed < 0 else packed % (1 << 24)
    unit = (1, 10000, 100)[nbytes]
    frac_units = -((-frac) // unit) if frac < 0 else frac // unit
    return head.to_bytes(3, "big") + (frac_units % (1 << (8 * nbytes))).to_bytes(nbytes, "big")


def encode_date(year: int, month: int, day: int) -> bytes:
    return ((year << 9) | (month << 5) | day).to_bytes(3, "little")


def length_prefixed(raw: bytes, prefix: int) -> bytes:
    return len(raw).to_bytes(prefix, "little") + raw


_INT = {
    (ColumnType.TINY, False): "<b",
    (ColumnType.TINY, True): "<B",
    (ColumnType.SHORT, False): "<h",
    (ColumnType.SHORT, True): "<H",
    (ColumnType.LONG, False): "<i",
    (ColumnType.LONG, True): "<I",
    (ColumnType.LONGLONG, False): "<q",
    (ColumnType.LONGLONG, True): "<Q",
}


def encode_value(col: ColumnDef, value: Any) -> bytes:
    """The binlog bytes of a value given in its raw form: ints, Decimal, bytes for
    strings/BLOBs, tuples for dates and times, (index) for ENUM, (mask) for SET."""
    t = col.type
    fmt = _INT.get((t, col.unsigned))
    if fmt:
        return struct.pack(fmt, value)
    if t is ColumnType.INT24:
        return int(value).to_bytes(3, "little", signed=not col.unsigned)
    if t is ColumnType.FLOAT:
        return struct.pack("<f", value)
    if t is ColumnType.DOUBLE:
        return struct.pack("<d", value)
    if t is ColumnType.NEWDECIMAL:
        return encode_decimal(value, col.precision, col.scale)
    if t is ColumnType.YEAR:
        return bytes([value - 1900 if value else 0])
    if t is ColumnType.DATE:
        return encode_date(*value)
    if t is ColumnType.DATETIME2:
        year, month, day, hour, minute, second, micros = value
        return encode_datetime2(year, month, day, hour, minute, second, micros, col.fsp)
    if t is ColumnType.TIMESTAMP2:
        seconds, micros = value
        return encode_timestamp2(seconds, micros, col.fsp)
    if t is ColumnType.TIME2:
        negative, hour, minute, second, micros = value
        return encode_time2(negative, hour, minute, second, micros, col.fsp)
    if t is ColumnType.ENUM:
        return int(value).to_bytes(col.size, "little")
    if t is ColumnType.SET:
        return int(value).to_bytes(col.size, "little")
    if t is ColumnType.BIT:
        return int(value).to_bytes((col.bits + 7) // 8, "big")
    if t in (ColumnType.VARCHAR, ColumnType.STRING):
        return length_prefixed(value, 2 if col.max_length > 255 else 1)
    if t in (ColumnType.BLOB, ColumnType.JSON):
        return length_prefixed(value, col.length_size)
    raise AssertionError(f"no test encoder for {t}")


def encode_row(columns: Sequence[ColumnDef], values: Sequence[Any]) -> bytes:
    """A row image with every column present: NULL bitmap, then the values."""
    nulls = 0
    body = b""
    for j, (col, value) in enumerate(zip(columns, values, strict=True)):
        if value is None:
            nulls |= 1 << j
        else:
            body += encode_value(col, value)
    return nulls.to_bytes((len(columns) + 7) // 8, "little") + body


def all_present(count: int) -> bytes:
    return b"\xff" * (count // 8) + (bytes([(1 << (count % 8)) - 1]) if count % 8 else b"")


# --- MySQL binary JSON (json_binary.h) ---------------------------------------------

_J_SMALL_OBJECT, _J_LARGE_OBJECT, _J_SMALL_ARRAY, _J_LARGE_ARRAY = 0, 1, 2, 3
_J_LITERAL, _J_INT16, _J_UINT16, _J_INT32, _J_UINT32 = 4, 5, 6, 7, 8
_J_INT64, _J_UINT64, _J_DOUBLE, _J_STRING = 9, 10, 11, 12


def _varlen(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _json_scalar(value: Any) -> tuple[int, bytes]:
    if value is None:
        return _J_LITERAL, b"\x00"
    if value is True:
        return _J_LITERAL, b"\x01"
    if value is False:
        return _J_LITERAL, b"\x02"
    if isinstance(value, int):
        for code, fmt in ((_J_INT16, "<h"), (_J_INT32, "<i"), (_J_INT64, "<q"), (_J_UINT64, "<Q")):
            try:
                return code, struct.pack(fmt, value)
            except struct.error:
                continue
        raise AssertionError(f"int {value} out of range")
    if isinstance(value, float):
        return _J_DOUBLE, struct.pack("<d", value)
    if isinstance(value, str):
        raw = value.encode()
        return _J_STRING, _varlen(len(raw)) + raw
    raise AssertionError(f"no binary JSON for {value!r}")


def _json_value(value: Any, large: bool) -> tuple[int, bytes]:
    if isinstance(value, dict | list):
        return _json_container(value, large)
    return _json_scalar(value)


def _json_container(value: dict[str, Any] | list[Any], large: bool) -> tuple[int, bytes]:
    is_object = isinstance(value, dict)
    width = 4 if large else 2
    fmt = "<I" if large else "<H"
    items = list(value.items()) if isinstance(value, dict) else [(None, v) for v in value]
    count = len(items)
    header = 2 * width + (count * (width + 2) if is_object else 0) + count * (1 + width)
    keys = b"".join(k.encode() for k, _ in items if k is not None)
    key_entries = b""
    offset = header
    for k, _ in items:
        if k is not None:
            key_entries += struct.pack(fmt, offset) + struct.pack("<H", len(k.encode()))
            offset += len(k.encode())
    value_entries = b""
    data = b""
    for _, v in items:
        code, payload = _json_value(v, large)
        inline = (
            code == _J_LITERAL
            or code in (_J_INT16, _J_UINT16)
            or (large and code in (_J_INT32, _J_UINT32))
        )
        if inline:
            value_entries += bytes([code]) + payload.ljust(width, b"\x00")
        else:
            value_entries += bytes([code]) + struct.pack(fmt, offset + len(data))
            data += payload
    size = header + len(keys) + len(data)
    body = struct.pack(fmt, count) + struct.pack(fmt, size) + key_entries + value_entries
    code = (
        (_J_LARGE_OBJECT if large else _J_SMALL_OBJECT)
        if is_object
        else (_J_LARGE_ARRAY if large else _J_SMALL_ARRAY)
    )
    return code, body + keys + data


def encode_mysql_json(value: Any, large: bool = False) -> bytes:
    """A binary JSON document (small or large containers throughout)."""
    code, payload = _json_value(value, large)
    return bytes([code]) + payload
