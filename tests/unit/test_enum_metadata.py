"""ENUM/SET member names from raw TABLE_MAP bytes.

The bytes are built here from the documented layout (MySQL's
`Table_map_log_event` and its optional metadata, `binlog_row_metadata=FULL`;
MariaDB writes the same): TLV fields of type (1 byte), length (packed
integer), value; ENUM_STR_VALUE (6) and SET_STR_VALUE (5) hold, per column,
a member count and length-prefixed members; ENUM_AND_SET_DEFAULT_CHARSET (10)
a default collation and (index, collation) pairs; ENUM_AND_SET_COLUMN_CHARSET
(11) one collation per ENUM/SET column. Packed integers: < 0xFB is the value,
0xFC/0xFD/0xFE prefix 2/3/8 little-endian bytes.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc.decoding import DecodeError
from cdc.decoding.table_map_members import (
    ENUM_AND_SET_COLUMN_CHARSET,
    ENUM_AND_SET_DEFAULT_CHARSET,
    ENUM_STR_VALUE,
    SET_STR_VALUE,
    MetadataError,
    decode_member,
    optional_metadata,
    parse_enum_set_metadata,
    with_decoded_members,
)
from cdc.schema import ColumnDef, ColumnType, TableDef

LATIN1_SWEDISH_CI = 8
CP1251_GENERAL_CI = 51
BINARY = 63
UTF8MB4_GENERAL_CI = 45


def packed(n: int) -> bytes:
    if n < 0xFB:
        return bytes([n])
    if n < 1 << 16:
        return b"\xfc" + n.to_bytes(2, "little")
    if n < 1 << 24:
        return b"\xfd" + n.to_bytes(3, "little")
    return b"\xfe" + n.to_bytes(8, "little")


def field(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + packed(len(value)) + value


def member_lists(lists: list[list[bytes]]) -> bytes:
    out = b""
    for members in lists:
        out += packed(len(members)) + b"".join(packed(len(m)) + m for m in members)
    return out


def ints(values: list[int]) -> bytes:
    return b"".join(packed(v) for v in values)


def table_map_body(schema: bytes, table: bytes, type_bytes: bytes, tlv: bytes) -> bytes:
    """A TABLE_MAP body; ENUM/SET show as STRING (254) with 2 metadata bytes."""
    metadata = b"".join(b"\xf7\x01" if t == 0xFE else b"" for t in type_bytes)
    return (
        (123).to_bytes(6, "little")
        + b"\x01\x00"
        + bytes([len(schema)])
        + schema
        + b"\x00"
        + bytes([len(table)])
        + table
        + b"\x00"
        + packed(len(type_bytes))
        + type_bytes
        + packed(len(metadata))
        + metadata
        + b"\xff" * ((len(type_bytes) + 7) // 8)
        + tlv
    )


def test_packed_integer_prefixes() -> None:
    long_member = b"a" * 300
    tlv = field(ENUM_STR_VALUE, member_lists([[long_member, b""]]))
    meta = parse_enum_set_metadata(tlv, [ColumnType.ENUM])
    assert meta.members == ((long_member, b""),)
    assert meta.collations == ()


def test_enum_and_set_lists_interleave_in_column_order() -> None:
    kinds = [ColumnType.SET, ColumnType.LONG, ColumnType.ENUM, ColumnType.SET]
    tlv = (
        field(ENUM_STR_VALUE, member_lists([[b"caf\xe9", b"\xc4"]]))
        + field(SET_STR_VALUE, member_lists([[b"x"], [b"\xef\xf0", b"y"]]))
        + field(ENUM_AND_SET_DEFAULT_CHARSET, ints([LATIN1_SWEDISH_CI, 2, CP1251_GENERAL_CI]))
    )
    meta = parse_enum_set_metadata(tlv, kinds)
    assert meta.members == ((b"x",), (b"caf\xe9", b"\xc4"), (b"\xef\xf0", b"y"))
    assert meta.collations == (LATIN1_SWEDISH_CI, LATIN1_SWEDISH_CI, CP1251_GENERAL_CI)


def test_column_charset_field_gives_one_collation_per_column() -> None:
    kinds = [ColumnType.ENUM, ColumnType.ENUM]
    tlv = field(ENUM_STR_VALUE, member_lists([[b"a"], [b"b"]])) + field(
        ENUM_AND_SET_COLUMN_CHARSET, ints([BINARY, CP1251_GENERAL_CI])
    )
    assert parse_enum_set_metadata(tlv, kinds).collations == (BINARY, CP1251_GENERAL_CI)


def test_other_fields_are_skipped() -> None:
    column_names = field(4, b"\x02id\x01e")
    tlv = column_names + field(ENUM_STR_VALUE, member_lists([[b"a"]])) + field(1, b"\x80")
    assert parse_enum_set_metadata(tlv, [ColumnType.LONG, ColumnType.ENUM]).members == ((b"a",),)


@pytest.mark.parametrize(
    "tlv",
    [
        field(ENUM_STR_VALUE, member_lists([[b"abc"]]))[:-1],  # member cut short
        field(ENUM_STR_VALUE, b"\x01\x05ab"),  # length field says 5, value holds 2
        field(ENUM_STR_VALUE, b"\x01\xfb"),  # 0xFB is not a packed integer prefix
        b"",  # no member list for the ENUM column
        field(ENUM_STR_VALUE, member_lists([[b"a"], [b"b"]])),  # two lists, one column
        field(ENUM_STR_VALUE, member_lists([[b"a"]]))
        + field(ENUM_AND_SET_COLUMN_CHARSET, ints([8, 8])),  # two collations, one column
        field(ENUM_STR_VALUE, member_lists([[b"a"]]))
        + field(ENUM_AND_SET_DEFAULT_CHARSET, ints([8, 3, 8])),  # index past the columns
    ],
)
def test_damaged_metadata_is_refused(tlv: bytes) -> None:
    with pytest.raises(MetadataError):
        parse_enum_set_metadata(tlv, [ColumnType.ENUM])


@given(
    st.lists(st.tuples(st.booleans(), st.lists(st.binary(max_size=300), max_size=5)), max_size=6)
)
def test_members_round_trip_through_the_documented_layout(
    columns: list[tuple[bool, list[bytes]]],
) -> None:
    kinds = [ColumnType.ENUM if is_enum else ColumnType.SET for is_enum, _ in columns]
    enums = [members for is_enum, members in columns if is_enum]
    sets = [members for is_enum, members in columns if not is_enum]
    tlv = b""
    if enums:
        tlv += field(ENUM_STR_VALUE, member_lists(enums))
    if sets:
        tlv += field(SET_STR_VALUE, member_lists(sets))
    meta = parse_enum_set_metadata(tlv, kinds)
    assert meta.members == tuple(tuple(members) for _, members in columns)


def test_optional_metadata_is_found_after_the_null_bitmap() -> None:
    tlv = field(ENUM_STR_VALUE, member_lists([[b"a"]]))
    body = table_map_body(b"db", b"t", bytes([3] * 9 + [0xFE]), tlv)
    assert optional_metadata(body, "db", "t") == tlv
    with pytest.raises(MetadataError):
        optional_metadata(body, "db", "other")


@pytest.mark.parametrize(
    ("raw", "charset", "text"),
    [
        (b"caf\xe9", "latin1", "café"),
        (b"\x80", "latin1", "€"),  # MySQL's latin1 is Windows-1252
        (b"\xef\xf0\xe8\xe2\xe5\xf2", "cp1251", "привет"),
        (b"caf\xc3\xa9", "binary", "café"),
        (b"", "latin1", ""),
    ],
)
def test_members_decode_in_their_charset(raw: bytes, charset: str, text: str) -> None:
    assert decode_member(raw, charset) == text


def _event(body: bytes) -> SimpleNamespace:
    header = b"\x00" + bytes(19)
    return SimpleNamespace(
        packet=SimpleNamespace(packet=SimpleNamespace(_data=header + body + b"CRC!")),
        event_size=len(body),
    )


def _table(charset: str, collation: int) -> TableDef:
    return TableDef(
        table_id=123,
        database="db",
        table="t",
        columns=(
            ColumnDef("id", ColumnType.LONG),
            # What the library hands over: a non-UTF-8 member blanked to "".
            ColumnDef(
                "e",
                ColumnType.ENUM,
                charset=charset,
                collation_id=collation,
                size=1,
                enum_values=("", "", "b"),
            ),
        ),
        primary_key=("id",),
    )


def test_table_members_are_replaced_by_the_decoded_ones() -> None:
    tlv = field(ENUM_STR_VALUE, member_lists([[b"caf\xe9", b"b"]])) + field(
        ENUM_AND_SET_DEFAULT_CHARSET, ints([LATIN1_SWEDISH_CI])
    )
    event = _event(table_map_body(b"db", b"t", bytes([3, 0xFE]), tlv))
    table = with_decoded_members(_table("latin1", LATIN1_SWEDISH_CI), event, "bin.000001:4")
    assert table.column("e").enum_values == ("", "café", "b")
    assert table.column("id") == ColumnDef("id", ColumnType.LONG)


def test_an_undecodable_member_names_position_table_and_column() -> None:
    tlv = field(ENUM_STR_VALUE, member_lists([[b"b", b"\xe9"]])) + field(
        ENUM_AND_SET_COLUMN_CHARSET, ints([BINARY])
    )
    event = _event(table_map_body(b"db", b"t", bytes([3, 0xFE]), tlv))
    with pytest.raises(DecodeError) as caught:
        with_decoded_members(_table("binary", BINARY), event, "bin.000001:4")
    assert (caught.value.position, caught.value.table, caught.value.column) == (
        "bin.000001:4",
        "db.t",
        "e",
    )
    assert "member 2" in caught.value.reason


def test_a_collation_that_disagrees_with_the_event_stops() -> None:
    tlv = field(ENUM_STR_VALUE, member_lists([[b"a"]])) + field(
        ENUM_AND_SET_COLUMN_CHARSET, ints([UTF8MB4_GENERAL_CI])
    )
    event = _event(table_map_body(b"db", b"t", bytes([3, 0xFE]), tlv))
    with pytest.raises(DecodeError, match="collation"):
        with_decoded_members(_table("latin1", LATIN1_SWEDISH_CI), event, "bin.000001:4")
