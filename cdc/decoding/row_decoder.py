"""Decoding of rows events: raw body bytes in, `RowImage`s out.

mysql-replication parses the event header and the columns-present bitmaps;
the rows themselves are read here from the event's raw body, never through the
library's `.rows` property. A `RowDecoder` belongs to one `TableDef` and
compiles one reader per columns-present bitmap it meets (with
`binlog_row_image=FULL` that is a single one).
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from typing import Any, Literal

from cdc.decoding.columns import UnsupportedColumn
from cdc.decoding.compiler import (
    FAST_PATH_ERRORS,
    ColumnDecodeError,
    RowReader,
    careful_row_reader,
    compile_row_reader,
)
from cdc.decoding.errors import DecodeError
from cdc.decoding.native import NativeLayout, NativeOptions, full_bitmap, native_layout
from cdc.rows import EncodedRow, RowImage
from cdc.schema import TableDef

log = logging.getLogger(__name__)

RowsKind = Literal["insert", "update", "delete"]

# Rows event type codes (v1 is what MariaDB writes, v2 what MySQL 5.6+ writes).
_KIND_BY_EVENT_TYPE: dict[int, RowsKind] = {
    23: "insert",
    30: "insert",
    24: "update",
    31: "update",
    25: "delete",
    32: "delete",
}
_PARTIAL_UPDATE_ROWS_EVENT = 39


def _present_columns(bitmap: bytes, count: int) -> tuple[int, ...]:
    return tuple(i for i in range(count) if bitmap[i >> 3] >> (i & 7) & 1)


def event_position(event: Any, log_file: str | None = None) -> str:
    """file:pos of the start of a library event (the header holds the next position)."""
    packet = event.packet
    start = int(packet.log_pos) - int(packet.event_size)
    return f"{log_file or '?'}:{start}"


def resolve_where(event: Any, where: str | None) -> str:
    """The "file:pos" for messages about `event`: `where` itself, or, when it is
    only a file name (or None), that file with the event's own start position."""
    if where is not None and ":" in where:
        return where
    return event_position(event, where)


def rows_event_body(event: Any) -> bytes:
    """The raw rows of a library rows event: what follows the columns-present
    bitmaps, up to the checksum. Reading them does not touch `.rows`."""
    wrapper = event.packet
    if getattr(wrapper, "_BinLogPacketWrapper__data_buffer", b""):
        raise ValueError("the event's reader holds pushed-back bytes")
    if getattr(event, "_RowsEvent__rows", None) is not None:
        raise ValueError("the library already consumed the rows of this event")
    packet = wrapper.packet
    start = packet._position
    remaining = int(event.event_size) - int(wrapper.read_bytes)
    body = bytes(packet._data[start : start + remaining])
    if remaining < 0 or len(body) != remaining:
        raise ValueError(f"event body is {len(body)} bytes, header says {remaining}")
    return body


