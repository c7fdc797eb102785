"""Property tests of the row decoder: values written in MySQL's documented binary
formats (by the test-side encoders) decode to their Maxwell values, through the
compiled reader and the reference reader alike."""

from __future__ import annotations

import base64
import json
import struct
import time
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc.decoding import RowDecoder
from cdc.decoding.mysql_json import parse_mysql_json
from cdc.decoding.values import LATIN1_TABLE, float32_value, make_datetime2_reader
from cdc.schema import ColumnDef, ColumnType, TableDef
from tests.unit.binlog_encoding import all_present, encode_mysql_json, encode_row

PROPERTY = settings(max_examples=150)


def _decode(columns: tuple[ColumnDef, ...], rows: list[list[Any]]) -> list[dict[str, Any]]:
    table = TableDef(7, "db", "t", columns, ())
    body = b"".join(encode_row(columns, row) for row in rows)
    decoder = RowDecoder(table)
    fast = decoder.decode_body("insert", body, all_present(len(columns)), position="f:4")
    reference = decoder.decode_body(
        "insert", body, all_present(len(columns)), position="f:4", reference=True
    )
    assert [r.data for r in fast] == [r.data for r in reference]
    return [r.data for r in fast]


def _one(col: ColumnDef, raw: Any) -> Any:
    return _decode((col,), [[raw]])[0][col.name]


INT_RANGES = {
    ColumnType.TINY: 8,
    ColumnType.SHORT: 16,
    ColumnType.INT24: 24,
    ColumnType.LONG: 32,
    ColumnType.LONGLONG: 64,
}


@pytest.mark.parametrize("col_type", list(INT_RANGES))
@pytest.mark.parametrize("unsigned", [False, True])
@PROPERTY
@given(data=st.data())
def test_integers_of_every_width(col_type: ColumnType, unsigned: bool, data: st.DataObject) -> None:
    bits = INT_RANGES[col_type]
    low, high = (0, 2**bits - 1) if unsigned else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    values = data.draw(st.lists(st.integers(low, high) | st.none(), min_size=1, max_size=5))
    col = ColumnDef("n", col_type, unsigned=unsigned)
    assert [row["n"] for row in _decode((col,), [[v] for v in values])] == values


@st.composite
def decimals(draw: st.DrawFn) -> tuple[int, int, Decimal]:
    precision = draw(st.integers(1, 65))
    scale = draw(st.integers(0, min(30, precision)))
    digits = draw(st.integers(0, 10**precision - 1))
    negative = draw(st.booleans()) and digits > 0
    # Built from its digits: arithmetic would round to the context's 28 digits.
    value = Decimal((int(negative), tuple(map(int, str(digits))), -scale))
    return precision, scale, value


@PROPERTY
@given(decimals())
def test_decimal_is_exact(case: tuple[int, int, Decimal]) -> None:
    precision, scale, value = case
    col = ColumnDef("d", ColumnType.NEWDECIMAL, precision=precision, scale=scale)
    decoded = _one(col, value)
    assert type(decoded) is Decimal
    assert decoded == value
    # The scale is kept: 1.50 stays 1.50, as the column holds it.
    assert decoded.as_tuple().exponent == -scale


@PROPERTY
@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_float_is_the_shortest_text_of_the_32_bit_value(value: float) -> None:
    decoded = _one(ColumnDef("f", ColumnType.FLOAT), value)
    assert struct.pack("<f", decoded) == struct.pack("<f", value)
    assert len(repr(decoded)) <= len(repr(value))


@PROPERTY
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_double_is_exact(value: float) -> None:
    assert _one(ColumnDef("d", ColumnType.DOUBLE), value) == value


def test_float32_value_examples() -> None:
    assert float32_value(struct.unpack("<f", struct.pack("<f", 1.1))[0]) == 1.1
    assert float32_value(struct.unpack("<f", struct.pack("<f", 16777216.0))[0]) == 16777216.0


FSP = st.integers(0, 6)


def _micros(draw: st.DrawFn, fsp: int) -> int:
    units = int(draw(st.integers(0, 10**fsp - 1)))
    return units * int(10 ** (6 - fsp))


def _fraction(micros: int, fsp: int) -> str:
    return f".{micros:06d}"[: fsp + 1] if fsp else ""


@st.composite
def datetimes(draw: st.DrawFn) -> tuple[int, tuple[int, ...], str]:
    fsp = draw(FSP)
    zero = draw(st.booleans()) and draw(st.booleans())
    if zero:
        fields = (0, 0, 0, 0, 0, 0, 0)
    else:
        fields = (
            draw(st.integers(0, 9999)),
            draw(st.integers(0, 12)),
            draw(st.integers(0, 31)),
            draw(st.integers(0, 23)),
            draw(st.integers(0, 59)),
            draw(st.integers(0, 59)),
            _micros(draw, fsp),
        )
    y, mo, d, h, mi, s, us = fields
    text = f"{y:04d}-{mo:02d}-{d:02d} {h:02d}:{mi:02d}:{s:02d}" + _fraction(us, fsp)
    return fsp, fields, text


