"""The native fast path: rows event bodies to Maxwell JSON text in compiled code.

`shardctl_native` (the Rust crate in `native/`) takes a table's column layout
once and then, per rows event, decodes every row and writes the JSON text of
`data` (and `old` for updates) and of the primary key values, byte for byte
what the Python decoder and formatter write. Python then only joins the
per-transaction fields around them and produces.

Which path a table takes is decided once per column layout, here: every column
type, charset and option the native code supports, or the Python path for the
whole table (the reason is logged). A rows event the native code refuses (a
value the server cannot have written) is decoded again by the Python path,
which names the binlog position, table and column when it fails too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cdc.decoding.columns import UnsupportedColumn, int_struct, length_prefix_size
from cdc.decoding.values import text_decoder
from cdc.json_text import encode
from cdc.schema import ColumnDef, ColumnType, TableDef


class NativeLayout(Protocol):
    """What `shardctl_native.RowLayout` offers."""

    def decode(self, update: bool, body: bytes) -> list[tuple[Any, ...]]: ...


try:
    import shardctl_native as _native

    NATIVE_IMPORT_ERROR: str | None = None
except ImportError as exc:  # the package is optional: the Python path does all
    _native = None
    NATIVE_IMPORT_ERROR = str(exc)


def native_available() -> bool:
    return _native is not None


@dataclass(frozen=True, slots=True)
class NativeOptions:
    """The message-form options that change values (`cdc.formatter.FormatterOptions`)."""

    null_zerodates: bool = False
    decimal_as_string: bool = False


# Character sets of one byte per character: the native code decodes them with a
# table that the Python codec itself fills (`_byte_table`).
SINGLE_BYTE_CHARSETS = frozenset(
    {
        "latin1",
        "ascii",
        "latin2",
        "latin5",
        "latin7",
        "greek",
        "hebrew",
        "cp1250",
        "cp1251",
        "cp1256",
        "cp1257",
        "cp850",
        "cp852",
        "cp866",
        "koi8r",
        "koi8u",
        "tis620",
    }
)
UTF8_CHARSETS = frozenset({"utf8mb4", "utf8mb3", "utf8"})

_byte_tables: dict[str, list[str | None]] = {}

ColumnSpec = tuple[str, str, str, int, int, list[str], list[str | None] | None]


def _byte_table(charset: str) -> list[str | None]:
    """The JSON-escaped text of each byte in `charset` (None: not text), from the
    same decoder the Python path uses."""
    table = _byte_tables.get(charset)
    if table is None:
        decode = text_decoder(charset)
        table = []
        for byte in range(256):
            try:
                text = decode(bytes([byte]))
            except UnicodeDecodeError:
                table.append(None)
                continue
            if len(text) != 1:
                raise UnsupportedColumn(f"character set {charset!r} is not one byte a character")
            table.append(encode(text)[1:-1])
        _byte_tables[charset] = table
    return table


def _kind(col: ColumnDef) -> tuple[str, int, int, list[str], list[str | None] | None]:
    """(kind, a, b, members, byte table) of a column; UnsupportedColumn if the
    native code does not read it."""
    t = col.type
    if col.is_json or t is ColumnType.JSON:
        raise UnsupportedColumn("JSON values")
    fmt = int_struct(col)
    if fmt is not None:
        return "int", fmt.size, int(col.unsigned), [], None
    if t is ColumnType.INT24:
        return "int", 3, int(col.unsigned), [], None
    if t is ColumnType.YEAR:
        return "year", 0, 0, [], None
    if t is ColumnType.BIT and 1 <= col.bits <= 64:
        return "bit", col.bits, 0, [], None
    if t is ColumnType.DOUBLE:
        return "double", 0, 0, [], None
    if t is ColumnType.NEWDECIMAL:
        return "decimal", col.precision, col.scale, [], None
    if t in (ColumnType.DATE, ColumnType.NEWDATE):
        return "date", 0, 0, [], None
    if t is ColumnType.DATETIME2:
        return "datetime2", col.fsp, 0, [], None
    if t is ColumnType.TIMESTAMP2:
        return "timestamp2", col.fsp, 0, [], None
    if t is ColumnType.TIME2:
        return "time2", col.fsp, 0, [], None
    if t is ColumnType.ENUM and col.size in (1, 2) and col.enum_values:
        return "enum", col.size, 0, [encode(v) for v in col.enum_values], None
    if t is ColumnType.SET and 1 <= col.size <= 8 and 0 < len(col.set_values) <= 64:
        return "set", col.size, 0, [encode(v) for v in col.set_values], None
    if t in (ColumnType.VARCHAR, ColumnType.VAR_STRING, ColumnType.STRING, ColumnType.BLOB):
        prefix = length_prefix_size(col)
        charset = col.charset
        if col.is_binary:
            width = col.max_length if t is ColumnType.STRING else 0
            if t is ColumnType.STRING and width <= 0:
                raise UnsupportedColumn("BINARY(0)")
            return "binary", prefix, width, [], None
        if charset in UTF8_CHARSETS:
            return "utf8", prefix, 0, [], None
        if charset in SINGLE_BYTE_CHARSETS:
            return "bytes", prefix, 0, [], _byte_table(charset)
        raise UnsupportedColumn(f"character set {charset!r}")
    raise UnsupportedColumn(f"type {t.name}")


def native_layout(table: TableDef, options: NativeOptions) -> tuple[NativeLayout | None, str]:
    """The native layout of `table`, or None and the reason the Python path reads it."""
    if _native is None:
        return None, f"the native module is not installed ({NATIVE_IMPORT_ERROR})"
    if not table.columns:
        return None, "a table without columns"
    specs: list[ColumnSpec] = []
    for col in table.columns:
        try:
            kind, a, b, members, byte_table = _kind(col)
        except UnsupportedColumn as exc:
            return None, f"column {col.name!r}: {exc} not in the native decoder"
        specs.append((col.name, encode(col.name), kind, a, b, members, byte_table))
    names = [c.name for c in table.columns]
    if len(set(names)) != len(names):
        return None, "duplicate column names"
    try:
        primary_key = [names.index(pk) for pk in table.primary_key]
    except ValueError:
        return None, f"primary key {list(table.primary_key)} names an unknown column"
    try:
        layout: NativeLayout = _native.RowLayout(
            specs, primary_key, options.null_zerodates, options.decimal_as_string
        )
    except ValueError as exc:
        return None, str(exc)
    return layout, "native"


def full_bitmap(bitmap: bytes, count: int) -> bool:
    """True when the columns-present bitmap names every one of `count` columns."""
    return len(bitmap) == (count + 7) // 8 and all(
        bitmap[i >> 3] >> (i & 7) & 1 for i in range(count)
    )


__all__: Sequence[str] = [
    "NATIVE_IMPORT_ERROR",
    "NativeLayout",
    "NativeOptions",
    "full_bitmap",
    "native_available",
    "native_layout",
]