class RowDecoder:
    """Decodes the rows events of one table layout.

    With `native` options it uses the native fast path for the table when the
    native code reads every column (`cdc.decoding.native`); `path` says which one
    the table uses and `path_reason` why.
    """

    def __init__(self, table: TableDef, native: NativeOptions | None = None) -> None:
        self.table = table
        self._json_columns = frozenset(c.name for c in table.columns if c.is_json)
        self._readers: dict[bytes, tuple[RowReader, RowReader]] = {}
        self._native: NativeLayout | None = None
        self.path = "python"
        self.path_reason = "decoder = python"
        if native is not None:
            self._native, self.path_reason = native_layout(table, native)
            if self._native is not None:
                self.path = "native"
        self._full_bitmaps: dict[bytes, bool] = {}

    def _readers_for(self, bitmap: bytes, position: str) -> tuple[RowReader, RowReader]:
        readers = self._readers.get(bitmap)
        if readers is None:
            present = _present_columns(bitmap, len(self.table.columns))
            try:
                readers = (
                    compile_row_reader(self.table.columns, present),
                    careful_row_reader(self.table.columns, present),
                )
            except UnsupportedColumn as exc:
                raise DecodeError(
                    str(exc), position=position, table=self.table.qualified_name
                ) from None
            self._readers[bitmap] = readers
        return readers

    def decode(
        self, event: Any, where: str | None = None, *, encoded: bool = True
    ) -> list[RowImage] | list[EncodedRow]:
        """The rows of a library Write/Update/DeleteRowsEvent of this table.

        `where` is the event's "file:pos" for error messages (the library event
        does not know its file); a bare file name gets the event's position added.
        `encoded=False` asks for row values (RowImage) even when the table takes
        the native path.
        """
        position = resolve_where(event, where)
        table = self.table.qualified_name
        event_type = int(event.event_type)
        if event_type == _PARTIAL_UPDATE_ROWS_EVENT:
            raise DecodeError(
                "partial JSON updates are not supported: set binlog_row_value_options=''",
                position=position,
                table=table,
            )
        kind = _KIND_BY_EVENT_TYPE.get(event_type)
        if kind is None:
            raise DecodeError(
                f"event type {event_type} is not a rows event", position=position, table=table
            )
        if int(event.table_id) != self.table.table_id:
            raise DecodeError(
                f"rows event for table id {event.table_id}, decoder is for {self.table.table_id}",
                position=position,
                table=table,
            )
        if int(event.number_of_columns) != len(self.table.columns):
            raise DecodeError(
                f"rows event has {event.number_of_columns} columns, "
                f"TABLE_MAP had {len(self.table.columns)}",
                position=position,
                table=table,
            )
        try:
            body = rows_event_body(event)
        except ValueError as exc:
            raise DecodeError(str(exc), position=position, table=table) from None
        after_bitmap = getattr(event, "columns_present_bitmap2", None) if kind == "update" else None
        return self.decode_body(
            kind,
            body,
            bytes(event.columns_present_bitmap),
            bytes(after_bitmap) if after_bitmap is not None else None,
            position,
            encoded=encoded,
        )

    def _all_present(self, bitmap: bytes | None) -> bool:
        if bitmap is None:
            return True
        full = self._full_bitmaps.get(bitmap)
        if full is None:
            full = self._full_bitmaps[bitmap] = full_bitmap(bitmap, len(self.table.columns))
        return full

    def takes_native(self, kind: RowsKind, bitmap: bytes, after_bitmap: bytes | None) -> bool:
        """True when the native path reads this event: the table has a native layout
        and the rows carry every column (before and after image)."""
        return (
            self._native is not None
            and self._all_present(bitmap)
            and (kind != "update" or (after_bitmap is not None and self._all_present(after_bitmap)))
        )

    def encode_body(
        self, kind: RowsKind, body: bytes, bitmap: bytes, after_bitmap: bytes | None = None
    ) -> list[EncodedRow] | None:
        """The rows as the native path writes them; None when it cannot (see
        `takes_native`) or refuses a value."""
        layout = self._native
        if layout is None or not self.takes_native(kind, bitmap, after_bitmap):
            return None
        if kind == "update":
            try:
                items = layout.decode(True, body)
            except ValueError:
                return None
            return [EncodedRow("update", *item) for item in items]
        try:
            items = layout.decode(False, body)
        except ValueError:
            return None
        return [EncodedRow(kind, data, pk) for data, pk in items]

    def decode_body(
        self,
        kind: RowsKind,
        body: bytes,
        bitmap: bytes,
        after_bitmap: bytes | None = None,
        position: str = "?",
        *,
        reference: bool = False,
        encoded: bool = False,
    ) -> list[RowImage] | list[EncodedRow]:
        """The rows of a rows-event body: pure bytes in, row images out.

        `reference=True` uses only the step-by-step reader (for tests that hold
        the compiled reader to it). `encoded=True` returns the native path's
        EncodedRows when the table takes it and it reads the event.
        """
        width = (len(self.table.columns) + 7) // 8
        if len(bitmap) != width or (after_bitmap is not None and len(after_bitmap) != width):
            raise DecodeError(
                "columns-present bitmap has the wrong size",
                position=position,
                table=self.table.qualified_name,
            )
        if encoded and not reference and self.takes_native(kind, bitmap, after_bitmap):
            encoded_rows = self.encode_body(kind, body, bitmap, after_bitmap)
            if encoded_rows is not None:
                return encoded_rows
            rows = self.decode_body(kind, body, bitmap, after_bitmap, position)
            # The Python path read what the native one refused: publish its rows,
            # and say so (the two are meant to agree on every input).
            log.warning(
                "binlog %s, table %s: the native decoder refused a rows event that the "
                "Python decoder reads; published from the Python decoder",
                position,
                self.table.qualified_name,
            )
            return rows
        fast, careful = self._readers_for(bitmap, position)
        if not reference:
            try:
                return self._run(kind, body, fast, after_bitmap, position, use_fast=True)
            except FAST_PATH_ERRORS:
                pass
        # The fast path failed somewhere: decode again step by step to say where.
        try:
            rows = self._run(kind, body, careful, after_bitmap, position, use_fast=False)
        except ColumnDecodeError as exc:
            raise DecodeError(
                exc.reason, position=position, table=self.table.qualified_name, column=exc.column
            ) from None
        if reference:
            return rows
        raise DecodeError(
            "compiled decoder failed where the reference decoder did not",
            position=position,
            table=self.table.qualified_name,
        )

    def _run(
        self,
        kind: RowsKind,
        body: bytes,
        reader: RowReader,
        after_bitmap: bytes | None,
        position: str,
        *,
        use_fast: bool,
    ) -> list[RowImage]:
        n = len(body)
        p = 0
        rows: list[RowImage] = []
        if kind != "update":
            while p < n:
                data, p = reader(body, p, n)
                rows.append(RowImage(kind, data, None))
            return rows
        if after_bitmap is None:
            raise ColumnDecodeError("(bitmap)", "update event without an after-image bitmap")
        fast_after, careful_after = self._readers_for(after_bitmap, position)
        after_reader = fast_after if use_fast else careful_after
        json_columns = self._json_columns
        while p < n:
            before, p = reader(body, p, n)
            after, p = after_reader(body, p, n)
            old = {}
            for name, value in before.items():
                if name not in after:
                    continue
                new = after[name]
                if new != value or type(new) is not type(value):
                    old[name] = value
                elif name in json_columns and _json_text(new) != _json_text(value):
                    # 1 == True in Python, not in JSON.
                    old[name] = value
            rows.append(RowImage("update", after, old))
        return rows


