"""Errors of the binlog source. Each names the setting or binlog position at fault."""

from __future__ import annotations

from shardctl.core.config import ConfigError


class SourceError(Exception):
    """The binlog source cannot continue."""


class ServerSettingError(ConfigError):
    """The source server is configured in a way the reader refuses to work with."""

    def __init__(self, setting: str, actual: str | None, wanted: str, why: str) -> None:
        self.setting = setting
        self.actual = actual
        super().__init__(
            f"{setting}: the source server has {setting}={actual!r}, the reader needs "
            f"{wanted} ({why}). Set it in the server configuration and restart the server."
        )


class PurgedBinlogError(SourceError):
    """The checkpoint points into binlogs the server no longer has."""

    def __init__(self, source: str, where: str, detail: str, recovery: str) -> None:
        self.where = where
        self.recovery = recovery
        super().__init__(
            f"source {source!r}: the checkpoint {where} is no longer on the server ({detail}). "
            "Changes made since then cannot be replayed. To recover, restart from the "
            f"server's current position and re-snapshot the tables you need:\n  {recovery}"
        )


class StartPositionMismatch(SourceError):
    """The server streams from a position other than the one the reader asked for."""


class TransactionOrderError(SourceError):
    """The stream delivered events in an order no transaction boundary can explain."""


def skip_command(source: str, position: str) -> str:
    return f"shardctl cdc checkpoint skip --source {source} --position {position}"


class SessionSettingError(SourceError):
    """A transaction was written under a session setting whose events carry no
    full rows (binlog_format, binlog_row_image, binlog_row_value_options). Nothing
    of the transaction is published; the message gives the setting to fix and
    the commands that skip the transaction and re-copy its tables."""

    def __init__(
        self,
        source: str,
        setting: str,
        wanted: str,
        position: str,
        gtid: str | None,
        table: str,
        detail: str,
    ) -> None:
        self.source = source
        self.setting = setting
        self.position = position
        self.gtid = gtid
        self.table = table
        self.recovery = (
            f"{skip_command(source, position)}\n  shardctl cdc bootstrap {table} --source {source}"
        )
        super().__init__(
            f"source {source!r}: {setting}: the transaction at position={position} "
            f"gtid={gtid or 'none'} changes {table} under {detail}; none of it is published. "
            f"Set {setting}={wanted} for every session (SET GLOBAL, the server configuration, "
            f"and no session that changes it), then skip this one transaction and re-copy "
            f"the tables it touched (the skip command lists them):\n  {self.recovery}"
        )


class PartialRowImage(Exception):
    """A rows event without every column (raised by row decoding; the transaction
    assembler turns it into a SessionSettingError with the transaction's position)."""

    def __init__(self, setting: str, wanted: str, table: str, detail: str) -> None:
        self.setting = setting
        self.wanted = wanted
        self.table = table
        self.detail = detail
        super().__init__(f"{table}: {detail}")
