"""Start-up checks of the source server.

The reader refuses to start unless the server writes complete, self-describing,
uncompressed row events: `log_bin=ON`, `binlog_format=ROW`,
`binlog_row_image=FULL`, `binlog_row_metadata=FULL`, `log_bin_compress` /
`binlog_transaction_compression` OFF, and (MySQL) no `PARTIAL_JSON` in
`binlog_row_value_options`. These are global values; a session may still change
`binlog_format` or `binlog_row_image`, which the transaction assembler detects
in the events themselves. Without the last one the TABLE_MAP events carry no
column names, charsets or ENUM/SET values, and rows cannot be decoded
faithfully. Each refusal names the setting.

It also refuses a `cdc.server_id` that a registered replica of the server uses
(see `check_replica_conflict`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import pymysql

from cdc.replication.errors import ServerSettingError
from cdc.replication.position import BinlogPosition
from shardctl.core.config import ConfigError

Flavor = Literal["mariadb", "mysql"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServerInfo:
    flavor: Flavor
    version: str
    server_id: int
    gtid_mode: bool  # the server writes GTIDs (always true for MariaDB)


def _variables(cursor: Any, names: list[str]) -> dict[str, str | None]:
    placeholders = ",".join(["%s"] * len(names))
    cursor.execute(
        f"SHOW GLOBAL VARIABLES WHERE Variable_name IN ({placeholders})",  # names are constants
        names,
    )
    found = {str(row[0]).lower(): (None if row[1] is None else str(row[1])) for row in cursor}
    return {name: found.get(name) for name in names}


def check_server(connection: Any, reader_server_id: int) -> ServerInfo:
    """Check the server's binlog settings through a PyMySQL connection.

    Raises ServerSettingError naming the first setting that is wrong.
    """
    with connection.cursor() as cursor:
        values = _variables(
            cursor,
            [
                "log_bin",
                "binlog_format",
                "binlog_row_image",
                "binlog_row_metadata",
                "server_id",
                "version",
                "gtid_mode",
                "log_bin_compress",
                "binlog_transaction_compression",
                "binlog_row_value_options",
            ],
        )
    version = values["version"] or ""
    flavor: Flavor = "mariadb" if "mariadb" in version.lower() else "mysql"
    if (values["log_bin"] or "").upper() not in ("ON", "1"):
        raise ServerSettingError(
            "log_bin", values["log_bin"], "ON", "the reader follows the binary log"
        )
    if (values["binlog_format"] or "").upper() != "ROW":
        raise ServerSettingError(
            "binlog_format",
            values["binlog_format"],
            "ROW",
            "statement-based events carry no row values",
        )
    if (values["binlog_row_image"] or "").upper() != "FULL":
        raise ServerSettingError(
            "binlog_row_image",
            values["binlog_row_image"],
            "FULL",
            "MINIMAL/NOBLOB images leave columns out of data and old",
        )
    if (values["binlog_row_metadata"] or "").upper() != "FULL":
        raise ServerSettingError(
            "binlog_row_metadata",
            values["binlog_row_metadata"],
            "FULL (MariaDB >= 10.5, MySQL >= 8.0.14)",
            "without it TABLE_MAP events carry no column names, charsets or ENUM/SET "
            "values, so BLOBs and ENUMs would be mis-decoded",
        )
    # Compressed events are event types the replication library does not implement;
    # it would skip them, and their rows would be lost without a word.
    for setting in ("log_bin_compress", "binlog_transaction_compression"):
        if (values[setting] or "OFF").upper() not in ("OFF", "0"):
            raise ServerSettingError(
                setting,
                values[setting],
                "OFF",
                "compressed binlog events cannot be read by the replication library",
            )
    # MySQL only: PARTIAL_JSON writes JSON updates as diffs, not whole values.
    if "PARTIAL_JSON" in (values["binlog_row_value_options"] or "").upper():
        raise ServerSettingError(
            "binlog_row_value_options",
            values["binlog_row_value_options"],
            "'' (empty)",
            "PARTIAL_JSON logs JSON updates as diffs, without the whole new value",
        )
    server_id = int(values["server_id"] or 0)
    if server_id == reader_server_id:
        raise ServerSettingError(
            "cdc.server_id",
            str(reader_server_id),
            "a value different from the source's own server_id",
            "the server drops a replica that claims its own server_id",
        )
    gtid_mode = flavor == "mariadb" or (values["gtid_mode"] or "").upper() == "ON"
    return ServerInfo(flavor=flavor, version=version, server_id=server_id, gtid_mode=gtid_mode)


def binlog_head(cursor: Any) -> BinlogPosition:
    """The server's current end of binlog."""
    try:
        cursor.execute("SHOW BINARY LOG STATUS")
    except pymysql.err.ProgrammingError:
        # Servers before MySQL 8.2 / MariaDB 10.5.2 only know the old spelling.
        cursor.execute("SHOW MASTER STATUS")
    row = cursor.fetchone()
    if row is None:
        raise ServerSettingError("log_bin", "OFF", "ON", "the reader follows the binary log")
    return BinlogPosition(str(row[0]), int(row[1]))