@PROPERTY
@given(datetimes())
def test_datetime2(case: tuple[int, tuple[int, ...], str]) -> None:
    fsp, fields, text = case
    assert _one(ColumnDef("t", ColumnType.DATETIME2, fsp=fsp), fields) == text


def _datetime2_reference(buf: bytes, fsp: int) -> str:
    """DATETIME2 as MySQL documents it (5 bytes big-endian, biased by 0x8000000000:
    year*13+month, day, hour, minute, second; then (fsp+1)//2 fraction bytes), each
    field checked and formatted plainly: what the table-driven reader must equal."""
    nbytes = (fsp + 1) // 2
    if len(buf) < 5 + nbytes:
        raise ValueError("truncated")
    packed = int.from_bytes(buf[:5], "big")
    if not packed & 0x8000000000:
        raise ValueError("negative")
    packed &= 0x7FFFFFFFFF
    year, month = divmod(packed >> 22, 13)
    day = (packed >> 17) & 31
    hour, minute, second = (packed >> 12) & 31, (packed >> 6) & 63, packed & 63
    if year > 9999 or month > 12 or day > 31 or hour > 23 or minute > 59 or second > 59:
        raise ValueError("out of range")
    text = f"{year:04d}-{month:02d}-{day:02d} {hour:02d}:{minute:02d}:{second:02d}"
    if not fsp:
        return text
    raw = int.from_bytes(buf[5 : 5 + nbytes], "big")
    if raw >= 10 ** (2 * nbytes):
        raise ValueError("fraction out of range")
    micros = raw * 10 ** (6 - 2 * nbytes)
    if micros % 10 ** (6 - fsp):
        raise ValueError("finer than fsp")
    return f"{text}.{micros // 10 ** (6 - fsp):0{fsp}d}"


