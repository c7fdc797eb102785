"""Taking over a running Maxwell's position: its `positions` row as our checkpoint.

Maxwell stores where it is in `<schema_database>.positions` (see Maxwell's
`maxwell_schema.sql`): one row per (server_id, client_id), with
`binlog_file`, `binlog_position` and, in GTID mode, `gtid_set`. The row's
`server_id` is the source server's own server_id, or 0 when Maxwell runs in
GTID mode. Its position is the end of the last transaction Maxwell processed,
a transaction boundary, so it can be this source's checkpoint as it is: the
reader resumes where Maxwell stood, without a gap and without a re-snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pymysql

from cdc.checkpoint import CheckpointStore
from cdc.replication.position import BinlogPosition, Checkpoint
from cdc.replication.server_check import ServerInfo
from shardctl.core.keyspace import check_name

# Maxwell's position row for GTID mode is stored under server_id 0.
MAXWELL_GTID_SERVER_ID = 0


class MaxwellImportError(Exception):
    """Maxwell's position cannot become this source's checkpoint."""


class MaxwellPositionPurged(MaxwellImportError):
    """Maxwell's position is in a binlog file the server no longer has."""


@dataclass(frozen=True, slots=True)
class MaxwellPosition:
    server_id: int
    client_id: str
    file: str
    pos: int
    gtid_set: str | None
    heartbeat_at_ms: int | None


def read_maxwell_position(
    connection: Any, schema_database: str, client_id: str, source_server_id: int
) -> MaxwellPosition:
    """Maxwell's stored position for `client_id` on the server `source_server_id`."""
    try:
        check_name("Maxwell schema database", schema_database)
    except ValueError as exc:
        raise MaxwellImportError(f"--schema-database: {exc}") from None
    table = f"`{schema_database}`.`positions`"
    with connection.cursor() as cursor:
        try:
            cursor.execute(
                "SELECT server_id, binlog_file, binlog_position, gtid_set, heartbeat_at "
                f"FROM {table} WHERE client_id = %s",  # the name is checked above
                (client_id,),
            )
        except pymysql.err.ProgrammingError as exc:
            raise MaxwellImportError(f"cannot read {table}: {exc.args[-1]}") from None
        rows = list(cursor.fetchall())
    if not rows:
        raise MaxwellImportError(f"{table} has no position for client_id {client_id!r}")
    by_server = {int(row[0]): row for row in rows}
    row = by_server.get(source_server_id, by_server.get(MAXWELL_GTID_SERVER_ID))
    if row is None:
        found = ", ".join(str(s) for s in sorted(by_server))
        raise MaxwellImportError(
            f"{table} has positions of client_id {client_id!r} for server_id {found}, "
            f"none for this server (server_id {source_server_id}): Maxwell read another server"
        )
    server_id, file, pos, gtid_set, heartbeat_at = row
    if not file or pos is None:
        raise MaxwellImportError(
            f"{table}: the position of client_id {client_id!r} (server_id {server_id}) "
            "has no binlog file and position"
        )
    return MaxwellPosition(
        server_id=int(server_id),
        client_id=client_id,
        file=str(file),
        pos=int(pos),
        gtid_set=str(gtid_set) if gtid_set else None,
        heartbeat_at_ms=None if heartbeat_at is None else int(heartbeat_at),
    )


def checkpoint_from_maxwell(
    connection: Any, info: ServerInfo, position: MaxwellPosition
) -> Checkpoint:
    """The checkpoint at Maxwell's position; refuses a position the server no
    longer has (or never had)."""
    where = f"{position.file}:{position.pos}"
    try:
        BinlogPosition.parse(where)
    except ValueError as exc:
        raise MaxwellImportError(f"Maxwell's position: {exc}") from None
    with connection.cursor() as cursor:
        cursor.execute("SHOW BINARY LOGS")
        sizes = {str(row[0]): int(row[1]) for row in cursor.fetchall()}
    if position.file not in sizes:
        oldest = min(sizes, key=lambda f: BinlogPosition(f, 0).sort_key()) if sizes else "none"
        raise MaxwellPositionPurged(
            f"Maxwell's position {where} is purged: the server no longer has "
            f"{position.file} (oldest: {oldest}). The changes since then cannot be read; "
            "start from the current position and bootstrap the tables consumers need"
        )
    if position.pos > sizes[position.file]:
        raise MaxwellImportError(
            f"Maxwell's position {where} is past the end of {position.file} "
            f"({sizes[position.file]} bytes): it is not a position of this server"
        )
    gtid = position.gtid_set
    if gtid is None and info.flavor == "mariadb":
        # MariaDB knows the GTID state at any binlog position; the reader needs it
        # to number events and to switch to cdc.mode=gtid later.
        with connection.cursor() as cursor:
            cursor.execute("SELECT BINLOG_GTID_POS(%s, %s)", (position.file, position.pos))
            found = cursor.fetchone()
        gtid = str(found[0]) if found and found[0] else None
    ts = 0 if position.heartbeat_at_ms is None else position.heartbeat_at_ms // 1000
    return Checkpoint(position.file, position.pos, gtid, ts, info.server_id)


async def store_imported_checkpoint(
    store: CheckpointStore, checkpoint: Checkpoint, *, force: bool
) -> None:
    """Write the checkpoint; without `force` only where the source has none.
    Refused (CheckpointError) while a reader of the source leads."""
    await store.reset(checkpoint, replace=force)
