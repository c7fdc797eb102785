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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import pymysql

from cdc.replication.errors import ServerSettingError
from cdc.replication.position import BinlogPosition

Flavor = Literal["mariadb", "mysql"]


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


def current_position(connection: Any, info: ServerInfo) -> tuple[BinlogPosition, str | None]:
    """The server's current end of binlog and its GTID state, for a fresh start."""
    with connection.cursor() as cursor:
        try:
            cursor.execute("SHOW BINARY LOG STATUS")
        except pymysql.err.ProgrammingError:
            # Servers before MySQL 8.2 / MariaDB 10.5.2 only know the old spelling.
            cursor.execute("SHOW MASTER STATUS")
        row = cursor.fetchone()
        if row is None:
            raise ServerSettingError("log_bin", "OFF", "ON", "the reader follows the binary log")
        position = BinlogPosition(str(row[0]), int(row[1]))
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
