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
from cdc.replication.errors import PartialRowImage
from cdc.replication.transaction import RowChange

# MySQL's PARTIAL_UPDATE_ROWS_EVENT (binlog_row_value_options=PARTIAL_JSON).
PARTIAL_UPDATE_ROWS_EVENT = 39


def _missing_columns(bitmap: bytes, count: int) -> list[int]:
    return [i for i in range(count) if i >> 3 >= len(bitmap) or not bitmap[i >> 3] >> (i & 7) & 1]


def check_full_image(event: Any) -> None:
    """Raise PartialRowImage unless the rows event carries every column of the row
    (before and after image): a session with binlog_row_image=MINIMAL or NOBLOB, or
    binlog_row_value_options=PARTIAL_JSON, writes events that do not."""
    table = f"{event.schema}.{event.table}"
    if int(event.event_type) == PARTIAL_UPDATE_ROWS_EVENT:
        raise PartialRowImage(
            "binlog_row_value_options",
            "''",
            table,
            "binlog_row_value_options=PARTIAL_JSON: a partial JSON update "
            "(PARTIAL_UPDATE_ROWS_EVENT)",
        )
    count = int(event.number_of_columns)
    bitmaps = [bytes(event.columns_present_bitmap)]
    after = getattr(event, "columns_present_bitmap2", None)
    if after is not None:
        bitmaps.append(bytes(after))
    for bitmap in bitmaps:
        missing = _missing_columns(bitmap, count)
        if missing:
            raise PartialRowImage(
                "binlog_row_image",
                "FULL",
                table,
                f"binlog_row_image=MINIMAL or NOBLOB: a rows event without {len(missing)} of "
                f"its {count} columns",
            )


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
        check_full_image(event)
        known = self.decoder.table(int(event.table_id))
        # Column rules read row values: such tables are decoded to values.
        by_column = known is not None and self.filter.table_decision(known.database, known.table)[1]
        table, rows = self.decoder.decode(event, self._file, encoded=not by_column)
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
