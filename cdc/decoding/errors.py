"""The one error a row decoder raises."""

from __future__ import annotations


class DecodeError(Exception):
    """A row value could not be decoded.

    The reader stops on it: a value that cannot be decoded is never guessed at.
    The message names the binlog position (file:pos of the rows event), the
    table and, when known, the column.
    """

    def __init__(
        self,
        reason: str,
        *,
        position: str = "?",
        table: str = "?",
        column: str | None = None,
    ) -> None:
        self.reason = reason
        self.position = position
        self.table = table
        self.column = column
        where = f"binlog {position}, table {table}"
        if column is not None:
            where += f", column {column!r}"
        super().__init__(f"cannot decode row ({where}): {reason}")
