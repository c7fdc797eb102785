"""Row decoding as the transaction assembler sees it: filters first, then the decoder.

Tables that no filter rule can include are skipped before their rows are
decoded (and before their TABLE_MAP is turned into a table definition), so
excluded tables cost almost nothing. Rows of tables with column rules are
decoded and then kept or dropped one by one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cdc.decoding import BinlogDecoder
from cdc.filtering import Filter
from cdc.replication.transaction import RowChange


class FilteredDecoding:
    def __init__(self, decoder: BinlogDecoder, row_filter: Filter) -> None:
        self.decoder = decoder
        self.filter = row_filter
        self._file = ""

    def _wanted(self, event: Any) -> bool:
        return self.filter.may_include_table(str(event.schema), str(event.table))

    def on_table_map(self, event: Any, where: str) -> None:
        if self._wanted(event):
            self.decoder.on_table_map(event, where)

    def on_rotate(self, next_file: str) -> None:
        # Table ids are only valid within one binlog file; the stream always
        # (re)starts at a transaction boundary, so the next TABLE_MAPs follow.
        self._file = next_file
        self.decoder.on_rotate()

    def decode_rows(self, event: Any, where: str) -> Sequence[RowChange]:
        if not self._wanted(event):
            return ()
        table, rows = self.decoder.decode(event, self._file)
        database, name = table.database, table.table
        include, by_column = self.filter.table_decision(database, name)
        if by_column:
            return [
                RowChange(table, row)
                for row in rows
                if self.filter.includes_row(database, name, row.data)
            ]
        return [RowChange(table, row) for row in rows] if include else ()

    def invalidate(self, database: str, table: str | None = None) -> None:
        self.decoder.invalidate(database, table)
