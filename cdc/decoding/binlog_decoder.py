"""The decoder a binlog stream uses: TABLE_MAP events in, row images out.

It keeps the table definition of every table id seen in the current binlog
(a TABLE_MAP precedes the rows events of a table in each transaction) and the
compiled RowDecoders across them.
"""

from __future__ import annotations

from typing import Any

from cdc.decoding.errors import DecodeError
from cdc.decoding.json_columns import JsonColumnSource, StaticJsonColumns
from cdc.decoding.native import NativeOptions
from cdc.decoding.row_decoder import DecoderCache, resolve_where
from cdc.decoding.table_map_members import with_decoded_members
from cdc.rows import EncodedRow, RowImage
from cdc.schema import SchemaError, TableDef, table_def_from_table_map


class BinlogDecoder:
    """Tracks TABLE_MAP events and decodes the rows events that follow them.

    With `native` options, the tables the native code reads fully are decoded by
    it, straight to JSON text (`cdc.decoding.native`)."""

    def __init__(
        self, json_columns: JsonColumnSource | None = None, native: NativeOptions | None = None
    ) -> None:
        self._json_columns: JsonColumnSource = json_columns or StaticJsonColumns()
        self._tables: dict[int, TableDef] = {}
        self._cache = DecoderCache(native=native)

    def use_native(self, native: NativeOptions | None) -> None:
        """Decode with the native path (None: the Python path) from now on."""
        self._cache = DecoderCache(native=native)

    def on_table_map(self, event: Any, where: str | None = None) -> TableDef:
        """Record a library TableMapEvent; raises SchemaError when it is incomplete,
        DecodeError when an ENUM/SET member does not decode in its charset.

        `where` is the event's "file:pos" (or just the file), for error messages.
        """
        position = resolve_where(event, where)
        json_cols = self._json_columns.json_columns(str(event.schema), str(event.table))
        table = table_def_from_table_map(event, json_columns=json_cols, position=position)
        # The library's ENUM/SET member names are UTF-8 only: read them again.
        table = with_decoded_members(table, event, position)
        self._tables[table.table_id] = table
        return table

    def table(self, table_id: int) -> TableDef | None:
        return self._tables.get(table_id)

    def decode(
        self, event: Any, where: str | None = None, *, encoded: bool = True
    ) -> tuple[TableDef, list[RowImage] | list[EncodedRow]]:
        """The table and the rows of a library Write/Update/DeleteRowsEvent;
        `encoded=False` asks for row values even on the native path."""
        table = self._tables.get(int(event.table_id))
        if table is None:
            # The TABLE_MAP was not seen: the stream started mid-transaction.
            raise DecodeError(
                f"no TABLE_MAP seen for table id {event.table_id}; "
                "start reading at a transaction boundary",
                position=resolve_where(event, where),
                table=f"{getattr(event, 'schema', '?')}.{getattr(event, 'table', '?')}",
            )
        return table, self._cache.decoder_for(table).decode(event, where, encoded=encoded)

    def on_rotate(self) -> None:
        """Table ids are only valid within one binlog file."""
        self._tables.clear()

    def invalidate(self, database: str, table: str | None = None) -> None:
        """A DDL statement changed `database`.`table` (or the whole database)."""
        self._json_columns.invalidate(database, table)


__all__ = ["BinlogDecoder", "SchemaError"]
