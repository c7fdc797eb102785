"""The window of one chunk: its rows, buffered between the low and high watermark.

A chunk's rows are read while the stream goes on. A streamed change to one of
them that commits after the low watermark may be newer than the row as read, so
the key is dropped from the buffer: the streamed change already carries the
newer state. When the stream reaches the high watermark, what is left is
published, and every change streamed after it is newer than the chunk's read.

The chunk is read on its own thread while the stream goes on, so the stream may
pass the low watermark before the rows are handed over: the changes the stream
publishes while a read is in flight are noted (key and transaction end), and
`opened` drops, from the rows handed over, every noted key whose transaction
committed after the chunk's low watermark, as `drop` would have done had the
window been open then. The noting starts before the low watermark is taken, so
nothing committed after it is missed.

Keys are the message keys the formatter makes (database, table and primary key
values), so a chunk row and a streamed change of the same row compare equal.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from cdc.replication.position import Checkpoint
from cdc.snapshot.watermark import Watermark

Row = TypeVar("Row")


@dataclass
class ChunkWindow(Generic[Row]):
    """Buffered rows by key, in primary-key order; `drop` removes a key."""

    rows: dict[bytes, Row] = field(default_factory=dict)
    read: int = 0  # rows the chunk's SELECT returned
    dropped: int = 0

    @classmethod
    def of(cls, rows: Iterable[tuple[bytes, Row]]) -> ChunkWindow[Row]:
        window: ChunkWindow[Row] = cls()
        for key, row in rows:
            window.rows[key] = row
            window.read += 1
        return window

    @classmethod
    def opened(
        cls,
        rows: Iterable[tuple[bytes, Row]],
        low: Watermark,
        streamed: Iterable[tuple[bytes, Checkpoint]],
    ) -> ChunkWindow[Row]:
        """The window of rows read after `low`, with the changes the stream published
        while they were read (`streamed`: key and transaction end) applied."""
        window = cls.of(rows)
        for key, end in streamed:
            if low.is_after(end):
                window.drop(key)
        return window

    def drop(self, key: bytes) -> None:
        if self.rows.pop(key, None) is not None:
            self.dropped += 1

    def release(self) -> list[Row]:
        """The rows left, in the order they were read; the window is then empty."""
        rows = list(self.rows.values())
        self.rows.clear()
        return rows
