"""Row readers compiled per column layout.

A row in a rows event is a NULL bitmap (one bit per present column) followed by
the non-NULL values in column order. The generic way to read it, as the
replication library does, dispatches on the column type for every value. Here
the dispatch happens once per layout: `compile_row_reader` writes the source of
one Python function for the layout (integers and strings inlined, runs of
fixed-width numbers merged into one struct.unpack_from, everything else a call
to the column's reader) and compiles it.

The compiled function checks bounds only once, at the end of the row; when it
fails in any way, the caller decodes the row again with `careful_row_reader`,
which checks every step and names the column. The two must agree on every
input (a property test holds them to it).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any

from cdc.decoding.columns import column_reader, int_struct, length_prefix_size, value_converter
from cdc.decoding.values import double_value, float32_value
from cdc.schema import ColumnDef, ColumnType

RowReader = Callable[[bytes, int, int], tuple[dict[str, Any], int]]

# Errors the compiled reader may raise on bad input; any of them sends the row
# to the careful reader.
FAST_PATH_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    IndexError,
    KeyError,
    TypeError,
    OverflowError,
    RecursionError,
    struct.error,
)


class ColumnDecodeError(ValueError):
    """A value failed to decode; carries the column name."""

    def __init__(self, column: str, reason: str) -> None:
        self.column = column
        self.reason = reason
        super().__init__(f"column {column!r}: {reason}")


def null_bitmap_size(present: Sequence[int]) -> int:
    return (len(present) + 7) // 8


def careful_row_reader(columns: Sequence[ColumnDef], present: Sequence[int]) -> RowReader:
    """The reference reader: one checked step per column. `n` must be len(buf)."""
    readers = [(columns[i].name, column_reader(columns[i])) for i in present]
    nbl = null_bitmap_size(present)

    def read_row(buf: bytes, p: int, n: int) -> tuple[dict[str, Any], int]:
        if p + nbl > n:
            raise ColumnDecodeError("(null bitmap)", "truncated row")
        nulls = int.from_bytes(buf[p : p + nbl], "little")
        p += nbl
        row: dict[str, Any] = {}
        for j, (name, reader) in enumerate(readers):
            if nulls >> j & 1:
                row[name] = None
                continue
            try:
                row[name], p = reader(buf, p)
            except FAST_PATH_ERRORS as exc:
                raise ColumnDecodeError(name, str(exc) or type(exc).__name__) from None
        return row, p

    return read_row


# Fixed-width numbers that can share one struct.unpack_from.
_MERGEABLE_FLOATS = {ColumnType.FLOAT: ("f", "_f32"), ColumnType.DOUBLE: ("d", "_dbl")}


def _mergeable(col: ColumnDef) -> tuple[str, str | None] | None:
    fmt = int_struct(col)
    if fmt is not None:
        return fmt.format[-1], None
    return _MERGEABLE_FLOATS.get(col.type)


class _Source:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.names: dict[str, Any] = {
            "_f32": float32_value,
            "_dbl": double_value,
            "_from_bytes": int.from_bytes,
        }

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    def bind(self, name: str, value: Any) -> str:
        self.names[name] = value
        return name


def _emit_value(src: _Source, indent: int, col: ColumnDef, var: str, index: int) -> None:
    """Code that reads one non-NULL value of `col` at `p` into `var`."""
    t = col.type
    fmt = int_struct(col)
    if fmt is not None:
        if fmt.size == 1 and col.unsigned:
            src.emit(indent, f"{var} = buf[p]")
        else:
            unpack = src.bind(f"_s{index}", fmt.unpack_from)
            src.emit(indent, f"{var} = {unpack}(buf, p)[0]")
        src.emit(indent, f"p += {fmt.size}")
        return
    if t is ColumnType.INT24:
        signed = "False" if col.unsigned else "True"
        src.emit(indent, f"{var} = _from_bytes(buf[p:p + 3], 'little', signed={signed})")
        src.emit(indent, "p += 3")
        return
    if t in (ColumnType.VARCHAR, ColumnType.VAR_STRING, ColumnType.STRING, ColumnType.BLOB):
        prefix = length_prefix_size(col)
        if prefix == 1:
            src.emit(indent, "n_ = buf[p]")
        else:
            src.emit(indent, f"n_ = _from_bytes(buf[p:p + {prefix}], 'little')")
        src.emit(indent, f"p += {prefix}")
        if col.charset in ("utf8mb4", "utf8mb3", "utf8") and not col.is_json:
            src.emit(indent, f"{var} = buf[p:p + n_].decode('utf-8')")
        else:
            convert = src.bind(f"_c{index}", value_converter(col))
            src.emit(indent, f"{var} = {convert}(buf[p:p + n_])")
        src.emit(indent, "p += n_")
        return
    if t is ColumnType.ENUM and col.size == 1:
        # An index past the values raises IndexError: the careful reader reports it.
        values = src.bind(f"_e{index}", col.enum_values)
        src.emit(indent, f"{var} = {values}[buf[p]]")
        src.emit(indent, "p += 1")
        return
    if t is ColumnType.DOUBLE:
        unpack = src.bind(f"_s{index}", struct.Struct("<d").unpack_from)
        src.emit(indent, f"{var} = {unpack}(buf, p)[0]")
        src.emit(indent, "p += 8")
        # x - x is 0.0 for finite x, NaN (truthy) for NaN and infinities.
        src.emit(indent, f"if {var} - {var}:")
        src.emit(indent + 1, "raise ValueError('DOUBLE is not finite')")
        return
    reader = src.bind(f"_r{index}", column_reader(col))
    src.emit(indent, f"{var}, p = {reader}(buf, p)")


def _emit_straight(src: _Source, cols: list[tuple[int, ColumnDef]]) -> None:
    """Code for a row without NULLs: merge runs of fixed-width numbers."""
    k = 0
    while k < len(cols):
        run: list[tuple[int, ColumnDef, str, str | None]] = []
        while k < len(cols):
            j, col = cols[k]
            spec = _mergeable(col)
            if spec is None:
                break
            run.append((j, col, spec[0], spec[1]))
            k += 1
        if len(run) > 1:
            fmt = struct.Struct("<" + "".join(code for _, _, code, _ in run))
            unpack = src.bind(f"_m{run[0][0]}", fmt.unpack_from)
            targets = ", ".join(f"v{j}" for j, _, _, _ in run)
            src.emit(2, f"{targets} = {unpack}(buf, p)")
            src.emit(2, f"p += {fmt.size}")
            for j, _, _, post in run:
                if post:
                    src.emit(2, f"v{j} = {post}(v{j})")
        elif run:
            j, col, _, _ = run[0]
            _emit_value(src, 2, col, f"v{j}", j)
        if k < len(cols):
            j, col = cols[k]
            _emit_value(src, 2, col, f"v{j}", j)
            k += 1


def compile_row_reader(columns: Sequence[ColumnDef], present: Sequence[int]) -> RowReader:
    """The fast reader of rows whose present columns are `present` (indexes)."""
    cols = [(j, columns[i]) for j, i in enumerate(present)]
    nbl = null_bitmap_size(present)
    src = _Source()
    src.emit(0, "def read_row(buf, p, n):")
    if nbl == 1:
        src.emit(1, "nulls = buf[p]")
    else:
        src.emit(1, f"nulls = _from_bytes(buf[p:p + {nbl}], 'little')")
    src.emit(1, f"p += {nbl}")
    src.emit(1, "if not nulls:")
    _emit_straight(src, cols)
    if not cols:
        src.emit(2, "pass")
    src.emit(1, "else:")
    for j, col in cols:
        src.emit(2, f"if nulls & {1 << j}:")
        src.emit(3, f"v{j} = None")
        src.emit(2, "else:")
        _emit_value(src, 3, col, f"v{j}", j)
    if not cols:
        src.emit(2, "pass")
    src.emit(1, "if p > n:")
    src.emit(2, "raise ValueError('row runs past the end of the event')")
    fields = ", ".join(f"{col.name!r}: v{j}" for j, col in cols)
    src.emit(1, f"return {{{fields}}}, p")
    code = "\n".join(src.lines)
    namespace = dict(src.names)
    exec(compile(code, f"<row reader {len(cols)} columns>", "exec"), namespace)
    reader: RowReader = namespace["read_row"]
    return reader
