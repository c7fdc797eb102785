"""ENUM and SET member names from the raw TABLE_MAP event, in each column's charset.

mysql-replication decodes member names as UTF-8 and turns any member that is
not valid UTF-8 into "" (so `ENUM('café') CHARACTER SET latin1` would publish
""). Here the TABLE_MAP body is read again from its bytes, following the
documented layout (MySQL `Table_map_log_event`, optional metadata written with
`binlog_row_metadata=FULL`):

    post-header: table id (6) + flags (2)
    schema: length (1), name, 0x00; table: length (1), name, 0x00
    column count (packed int), column types (one byte each)
    metadata length (packed int), metadata; NULL bitmap ((count + 7) / 8 bytes)
    optional metadata: TLV fields up to the checksum:
        type (1 byte), length (packed int), value

The fields read here:
    SET_STR_VALUE (5) / ENUM_STR_VALUE (6): per SET / ENUM column, in column
        order: member count (packed int), then per member its length (packed
        int) and bytes.
    ENUM_AND_SET_DEFAULT_CHARSET (10): default collation (packed int), then
        (index among ENUM/SET columns, collation) pairs for the others.
    ENUM_AND_SET_COLUMN_CHARSET (11): one collation per ENUM/SET column.

The member bytes are in the column's character set; a `binary` column's
members are the bytes of the DDL text, published as UTF-8 text (what a
Maxwell schema read back over a UTF-8 connection holds).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from cdc.decoding.errors import DecodeError
from cdc.decoding.values import text_decoder
from cdc.schema import BINARY_CHARSET, ColumnType, TableDef

SET_STR_VALUE = 5
ENUM_STR_VALUE = 6
ENUM_AND_SET_DEFAULT_CHARSET = 10
ENUM_AND_SET_COLUMN_CHARSET = 11

# The TABLE_MAP post-header: a 6-byte table id and 2 bytes of flags.
_POST_HEADER = 8


class MetadataError(ValueError):
    """The TABLE_MAP bytes do not follow the documented layout."""


@dataclasses.dataclass(frozen=True, slots=True)
class EnumSetMetadata:
    """The ENUM/SET part of a TABLE_MAP's optional metadata.

    `members` and `collations` are in ENUM/SET column order (ENUM and SET
    columns together, as the columns appear); `collations` is empty when the
    event carries no ENUM/SET charset field.
    """

    members: tuple[tuple[bytes, ...], ...]
    collations: tuple[int, ...]


def _packed_int(buf: bytes, p: int) -> tuple[int, int]:
    """A packed (length-encoded) integer at `p`: value and the next offset."""
    if p >= len(buf):
        raise MetadataError(f"packed integer past the end at byte {p}")
    first = buf[p]
    if first < 0xFB:
        return first, p + 1
    widths = {0xFC: 2, 0xFD: 3, 0xFE: 8}
    width = widths.get(first)
    if width is None:
        raise MetadataError(f"invalid packed integer prefix {first:#x} at byte {p}")
    if p + 1 + width > len(buf):
        raise MetadataError(f"packed integer past the end at byte {p}")
    return int.from_bytes(buf[p + 1 : p + 1 + width], "little"), p + 1 + width


def _take(buf: bytes, p: int, n: int, what: str) -> tuple[bytes, int]:
    if n < 0 or p + n > len(buf):
        raise MetadataError(f"{what} of {n} bytes at byte {p} runs past the end ({len(buf)})")
    return buf[p : p + n], p + n


def optional_metadata(body: bytes, schema: str, table: str) -> bytes:
    """The optional metadata TLV bytes of a TABLE_MAP event body (no header, no
    checksum). `schema` and `table` are checked against the body."""
    p = _POST_HEADER
    for expected, what in ((schema, "database"), (table, "table")):
        length_byte, p = _take(body, p, 1, f"{what} name length")
        name, p = _take(body, p, length_byte[0], f"{what} name")
        if name != expected.encode("utf-8"):
            raise MetadataError(f"{what} name in the body is {name!r}, expected {expected!r}")
        terminator, p = _take(body, p, 1, f"{what} name terminator")
        if terminator != b"\x00":
            raise MetadataError(f"{what} name is not followed by 0x00")
    count, p = _packed_int(body, p)
    _, p = _take(body, p, count, "column types")
    meta_length, p = _packed_int(body, p)
    _, p = _take(body, p, meta_length, "column metadata")
    _, p = _take(body, p, (count + 7) // 8, "NULL bitmap")
    return body[p:]


def _member_lists(value: bytes) -> list[tuple[bytes, ...]]:
    lists: list[tuple[bytes, ...]] = []
    p = 0
    while p < len(value):
        count, p = _packed_int(value, p)
        members: list[bytes] = []
        for _ in range(count):
            length, p = _packed_int(value, p)
            member, p = _take(value, p, length, "member")
            members.append(member)
        lists.append(tuple(members))
    return lists


def _ints(value: bytes) -> list[int]:
    out: list[int] = []
    p = 0
    while p < len(value):
        number, p = _packed_int(value, p)
        out.append(number)
    return out


def parse_enum_set_metadata(tlv: bytes, kinds: Sequence[ColumnType]) -> EnumSetMetadata:
    """The ENUM/SET members and collations of optional metadata `tlv`.

    `kinds` are the real types of the table's columns (ENUM and SET as such,
    not as the STRING the type byte shows), in column order.
    """
    enum_set = [k for k in kinds if k in (ColumnType.ENUM, ColumnType.SET)]
    enum_lists: list[tuple[bytes, ...]] = []
    set_lists: list[tuple[bytes, ...]] = []
    collations: list[int] = []
    p = 0
    while p < len(tlv):
        field_type = tlv[p]
        length, p = _packed_int(tlv, p + 1)
        value, p = _take(tlv, p, length, f"optional metadata field {field_type}")
        if field_type == ENUM_STR_VALUE:
            enum_lists = _member_lists(value)
        elif field_type == SET_STR_VALUE:
            set_lists = _member_lists(value)
        elif field_type == ENUM_AND_SET_COLUMN_CHARSET:
            collations = _ints(value)
            if len(collations) != len(enum_set):
                raise MetadataError(
                    f"{len(collations)} ENUM/SET collations for {len(enum_set)} columns"
                )
        elif field_type == ENUM_AND_SET_DEFAULT_CHARSET:
            numbers = _ints(value)
            if not numbers or len(numbers) % 2 != 1:
                raise MetadataError("ENUM/SET default charset field is not default + pairs")
            collations = [numbers[0]] * len(enum_set)
            for k in range(1, len(numbers), 2):
                index, collation = numbers[k], numbers[k + 1]
                if index >= len(enum_set):
                    raise MetadataError(f"ENUM/SET charset for column {index} of {len(enum_set)}")
                collations[index] = collation
    n_enum = sum(1 for k in enum_set if k is ColumnType.ENUM)
    if len(enum_lists) != n_enum or len(set_lists) != len(enum_set) - n_enum:
        raise MetadataError(
            f"{len(enum_lists)} ENUM and {len(set_lists)} SET member lists for "
            f"{n_enum} ENUM and {len(enum_set) - n_enum} SET columns"
        )
    enum_iter, set_iter = iter(enum_lists), iter(set_lists)
    members = tuple(next(enum_iter) if k is ColumnType.ENUM else next(set_iter) for k in enum_set)
    return EnumSetMetadata(members=members, collations=tuple(collations))


def decode_member(raw: bytes, charset: str) -> str:
    """One member's text in `charset`; raises ValueError when it does not decode."""
    if charset == BINARY_CHARSET:
        return raw.decode("utf-8")
    return text_decoder(charset)(raw)