def current_position(connection: Any, info: ServerInfo) -> tuple[BinlogPosition, str | None]:
    """The server's current end of binlog and its GTID state, for a fresh start."""
    with connection.cursor() as cursor:
        position = binlog_head(cursor)
        if info.flavor == "mariadb":
            cursor.execute("SELECT @@GLOBAL.gtid_binlog_pos")
            gtid = cursor.fetchone()[0] or ""
        elif info.gtid_mode:
            cursor.execute("SELECT @@GLOBAL.gtid_executed")
            gtid = (cursor.fetchone()[0] or "").replace("\n", "")
        else:
            gtid = None
    return position, gtid


def binary_logs(connection: Any) -> list[str]:
    """The binlog files the server still has, oldest first."""
    with connection.cursor() as cursor:
        cursor.execute("SHOW BINARY LOGS")
        return [str(row[0]) for row in cursor]


def binlog_lag_bytes(connection: Any, position: BinlogPosition) -> int | None:
    """Bytes the server has written to its binlog past `position`: the rest of
    `position.file` plus every later file. None when the server no longer lists the
    file (purged, or another server)."""
    with connection.cursor() as cursor:
        cursor.execute("SHOW BINARY LOGS")
        files = [(str(row[0]), int(row[1])) for row in cursor]
    behind: int | None = None
    for name, size in files:
        if behind is not None:
            behind += size
        elif name == position.file:
            behind = max(0, size - position.pos)
    return behind


# --- other replicas with our server_id ------------------------------------------
#
# The server lists the replicas that registered (COM_REGISTER_SLAVE): MySQL and
# MariaDB replicas and most binlog clients do. Our readers do not register, on
# purpose: readers of one source share a server_id so that a new leader's
# connection cuts off a deposed leader's, and they must not see each other as
# a conflict. Any registered replica with our server_id is therefore something
# else, and the two would cut each other off again and again.


class ServerIdConflict(ConfigError):
    """A registered replica of the server (not one of our readers) has our server_id."""

    def __init__(self, server_id: int, source: str, others: list[str]) -> None:
        self.server_id = server_id
        self.others = others
        hosts = ", ".join(repr(h) for h in others)
        super().__init__(
            f"cdc.server_id: another replica of the source server is connected with "
            f"server_id {server_id} (report host {hosts}); it is not a reader of source "
            f"{source!r}, which never registers as a replica. Two replicas with one server_id "
            "cut each other off (the server drops the older connection, again and again). "
            "Set cdc.server_id to a value no other replica of this server uses "
            "(Maxwell's default is 6379)."
        )


@dataclass(frozen=True, slots=True)
class ReplicaHost:
    server_id: int
    host: str


def registered_replicas(connection: Any) -> list[ReplicaHost]:
    """The replicas that registered with the server.

    MariaDB needs the REPLICATION MASTER ADMIN privilege for this; MySQL 8.4
    only knows SHOW REPLICAS. Raises pymysql's OperationalError when denied.
    """
    with connection.cursor() as cursor:
        try:
            cursor.execute("SHOW REPLICAS")
        except pymysql.err.ProgrammingError:
            # MariaDB and MySQL before 8.0.22 only know the old spelling.
            cursor.execute("SHOW SLAVE HOSTS")
        names = [str(d[0]).lower() for d in cursor.description or ()]
        rows = cursor.fetchall()
    id_at, host_at = names.index("server_id"), names.index("host")
    return [ReplicaHost(int(row[id_at]), str(row[host_at] or "")) for row in rows]


def check_replica_conflict(connection: Any, server_id: int, source: str) -> bool:
    """Refuse (ServerIdConflict) when a registered replica has `server_id`.

    Returns False, after a warning naming the privilege, when the server does
    not let this user list replicas; True when the check ran.
    """
    try:
        replicas = registered_replicas(connection)
    except pymysql.err.OperationalError as exc:
        if exc.args and exc.args[0] in (_ER_SPECIFIC_ACCESS_DENIED, _ER_ACCESS_DENIED):
            log.warning(
                "cdc.server_id: cannot check for another replica with server_id %d: "
                "the server refused SHOW SLAVE HOSTS (%s); grant REPLICATION MASTER ADMIN "
                "(MariaDB) to the reader's user to enable the check",
                server_id,
                exc.args[1] if len(exc.args) > 1 else exc,
            )
            return False
        raise
    others = sorted({r.host for r in replicas if r.server_id == server_id})
    if others:
        raise ServerIdConflict(server_id, source, others)
    return True


_ER_SPECIFIC_ACCESS_DENIED = 1227
_ER_ACCESS_DENIED = 1045
