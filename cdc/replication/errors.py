"""Errors of the binlog source. Each names the setting or binlog position at fault."""

from __future__ import annotations

from shardctl.config import ConfigError


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
