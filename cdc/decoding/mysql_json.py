"""MySQL's binary JSON (the JSON column type of MySQL 5.7+) to Python values.

Layout (MySQL's json_binary.h): a type byte, then the value. Objects and arrays
come in a small form (2-byte counts and offsets) and a large form (4-byte);
they hold an element count, a byte size, key entries (objects), then value
entries of a type byte plus an inline value or an offset from the start of the
container. Scalars: literals, 16/32/64-bit integers, doubles, strings with a
variable-length size, and "opaque" values that carry a MySQL column type
(DECIMAL, dates and times; others come out base64).

MariaDB never writes this format: its JSON columns are text.
"""

from __future__ import annotations

import struct
from decimal import Decimal
from typing import Any

from cdc.decoding.values import base64_text, fraction_text, make_decimal_reader

_SMALL_OBJECT, _LARGE_OBJECT, _SMALL_ARRAY, _LARGE_ARRAY = 0, 1, 2, 3
_LITERAL, _INT16, _UINT16, _INT32, _UINT32, _INT64, _UINT64, _DOUBLE = 4, 5, 6, 7, 8, 9, 10, 11
_STRING, _OPAQUE = 12, 15
_MAX_DEPTH = 100

_INT_FORMATS = {
    _INT16: struct.Struct("<h"),
    _UINT16: struct.Struct("<H"),
    _INT32: struct.Struct("<i"),
    _UINT32: struct.Struct("<I"),
    _INT64: struct.Struct("<q"),
    _UINT64: struct.Struct("<Q"),
    _DOUBLE: struct.Struct("<d"),
}


def parse_mysql_json(doc: bytes) -> Any:
    """The Python value of a binary JSON document; raises ValueError if malformed."""
    if not doc:
        # An empty document is how MySQL logs a JSON NULL inside a NOT NULL context.
        return None
    # Every value of a well-formed document owns at least one byte of it, so a
    # document that claims more values than bytes reuses offsets: refuse it
    # before it can expand exponentially.
    budget = [len(doc)]
    return _value(doc, doc[0], 1, 0, budget)


def _need(doc: bytes, offset: int, n: int) -> None:
    if offset < 0 or offset + n > len(doc):
        raise ValueError(f"binary JSON truncated at offset {offset}")


def _varlen(doc: bytes, offset: int) -> tuple[int, int]:
    length = 0
    for i in range(5):
        _need(doc, offset + i, 1)
        byte = doc[offset + i]
        length |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return length, offset + i + 1
    raise ValueError("binary JSON length longer than 5 bytes")


def _value(doc: bytes, type_code: int, offset: int, depth: int, budget: list[int]) -> Any:
    if depth > _MAX_DEPTH:
        raise ValueError("binary JSON nested too deeply")
    budget[0] -= 1
    if budget[0] < 0:
        raise ValueError("binary JSON has more values than bytes")
    if type_code in (_SMALL_OBJECT, _LARGE_OBJECT, _SMALL_ARRAY, _LARGE_ARRAY):
        return _container(doc, type_code, offset, depth, budget)
    if type_code == _LITERAL:
        _need(doc, offset, 1)
        literal = doc[offset]
        if literal > 2:
            raise ValueError(f"binary JSON literal {literal} unknown")
        return (None, True, False)[literal]
    fmt = _INT_FORMATS.get(type_code)
    if fmt is not None:
        _need(doc, offset, fmt.size)
        number = fmt.unpack_from(doc, offset)[0]
        if type_code == _DOUBLE and (number != number or number in (float("inf"), -float("inf"))):
            raise ValueError("binary JSON double is not finite")
        return number
    if type_code == _STRING:
        length, start = _varlen(doc, offset)
        _need(doc, start, length)
        return doc[start : start + length].decode("utf-8")
    if type_code == _OPAQUE:
        _need(doc, offset, 1)
        mysql_type = doc[offset]
        length, start = _varlen(doc, offset + 1)
        _need(doc, start, length)
        return _opaque(mysql_type, doc[start : start + length])
    raise ValueError(f"binary JSON type {type_code} unknown")