def table_map_body(event: Any) -> bytes:
    """The body of a library TableMapEvent: after the header, before the checksum."""
    data = bytes(event.packet.packet._data)
    # The packet starts with the OK byte and the 19-byte event header; the
    # event's `event_size` is the body without header and checksum.
    start = 1 + 19
    size = int(event.event_size)
    if len(data) < start + size:
        raise MetadataError(f"event holds {len(data) - start} body bytes, header says {size}")
    return data[start : start + size]


def with_decoded_members(table: TableDef, event: Any, position: str) -> TableDef:
    """`table` with its ENUM and SET member names decoded from the raw TABLE_MAP
    of `event` in each column's character set.

    Raises DecodeError (position, table, column) for a member that does not
    decode, or when the metadata disagrees with the table definition.
    """
    kinds = [c.type for c in table.columns]
    if ColumnType.ENUM not in kinds and ColumnType.SET not in kinds:
        return table
    name = table.qualified_name
    try:
        tlv = optional_metadata(table_map_body(event), table.database, table.table)
        meta = parse_enum_set_metadata(tlv, kinds)
    except MetadataError as exc:
        raise DecodeError(
            f"TABLE_MAP ENUM/SET metadata: {exc}", position=position, table=name
        ) from None
    columns = list(table.columns)
    slot = 0
    for index, col in enumerate(columns):
        if col.type not in (ColumnType.ENUM, ColumnType.SET):
            continue
        raw_members = meta.members[slot]
        if meta.collations and meta.collations[slot] != col.collation_id:
            raise DecodeError(
                f"ENUM/SET collation {meta.collations[slot]} in the raw metadata, "
                f"{col.collation_id} in the parsed event",
                position=position,
                table=name,
                column=col.name,
            )
        slot += 1
        charset = col.charset
        if charset is None:
            raise DecodeError(
                "ENUM/SET column has no character set",
                position=position,
                table=name,
                column=col.name,
            )
        texts: list[str] = []
        for number, raw in enumerate(raw_members, start=1):
            try:
                texts.append(decode_member(raw, charset))
            except (ValueError, UnicodeDecodeError) as exc:
                reason = exc.reason if isinstance(exc, UnicodeDecodeError) else str(exc)
                if charset == BINARY_CHARSET:
                    reason += " (a binary column's members are published as UTF-8 text)"
                raise DecodeError(
                    f"member {number} ({raw!r}) does not decode in character set "
                    f"{charset}: {reason}",
                    position=position,
                    table=name,
                    column=col.name,
                ) from None
        if col.type is ColumnType.ENUM:
            # Index 0 is the empty string MySQL stores for an invalid value.
            columns[index] = dataclasses.replace(col, enum_values=("", *texts))
        else:
            columns[index] = dataclasses.replace(col, set_values=tuple(texts))
    return dataclasses.replace(table, columns=tuple(columns))
