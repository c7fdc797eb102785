"""The chunk reader: a table's rows in primary-key order, `size` rows at a time.

Each chunk is one plain SELECT in autocommit (no snapshot transaction is held
between chunks):

    SELECT * FROM `db`.`t` WHERE (<where>) AND (`a`,`b`) > (%s,%s)
    ORDER BY `a`,`b` LIMIT <size>

When the columns a chunk returns are not those read before (an ALTER TABLE
while the snapshot runs), the table's columns are read again and the chunk is
read again with them: every row is published with the columns it has now.

The snapshot ends at the largest key the table held when the reader was made
(`AND (a,b) <= (%s,%s)`): rows inserted after it with larger keys reach the
consumer through the stream, and a table that keeps gaining rows at its end is
not chased forever (Debezium's incremental snapshot bounds its chunks the same
way).

The row-value comparison handles composite and non-integer keys alike; the key
of the last row read is where the next chunk starts (and what is stored as
progress, in the JSON form of `encode_key`). A table without a primary key has
no such order and is refused.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pymysql

from cdc.bootstrap import (
    BootstrapError,
    json_ready,
    quote_ident,
    read_columns,
    snapshot_conversions,
)
from cdc.schema import TableDef

KeyValues = tuple[Any, ...]


def encode_key(key: KeyValues) -> list[Any]:
    """A key as read (ints, text, bytes, decimals) in a JSON-storable form."""
    out: list[Any] = []
    for value in key:
        if isinstance(value, bytes | bytearray):
            out.append({"b64": base64.b64encode(bytes(value)).decode()})
        elif isinstance(value, Decimal):
            out.append({"decimal": str(value)})
        else:
            out.append(value)
    return out


def decode_key(doc: list[Any]) -> KeyValues:
    values: list[Any] = []
    for value in doc:
        if isinstance(value, dict) and "b64" in value:
            values.append(base64.b64decode(value["b64"]))
        elif isinstance(value, dict) and "decimal" in value:
            values.append(Decimal(value["decimal"]))
        else:
            values.append(value)
    return tuple(values)


def chunk_sql(
    database: str,
    table: str,
    primary_key: tuple[str, ...],
    where: str | None,
    after: KeyValues | None,
    size: int,
    upto: KeyValues | None = None,
) -> tuple[str, list[Any]]:
    """The SELECT of the chunk after `after` (from the start when None) and up to
    `upto` (no bound when None), and its args."""
    key = ",".join(f"`{quote_ident(c)}`" for c in primary_key)
    conditions: list[str] = []
    args: list[Any] = []
    if where:
        conditions.append(f"({where})")
    if after is not None:
        marks = ",".join(["%s"] * len(after))
        conditions.append(f"({key}) > ({marks})")
        args.extend(after)
    if upto is not None:
        marks = ",".join(["%s"] * len(upto))
        conditions.append(f"({key}) <= ({marks})")
        args.extend(upto)
    sql = f"SELECT * FROM `{quote_ident(database)}`.`{quote_ident(table)}`"
    if conditions:
        sql += " WHERE " + " AND ".join(conditions)
    sql += f" ORDER BY {key} LIMIT {int(size)}"
    return sql, args


@dataclass(slots=True)
class ChunkRow:
    key: KeyValues  # primary key values as read, for the next chunk's start
    data: dict[str, Any]  # JSON-ready values, as the binlog decoder gives them


# Client and server errors that mean the connection is gone, not that the query
# failed: CR_CONN_HOST_ERROR, CR_SERVER_GONE_ERROR, CR_SERVER_LOST,
# CR_SERVER_LOST_EXTENDED, ER_SERVER_SHUTDOWN, ER_CONNECTION_KILLED (MariaDB).
_CONNECTION_LOST = frozenset({2003, 2006, 2013, 2055, 1053, 1927})


def connection_lost(exc: BaseException) -> bool:
    """Did `exc` end the connection (a reconnect may help), rather than the query?"""
    if isinstance(exc, pymysql.err.InterfaceError):
        return True  # PyMySQL's "(0, '')": the connection was already closed
    return (
        isinstance(exc, pymysql.err.OperationalError)
        and bool(exc.args)
        and exc.args[0] in _CONNECTION_LOST
    )


class ChunkReader:
    """Reads one table's chunks on its own autocommit connection."""

    def __init__(
        self, connect: dict[str, Any], database: str, table: str, where: str | None, size: int
    ) -> None:
        self.database = database
        self.table = table
        self.where = where
        self.size = size
        self.name = f"{database}.{table}"
        self._connect = connect
        self._connection: Any = self._open()
        try:
            self._load_columns()
            self.last_key = self._last_key()
        except BaseException:
            self._connection.close()
            raise

    def _open(self) -> Any:
        connection = pymysql.connect(
            **self._connect, conv=snapshot_conversions(), charset="utf8mb4", autocommit=True
        )
        try:
            with connection.cursor() as cursor:
                cursor.execute("SET time_zone = '+00:00'")
        except BaseException:
            connection.close()
            raise
        return connection

    def reconnect(self) -> None:
        """A new connection after the old one was lost. The snapshot's end key stays
        the one of its start; the columns are read again."""
        if self._connection.open:  # PyMySQL's close() of a broken socket raises nothing
            self._connection.close()
        self._connection = self._open()
        self._load_columns()

    def _load_columns(self) -> None:
        with self._connection.cursor() as cursor:
            self.table_def, self._columns = read_columns(cursor, self.database, self.table)
        if not self.table_def.primary_key:
            raise BootstrapError(
                f"bootstrap of {self.name}: the table has no primary key, so it cannot be read "
                "in chunks; use `shardctl cdc bootstrap --blocking` for this table"
            )
        self._key_index = [
            [c.name for c in self._columns].index(pk) for pk in self.table_def.primary_key
        ]

    def _last_key(self) -> KeyValues | None:
        """The largest key (under the request's `where`) now: where the snapshot ends."""
        key = ",".join(f"`{quote_ident(c)}`" for c in self.table_def.primary_key)
        desc = ",".join(f"`{quote_ident(c)}` DESC" for c in self.table_def.primary_key)
        sql = f"SELECT {key} FROM `{quote_ident(self.database)}`.`{quote_ident(self.table)}`"
        if self.where:
            sql += f" WHERE ({self.where})"
        with self._connection.cursor() as cursor:
            cursor.execute(sql + f" ORDER BY {desc} LIMIT 1")
            row = cursor.fetchone()
        return None if row is None else tuple(row)

    @property
    def connection(self) -> Any:
        """The connection the chunks are read on (watermarks are read on it too)."""
        return self._connection

    @property
    def definition(self) -> TableDef:
        return self.table_def

    def estimated_rows(self) -> int:
        """information_schema's estimate (TABLE_ROWS); InnoDB's is approximate."""
        with self._connection.cursor() as cursor:
            cursor.execute(
                "SELECT TABLE_ROWS FROM information_schema.TABLES"
                " WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
                (self.database, self.table),
            )
            row = cursor.fetchone()
        return int(row[0] or 0) if row else 0

    def read(self, after: KeyValues | None, where_id: str) -> list[ChunkRow]:
        if self.last_key is None:
            return []  # the table was empty (under `where`) when the snapshot began
        raw = self._select(after)
        if raw is None:
            self._load_columns()
            raw = self._select(after)
            if raw is None:
                raise BootstrapError(
                    f"bootstrap {where_id}: the columns changed twice while reading a chunk"
                )
        columns = self._columns
        return [
            ChunkRow(
                tuple(row[i] for i in self._key_index),
                {
                    col.name: json_ready(col, value, where_id)
                    for col, value in zip(columns, row, strict=True)
                },
            )
            for row in raw
        ]

    def _select(self, after: KeyValues | None) -> list[Any] | None:
        """The chunk's rows; None when its columns are not the ones known."""
        sql, args = chunk_sql(
            self.database,
            self.table,
            self.table_def.primary_key,
            self.where,
            after,
            self.size,
            self.last_key,
        )
        with self._connection.cursor() as cursor:
            cursor.execute(sql, args)
            names = [d[0] for d in cursor.description]
            rows = list(cursor.fetchall())
        return rows if names == [c.name for c in self._columns] else None

    def close(self) -> None:
        self._connection.close()