def _json_text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


class DecoderCache:
    """RowDecoders by table id and column layout, so a TABLE_MAP that repeats for
    every transaction reuses the compiled readers.

    With `native` options, each table's decoder path (native or Python, and why)
    is logged when it is first decided and whenever it changes."""

    def __init__(self, max_entries: int = 4096, native: NativeOptions | None = None) -> None:
        self._max = max_entries
        self._native = native
        self._decoders: OrderedDict[tuple[int, tuple[Any, ...]], RowDecoder] = OrderedDict()
        self._logged_paths: dict[str, str] = {}

    def _new(self, table: TableDef) -> RowDecoder:
        decoder = RowDecoder(table, self._native)
        if self._native is not None:
            name = table.qualified_name
            said = f"{decoder.path}: {decoder.path_reason}"
            if self._logged_paths.get(name) != said:
                if len(self._logged_paths) > self._max:
                    self._logged_paths.clear()
                self._logged_paths[name] = said
                if decoder.path == "native":
                    log.info("table %s: native decoder", name)
                else:
                    log.info("table %s: Python decoder (%s)", name, decoder.path_reason)
        return decoder

    def decoder_for(self, table: TableDef) -> RowDecoder:
        key = (table.table_id, table.layout)
        decoder = self._decoders.get(key)
        if decoder is None:
            decoder = self._new(table)
            self._decoders[key] = decoder
            if len(self._decoders) > self._max:
                self._decoders.popitem(last=False)
        elif decoder.table != table:
            # Same layout, other names for database or table (RENAME TABLE).
            decoder = self._new(table)
            self._decoders[key] = decoder
        return decoder
