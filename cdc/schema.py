"""Table definitions built from the binlog's TABLE_MAP events.

A `TableDef` is everything the row decoder and the formatter need to know
about one table at one point of the binlog: column names, binlog types and
their metadata, signedness, character sets, ENUM and SET values, and the
primary key. It is built from the TABLE_MAP event alone, which is only
complete when the server runs with `binlog_row_metadata=FULL`; without that
setting the names are missing and `SchemaError` names the setting.

One fact the binlog does not carry: MariaDB's JSON type is LONGTEXT with a
`CHECK (json_valid(col))` constraint, and its TABLE_MAP entry is a plain BLOB.
Which columns hold JSON is therefore passed in from outside (see
`cdc.decoding.json_columns`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any


class SchemaError(Exception):
    """A TABLE_MAP event cannot be turned into a table definition."""


class ColumnType(IntEnum):
    """Column types as the binlog writes them (MySQL's enum_field_types)."""

    DECIMAL = 0
    TINY = 1
    SHORT = 2
    LONG = 3
    FLOAT = 4
    DOUBLE = 5
    NULL = 6
    TIMESTAMP = 7
    LONGLONG = 8
    INT24 = 9
    DATE = 10
    TIME = 11
    DATETIME = 12
    YEAR = 13
    NEWDATE = 14
    VARCHAR = 15
    BIT = 16
    TIMESTAMP2 = 17
    DATETIME2 = 18
    TIME2 = 19
    JSON = 245
    NEWDECIMAL = 246
    ENUM = 247
    SET = 248
    TINY_BLOB = 249
    MEDIUM_BLOB = 250
    LONG_BLOB = 251
    BLOB = 252
    VAR_STRING = 253
    STRING = 254
    GEOMETRY = 255


INTEGER_TYPES = frozenset(
    {ColumnType.TINY, ColumnType.SHORT, ColumnType.INT24, ColumnType.LONG, ColumnType.LONGLONG}
)
# Columns whose values are date or date-time strings and may be zero dates.
DATE_TYPES = frozenset(
    {
        ColumnType.DATE,
        ColumnType.NEWDATE,
        ColumnType.DATETIME,
        ColumnType.DATETIME2,
        ColumnType.TIMESTAMP,
        ColumnType.TIMESTAMP2,
    }
)

BINARY_CHARSET = "binary"


@dataclass(frozen=True, slots=True)
class ColumnDef:
    """One column as the binlog describes it.

    `charset` is the MySQL character set name ("utf8mb4", "latin1", "binary",
    ...) for string, ENUM and SET columns, else None. `max_length` is the
    maximum byte length of CHAR and VARCHAR columns; `length_size` is the width
    of the length prefix of BLOB, TEXT, JSON and GEOMETRY values.
    """

    name: str
    type: ColumnType
    unsigned: bool = False
    nullable: bool = True
    charset: str | None = None
    collation_id: int | None = None
    max_length: int = 0
    length_size: int = 0
    fsp: int = 0
    precision: int = 0
    scale: int = 0
    bits: int = 0
    size: int = 0
    enum_values: tuple[str, ...] = ()
    set_values: tuple[str, ...] = ()
    is_json: bool = False

    @property
    def is_binary(self) -> bool:
        return self.charset == BINARY_CHARSET


@dataclass(frozen=True, slots=True)
class TableDef:
    """A table at one point of the binlog."""

    table_id: int
    database: str
    table: str
    columns: tuple[ColumnDef, ...]
    primary_key: tuple[str, ...] = ()
    # The decoder cache key: everything that changes how a row is decoded.
    layout: tuple[Any, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layout", tuple(self.columns))

    @property
    def qualified_name(self) -> str:
        return f"{self.database}.{self.table}"

    def column(self, name: str) -> ColumnDef:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(f"{self.qualified_name} has no column {name!r}")


def _charset_name(collation_id: int, dbms: str) -> str:
    # Deferred import: the library is only needed when TABLE_MAP events arrive.
    from pymysqlreplication.constants import CHARSET

    found = CHARSET.charset_by_id(collation_id, dbms)
    if found is None:
        other = "mysql" if dbms == "mariadb" else "mariadb"
        found = CHARSET.charset_by_id(collation_id, other)
    if found is None:
        raise SchemaError(f"unknown collation id {collation_id} ({dbms})")
    name: str = found.name
    return name


def _is_string_column(type_code: int, dbms: str) -> bool:
    if type_code in (
        ColumnType.STRING,
        ColumnType.VAR_STRING,
        ColumnType.VARCHAR,
        ColumnType.BLOB,
    ):
        return True
    # MariaDB also lists a charset for GEOMETRY columns.
    return type_code == ColumnType.GEOMETRY and dbms == "mariadb"


def _null_flags(null_bitmask: bytes, count: int) -> list[bool]:
    return [bool(null_bitmask[i >> 3] & (1 << (i & 7))) for i in range(count)]


def table_def_from_table_map(
    event: Any,
    *,
    json_columns: Iterable[str] = (),
    position: str = "?",
) -> TableDef:
    """Build a TableDef from a mysql-replication TableMapEvent.

    `json_columns` names the columns that hold JSON although the binlog shows
    them as LONGTEXT (MariaDB). `position` ("file:pos") goes into errors.
    """
    where = f"TABLE_MAP of {event.schema}.{event.table} at {position}"
    meta = event.optional_metadata
    names: list[str] = list(meta.column_name_list)
    count = len(event.columns)
    if len(names) != count:
        raise SchemaError(
            f"{where} carries no column names: set binlog_row_metadata=FULL on the server"
        )
    dbms = getattr(event, "dbms", None) or "mysql"
    json_set = frozenset(json_columns)
    unsigned_flags = list(meta.unsigned_column_list or [])
    nullable = _null_flags(bytes(event.null_bitmask), count)
    charset_ids = list(meta.charset_collation_list or [])
    enum_set_charset_ids = list(meta.enum_and_set_collation_list or [])
    enum_values_list = list(meta.set_enum_str_value_list or [])
    set_values_list = list(meta.set_str_value_list or [])
    pk_indexes = list(meta.simple_primary_key_list or []) + sorted(
        (meta.primary_keys_with_prefix or {}).keys()
    )

    columns: list[ColumnDef] = []
    text_pos = enum_set_pos = enum_pos = set_pos = 0
    for index, lib_col in enumerate(event.columns):
        type_code = int(lib_col.type)
        try:
            col_type = ColumnType(type_code)
        except ValueError:
            raise SchemaError(
                f"{where}: column {names[index]!r} has unknown type {type_code}"
            ) from None
        charset: str | None = None
        collation_id: int | None = None
        enum_values: tuple[str, ...] = ()
        set_values: tuple[str, ...] = ()
        try:
            if _is_string_column(type_code, dbms):
                collation_id = int(charset_ids[text_pos])
                text_pos += 1
                charset = _charset_name(collation_id, dbms)
            elif col_type in (ColumnType.ENUM, ColumnType.SET):
                collation_id = int(enum_set_charset_ids[enum_set_pos])
                enum_set_pos += 1
                charset = _charset_name(collation_id, dbms)
                if col_type is ColumnType.ENUM:
                    enum_values = ("", *enum_values_list[enum_pos])
                    enum_pos += 1
                else:
                    set_values = tuple(set_values_list[set_pos])
                    set_pos += 1
        except IndexError:
            raise SchemaError(
                f"{where}: charset or ENUM/SET values missing for column {names[index]!r}: "
                "set binlog_row_metadata=FULL on the server"
            ) from None
        except SchemaError as exc:
            raise SchemaError(f"{where}: column {names[index]!r}: {exc}") from None
        columns.append(
            ColumnDef(
                name=names[index],
                type=col_type,
                unsigned=bool(unsigned_flags[index]) if index < len(unsigned_flags) else False,
                nullable=nullable[index],
                charset=charset,
                collation_id=collation_id,
                max_length=int(getattr(lib_col, "max_length", 0) or 0),
                length_size=int(getattr(lib_col, "length_size", 0) or 0),
                fsp=int(getattr(lib_col, "fsp", 0) or 0),
                precision=int(getattr(lib_col, "precision", 0) or 0),
                scale=int(getattr(lib_col, "decimals", 0) or 0),
                bits=int(getattr(lib_col, "bits", 0) or 0),
                size=int(getattr(lib_col, "size", 0) or 0),
                enum_values=enum_values,
                set_values=set_values,
                is_json=col_type is ColumnType.JSON
                or (names[index] in json_set and col_type is ColumnType.BLOB),
            )
        )
    primary_key = tuple(names[i] for i in pk_indexes if 0 <= i < count)
    return TableDef(
        table_id=int(event.table_id),
        database=str(event.schema),
        table=str(event.table),
        columns=tuple(columns),
        primary_key=primary_key,
    )
