"""Row decoding: binlog rows events to JSON-ready row images, fast.

Entry points: `BinlogDecoder` (TABLE_MAP tracking plus decoding), `RowDecoder`
(one table layout), `DecodeError`, and the JSON-column sources for MariaDB.
"""

from cdc.decoding.binlog_decoder import BinlogDecoder
from cdc.decoding.errors import DecodeError
from cdc.decoding.json_columns import (
    CheckConstraintJsonColumns,
    JsonColumnSource,
    StaticJsonColumns,
)
from cdc.decoding.row_decoder import DecoderCache, RowDecoder, rows_event_body

__all__ = [
    "BinlogDecoder",
    "CheckConstraintJsonColumns",
    "DecodeError",
    "DecoderCache",
    "JsonColumnSource",
    "RowDecoder",
    "StaticJsonColumns",
    "rows_event_body",
]