def _container(doc: bytes, type_code: int, offset: int, depth: int, budget: list[int]) -> Any:
    large = type_code in (_LARGE_OBJECT, _LARGE_ARRAY)
    is_object = type_code in (_SMALL_OBJECT, _LARGE_OBJECT)
    width = 4 if large else 2
    fmt = "<I" if large else "<H"
    _need(doc, offset, 2 * width)
    count = struct.unpack_from(fmt, doc, offset)[0]
    size = struct.unpack_from(fmt, doc, offset + width)[0]
    _need(doc, offset, size)
    entries = offset + 2 * width
    keys: list[str] = []
    if is_object:
        for i in range(count):
            entry = entries + i * (width + 2)
            _need(doc, entry, width + 2)
            key_offset = struct.unpack_from(fmt, doc, entry)[0]
            key_length = struct.unpack_from("<H", doc, entry + width)[0]
            if key_offset + key_length > size:
                raise ValueError("binary JSON key past its object")
            start = offset + key_offset
            keys.append(doc[start : start + key_length].decode("utf-8"))
        entries += count * (width + 2)
    header_size = entries + count * (1 + width) - offset
    values: list[Any] = []
    for i in range(count):
        entry = entries + i * (1 + width)
        _need(doc, entry, 1 + width)
        value_type = doc[entry]
        inline = (
            value_type == _LITERAL
            or value_type in (_INT16, _UINT16)
            or (large and value_type in (_INT32, _UINT32))
        )
        if inline:
            values.append(_value(doc, value_type, entry + 1, depth + 1, budget))
            continue
        value_offset = struct.unpack_from(fmt, doc, entry + 1)[0]
        # A nested value lies after the entries of its container: an offset
        # pointing back into them would allow cycles.
        if not header_size <= value_offset < size:
            raise ValueError("binary JSON value offset out of its container")
        values.append(_value(doc, value_type, offset + value_offset, depth + 1, budget))
    if is_object:
        return dict(zip(keys, values, strict=True))
    return values


def _packed_datetime(raw: bytes, with_date: bool, with_time: bool) -> str:
    if len(raw) != 8:
        raise ValueError("binary JSON date/time opaque is not 8 bytes")
    packed = int.from_bytes(raw, "little", signed=True)
    negative = packed < 0
    packed = -packed if negative else packed
    micros = packed & 0xFFFFFF
    whole = packed >> 24
    if micros >= 1000000:
        raise ValueError("binary JSON date/time fraction out of range")
    frac = fraction_text(micros, 6)
    if not with_date:
        hour, minute, second = (whole >> 12) & 0x3FF, (whole >> 6) & 63, whole & 63
        sign = "-" if negative else ""
        return f"{sign}{hour:02d}:{minute:02d}:{second:02d}{frac}"
    ymd, hms = whole >> 17, whole & 0x1FFFF
    year, month = divmod(ymd >> 5, 13)
    day = ymd & 31
    date = f"{year:04d}-{month:02d}-{day:02d}"
    if not with_time:
        return date
    return f"{date} {hms >> 12:02d}:{(hms >> 6) & 63:02d}:{hms & 63:02d}{frac}"


def _opaque(mysql_type: int, raw: bytes) -> Any:
    if mysql_type == 246:  # NEWDECIMAL: precision, scale, packed decimal
        if len(raw) < 2:
            raise ValueError("binary JSON decimal opaque too short")
        value: Decimal
        value, end = make_decimal_reader(raw[0], raw[1])(raw, 2)
        if end != len(raw):
            raise ValueError("binary JSON decimal opaque has trailing bytes")
        return value
    if mysql_type == 10:  # DATE
        return _packed_datetime(raw, with_date=True, with_time=False)
    if mysql_type in (7, 12, 17, 18):  # TIMESTAMP, DATETIME
        return _packed_datetime(raw, with_date=True, with_time=True)
    if mysql_type in (11, 19):  # TIME
        return _packed_datetime(raw, with_date=False, with_time=True)
    return base64_text(raw)