@PROPERTY
@given(
    fsp=st.integers(0, 6),
    head=st.integers(0x8000000000, 0x8000000000 + (10000 * 13 << 22) - 1),
    # Mostly in range (the fraction's bytes hold at most 10**(2*nbytes) - 1), some not.
    fraction=st.one_of(
        st.integers(0, 999999).map(lambda n: n.to_bytes(3, "big")),
        st.integers(0, 9999).map(lambda n: n.to_bytes(2, "big") + b"\0"),
        st.integers(0, 99).map(lambda n: bytes([n, 0, 0])),
        st.binary(min_size=3, max_size=3),
    ),
    flip_sign=st.booleans(),
)
def test_datetime2_reader_equals_the_plain_reference(
    fsp: int, head: int, fraction: bytes, flip_sign: bool
) -> None:
    # Any bytes, valid or not: the reader gives the reference's text, or refuses
    # exactly where the reference refuses.
    buf = (head ^ (0x8000000000 if flip_sign else 0)).to_bytes(5, "big") + fraction
    read = make_datetime2_reader(fsp)
    try:
        expected: str | None = _datetime2_reference(buf, fsp)
    except ValueError:
        expected = None
    if expected is None:
        with pytest.raises(ValueError):
            read(buf, 0)
    else:
        assert read(buf, 0) == (expected, 5 + (fsp + 1) // 2)


@st.composite
def timestamps(draw: st.DrawFn) -> tuple[int, int, int, str]:
    fsp = draw(FSP)
    seconds = draw(st.integers(0, 2**32 - 1))
    micros = 0 if seconds == 0 else _micros(draw, fsp)
    if seconds == 0:
        text = "0000-00-00 00:00:00"
    else:
        g = time.gmtime(seconds)
        text = (
            f"{g.tm_year:04d}-{g.tm_mon:02d}-{g.tm_mday:02d} "
            f"{g.tm_hour:02d}:{g.tm_min:02d}:{g.tm_sec:02d}"
        )
    return fsp, seconds, micros, text + _fraction(micros, fsp)


@PROPERTY
@given(timestamps())
def test_timestamp2_is_utc(case: tuple[int, int, int, str]) -> None:
    fsp, seconds, micros, text = case
    assert _one(ColumnDef("t", ColumnType.TIMESTAMP2, fsp=fsp), (seconds, micros)) == text


@st.composite
def times(draw: st.DrawFn) -> tuple[int, tuple[Any, ...], str]:
    fsp = draw(FSP)
    h, mi, s = draw(st.integers(0, 838)), draw(st.integers(0, 59)), draw(st.integers(0, 59))
    us = _micros(draw, fsp)
    negative = draw(st.booleans()) and (h or mi or s or us) > 0
    text = f"{'-' if negative else ''}{h:02d}:{mi:02d}:{s:02d}" + _fraction(us, fsp)
    return fsp, (negative, h, mi, s, us), text


@PROPERTY
@given(times())
def test_time2_including_negative_fractions(case: tuple[int, tuple[Any, ...], str]) -> None:
    fsp, fields, text = case
    assert _one(ColumnDef("t", ColumnType.TIME2, fsp=fsp), fields) == text


@PROPERTY
@given(st.integers(0, 9999), st.integers(0, 12), st.integers(0, 31))
def test_date_including_zero_parts(year: int, month: int, day: int) -> None:
    text = f"{year:04d}-{month:02d}-{day:02d}"
    assert _one(ColumnDef("d", ColumnType.DATE), (year, month, day)) == text


@PROPERTY
@given(st.sampled_from([0, *range(1901, 2156)]))
def test_year(year: int) -> None:
    assert _one(ColumnDef("y", ColumnType.YEAR), year) == year


@PROPERTY
@given(st.data())
def test_bit(data: st.DataObject) -> None:
    bits = data.draw(st.integers(1, 64))
    value = data.draw(st.integers(0, 2**bits - 1))
    assert _one(ColumnDef("b", ColumnType.BIT, bits=bits), value) == value


@PROPERTY
@given(st.data())
def test_enum_and_set(data: st.DataObject) -> None:
    names = data.draw(
        st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=64, unique=True)
    )
    enum_col = ColumnDef(
        "e", ColumnType.ENUM, enum_values=("", *names), size=1 if len(names) < 256 else 2
    )
    index = data.draw(st.integers(0, len(names)))
    assert _one(enum_col, index) == ("", *names)[index]
    set_col = ColumnDef("s", ColumnType.SET, set_values=tuple(names), size=(len(names) + 7) // 8)
    mask = data.draw(st.integers(0, 2 ** len(names) - 1))
    assert _one(set_col, mask) == [n for i, n in enumerate(names) if mask >> i & 1]


@PROPERTY
@given(st.text(max_size=300))
def test_utf8mb4_strings(text: str) -> None:
    raw = text.encode("utf-8")
    for col in (
        ColumnDef("v", ColumnType.VARCHAR, charset="utf8mb4", max_length=1200),
        ColumnDef("c", ColumnType.STRING, charset="utf8mb4", max_length=40),
        ColumnDef("t", ColumnType.BLOB, charset="utf8mb4", length_size=2),
    ):
        if col.type is ColumnType.STRING and len(raw) > 255:
            continue
        assert _one(col, raw) == text


@PROPERTY
@given(st.binary(max_size=300))
def test_latin1_is_mysql_latin1(raw: bytes) -> None:
    expected = "".join(LATIN1_TABLE.get(b, chr(b)) for b in raw)
    col = ColumnDef("v", ColumnType.VARCHAR, charset="latin1", max_length=300)
    assert _one(col, raw) == expected


def test_latin1_matches_windows_1252_where_defined() -> None:
    assert (
        _one(ColumnDef("v", ColumnType.VARCHAR, charset="latin1", max_length=9), b"\x80\xe9")
        == "€é"
    )
    # The five bytes Windows-1252 leaves undefined are the C1 controls in MySQL.
    assert (
        _one(ColumnDef("v", ColumnType.VARCHAR, charset="latin1", max_length=9), b"\x81") == "\x81"
    )


@PROPERTY
@given(st.binary(max_size=300))
def test_binary_is_base64(raw: bytes) -> None:
    for col in (
        ColumnDef("v", ColumnType.VARCHAR, charset="binary", max_length=300),
        ColumnDef("b", ColumnType.BLOB, charset="binary", length_size=4),
    ):
        assert _one(col, raw) == base64.b64encode(raw).decode()


def test_binary_n_gets_its_padding_back() -> None:
    col = ColumnDef("b", ColumnType.STRING, charset="binary", max_length=4)
    assert _one(col, b"ab") == base64.b64encode(b"ab\x00\x00").decode()


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)


@PROPERTY
@given(JSON_VALUES, st.booleans())
def test_mysql_binary_json(value: Any, large: bool) -> None:
    doc = encode_mysql_json(value, large)
    assert parse_mysql_json(doc) == value
    col = ColumnDef("j", ColumnType.JSON, length_size=4)
    assert _one(col, doc) == value


@PROPERTY
@given(JSON_VALUES)
def test_mariadb_json_text_comes_out_as_json(value: Any) -> None:
    col = ColumnDef("j", ColumnType.BLOB, charset="utf8mb4", length_size=4, is_json=True)
    assert _one(col, json.dumps(value).encode()) == value
    assert _one(col, b'  {"a": [1, 2]} \n') == {"a": [1, 2]}
