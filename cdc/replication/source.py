"""The binlog source: follows the server as a replica and yields whole transactions.

States:

    CLOSED --open(boundary)--> CONNECTED --events--> CONNECTED (yield Transaction
                                                       or Heartbeat)
    CONNECTED --connection lost / replay detected--> CLOSED --backoff--> open(boundary)
    CONNECTED --purged binlog, bad setting, wrong start, decode error--> raise

`boundary` is the end of the last transaction yielded (at first, the start
checkpoint), so a reconnect drops the open transaction's partial rows and reads
that transaction again from its first event: nothing is lost and nothing but
the open transaction is read twice, and that one was never yielded.

Modes:
- `file_pos`: COM_BINLOG_DUMP from the boundary's file:pos. mysql-replication is
  used with `is_mariadb=False` even on MariaDB, because its MariaDB path ignores
  log_file/log_pos.
- `gtid`: MariaDB `@slave_connect_state` / MySQL COM_BINLOG_DUMP_GTID from the
  boundary's GTID state. Reads are blocking: a non-blocking GTID dump makes the
  library reconnect from its original GTID at every end of binlog. The GTID
  state handed to the library is refreshed at each transaction end, so its own
  reconnects resume at a boundary too.

With `row_query` (`output_row_query`), the statement behind each rows event
goes with its rows: MySQL's ROWS_QUERY events (`binlog_rows_query_log_events`)
and MariaDB's ANNOTATE_ROWS events (`binlog_annotate_row_events`). MariaDB sends
the latter only when the dump request asks for them (the
BINLOG_SEND_ANNOTATE_ROWS_EVENT flag of COM_BINLOG_DUMP); mysql-replication
sets that flag in its GTID-mode dump only, so in file_pos mode the replication
connection (`AnnotateRowsConnection`) sets it in the request it writes.

The start is verified: in file_pos mode the server's first (fake) ROTATE must
name exactly the requested file and position; in gtid mode the first GTID of
each domain must come after the requested state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import pymysql
from pymysql.constants.COMMAND import COM_BINLOG_DUMP
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.event import (
    ExecuteLoadQueryEvent,
    FormatDescriptionEvent,
    GtidEvent,
    HeartbeatLogEvent,
    MariadbAnnotateRowsEvent,
    MariadbGtidEvent,
    QueryEvent,
    RotateEvent,
    RowsQueryLogEvent,
    XAPrepareEvent,
    XidEvent,
)
from pymysqlreplication.gtid import Gtid, GtidSet
from pymysqlreplication.row_event import (
    DeleteRowsEvent,
    PartialUpdateRowsEvent,
    TableMapEvent,
    UpdateRowsEvent,
    WriteRowsEvent,
)

from cdc.replication.errors import (
    PurgedBinlogError,
    SessionSettingError,
    SourceError,
    StartPositionMismatch,
    TransactionOrderError,
)
from cdc.replication.position import Checkpoint, MariadbGtidState, parse_mariadb_gtid
from cdc.replication.server_check import (
    ServerInfo,
    binary_logs,
    check_replica_conflict,
    check_server,
)
from cdc.replication.transaction import (
    DEFAULT_MEMORY_BYTES,
    DEFAULT_MEMORY_ROWS,
    RowsDecoding,
    Transaction,
    TransactionAssembler,
    event_start,
)
from shardctl.core.backoff import Backoff, Exponential

log = logging.getLogger(__name__)

Mode = Literal["file_pos", "gtid"]

_EVENTS = [
    RotateEvent,
    FormatDescriptionEvent,
    HeartbeatLogEvent,
    GtidEvent,
    MariadbGtidEvent,
    QueryEvent,
    XidEvent,
    XAPrepareEvent,
    TableMapEvent,
    WriteRowsEvent,
    UpdateRowsEvent,
    DeleteRowsEvent,
    # Listed so that the library hands them over instead of dropping them: the
    # assembler stops on both (session binlog settings without full rows).
    PartialUpdateRowsEvent,
    ExecuteLoadQueryEvent,
]

# Server error "fatal error reading binlog": purged files, unknown GTID state.
_ER_MASTER_FATAL_ERROR_READING_BINLOG = 1236
# Errors that no reconnect can fix.
_FATAL_MYSQL_ERRORS = {1045, 1227, 1236}


# The replication session's net_write_timeout (see `_connect_settings`).
NET_WRITE_TIMEOUT_S = 600

# COM_BINLOG_DUMP flag: send ANNOTATE_ROWS events (MariaDB's sql/sql_repl.cc).
BINLOG_SEND_ANNOTATE_ROWS_EVENT = 0x02


class AnnotateRowsConnection(pymysql.connections.Connection):
    """A replication connection whose COM_BINLOG_DUMP request asks MariaDB for
    ANNOTATE_ROWS events. The request is one packet: a 3-byte length, a sequence
    byte, the command byte, the 4-byte position, then the 2-byte flags."""

    def _write_bytes(self, data: bytes) -> None:
        if (
            len(data) >= 11
            and data[4] == COM_BINLOG_DUMP
            and int.from_bytes(data[0:3], "little") == len(data) - 4
        ):
            flags = int.from_bytes(data[9:11], "little") | BINLOG_SEND_ANNOTATE_ROWS_EVENT
            data = data[:9] + flags.to_bytes(2, "little") + data[11:]
        super()._write_bytes(data)  # type: ignore[misc]  # not in the PyMySQL stubs


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The server is alive and has nothing new; the reader may do its periodic work."""


@dataclass(slots=True)
class SourceOptions:
    source: str
    connect: dict[str, Any]  # PyMySQL keyword arguments; holds the password, never logged
    server_id: int
    mode: Mode = "file_pos"
    heartbeat_s: float = 1.0
    reconnect_backoff_s: tuple[float, float] = (0.2, 5.0)
    recovery_command: str = ""
    # Called instead of raising for a transaction written under a bad session
    # setting (see TransactionAssembler); only the checkpoint skip command sets it.
    on_session_setting: Callable[[SessionSettingError], None] | None = None
    # Bounds of a transaction's rows held in memory; the rest is spilled to a file.
    transaction_memory_rows: int = DEFAULT_MEMORY_ROWS
    transaction_memory_bytes: int = DEFAULT_MEMORY_BYTES
    spill_dir: str | None = None
    # Read the statement behind each rows event (`output_row_query`).
    row_query: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class MysqlGtidState:
    """MySQL's executed GTID set, extended by each transaction."""

    def __init__(self, text: str | None) -> None:
        self._set: Any = GtidSet(text or None)

    def advance(self, gtid: str) -> None:
        self._set = self._set + Gtid(gtid)

    def __str__(self) -> str:
        return str(self._set)


@dataclass(slots=True)
class _StartChecks:
    """What one connection still has to check of where the server started it."""

    start: Checkpoint
    use_gtid: bool
    # gtid mode: the start state, and the domains whose first GTID was checked.
    start_state: MariadbGtidState | None
    unchecked_domains: set[int] = field(default_factory=set)
    verified_rotate: bool = False


class BinlogSource:
    """Yields `Transaction`s and `Heartbeat`s from a start checkpoint; see the module docstring."""

    def __init__(
        self,
        options: SourceOptions,
        decoding: RowsDecoding,
        start: Checkpoint,
        server: ServerInfo | None = None,
    ) -> None:
        self._options = options
        self._decoding = decoding
        self.boundary = start
        self._server = server
        self._reader: Any = None
        self.reconnects = 0

    # -- public ---------------------------------------------------------------

    def __iter__(self) -> Iterator[Transaction | Heartbeat]:
        backoff = Backoff(Exponential(*self._options.reconnect_backoff_s))
        while True:
            try:
                for item in self._follow():
                    backoff.reset()
                    yield item
                # The server ended the dump (EOF): reconnect like after a lost connection.
                reason = "server ended the binlog dump"
            except (pymysql.err.OperationalError, pymysql.err.InterfaceError) as exc:
                code = exc.args[0] if exc.args else None
                if code in _FATAL_MYSQL_ERRORS:
                    raise self._fatal(exc) from exc
                reason = f"{type(exc).__name__}: {exc}"
            except TransactionOrderError as exc:
                reason = str(exc)
            except (ConnectionError, OSError, EOFError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            finally:
                self.close()
            self.reconnects += 1
            delay = backoff.next()
            log.warning(
                "source %s: reconnecting at %s in %.1f s after: %s",
                self._options.source,
                self.boundary.describe(),
                delay,
                reason,
            )
            time.sleep(delay)

    def close(self) -> None:
        if self._reader is not None:
            reader, self._reader = self._reader, None
            reader.close()

    # -- internals ------------------------------------------------------------

    def _fatal(self, exc: Exception) -> Exception:
        code = exc.args[0] if exc.args else None
        message = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
        purged = any(
            text in message
            for text in ("purged", "Could not find first log file", "Could not find GTID state")
        )
        if code == _ER_MASTER_FATAL_ERROR_READING_BINLOG and purged:
            return PurgedBinlogError(
                self._options.source,
                self.boundary.describe(),
                f"server error {code}: {message}",
                self._options.recovery_command,
            )
        if code == _ER_MASTER_FATAL_ERROR_READING_BINLOG:
            return StartPositionMismatch(
                f"source {self._options.source!r}: the server cannot stream from "
                f"{self.boundary.describe()} (error {code}: {message})"
            )
        return SourceError(
            f"source {self._options.source!r}: server refused the replication connection "
            f"at {self.boundary.describe()} (error {code}: {message})"
        )

    def _connect_settings(self) -> dict[str, Any]:
        settings = dict(self._options.connect)
        # A silent connection is dead after three missed heartbeats.
        settings["read_timeout"] = max(int(self._options.heartbeat_s * 3) + 1, 5)
        settings.setdefault("connect_timeout", 5)
        # While Kafka does not acknowledge, the reader stops reading the binlog, and
        # the server aborts a dump connection it cannot write to for net_write_timeout
        # (60 s by default). The reader would then read a large transaction again from
        # its start, and a reader that stalls that long on every pass never gets past
        # it. 600 s is Connector/J's default for streaming reads.
        settings["init_command"] = f"SET SESSION net_write_timeout = {NET_WRITE_TIMEOUT_S}"
        return settings

    def _check(self) -> ServerInfo:
        connection = pymysql.connect(**self._connect_settings())
        try:
            info = check_server(connection, self._options.server_id)
            check_replica_conflict(connection, self._options.server_id, self._options.source)
            if self._options.mode == "file_pos" or not self.boundary.gtid:
                files = binary_logs(connection)
                if self.boundary.file not in files:
                    raise PurgedBinlogError(
                        self._options.source,
                        self.boundary.describe(),
                        f"binlog file {self.boundary.file} is gone; the oldest on the server is "
                        f"{files[0] if files else 'none'}",
                        self._options.recovery_command,
                    )
        finally:
            connection.close()
        if self._options.mode == "gtid" and not self.boundary.gtid:
            raise SourceError(
                f"source {self._options.source!r}: cdc.mode=gtid but the checkpoint "
                f"{self.boundary.describe()} has no GTID state"
            )
        if self._options.mode == "gtid" and not info.gtid_mode:
            raise SourceError(
                f"source {self._options.source!r}: cdc.mode=gtid but the server has gtid_mode=OFF"
            )
        return info

    def _follow(self) -> Iterator[Transaction | Heartbeat]:
        """One replication connection, from `self.boundary`: check the server, open the
        stream, and feed its events to a transaction assembler."""
        info = self._check()
        self._server = info
        start = self.boundary
        use_gtid = self._options.mode == "gtid"
        self._reader = self._stream_reader(info, start, use_gtid)
        assembler = self._assembler(info, start)
        checks = _StartChecks(
            start, use_gtid, MariadbGtidState(start.gtid) if info.flavor == "mariadb" else None
        )
        while True:
            event = self._reader.fetchone()
            if event is None:
                return
            item = self._feed(event, assembler, checks)
            if item is None:
                continue
            if isinstance(item, Transaction):
                self.boundary = item.end
                if use_gtid and item.end.gtid:
                    # The library reconnects by itself on a lost connection; make it
                    # ask for the state after this transaction, not the original one.
                    self._reader.auto_position = item.end.gtid
            yield item

    def _stream_reader(self, info: ServerInfo, start: Checkpoint, use_gtid: bool) -> Any:
        """The library's dump connection, at `start` (file:pos, or the GTID state)."""
        row_query = self._options.row_query
        return BinLogStreamReader(
            connection_settings=self._connect_settings(),
            server_id=self._options.server_id,
            resume_stream=True,
            blocking=True,
            only_events=[*_EVENTS, MariadbAnnotateRowsEvent, RowsQueryLogEvent]
            if row_query
            else _EVENTS,
            log_file=None if use_gtid else start.file,
            log_pos=None if use_gtid else start.pos,
            auto_position=start.gtid if use_gtid else None,
            is_mariadb=use_gtid and info.flavor == "mariadb",
            annotate_rows_event=row_query,
            pymysql_wrapper=AnnotateRowsConnection
            if row_query and info.flavor == "mariadb"
            else None,
            slave_heartbeat=self._options.heartbeat_s,
            enable_logging=False,
        )

    def _assembler(self, info: ServerInfo, start: Checkpoint) -> TransactionAssembler:
        gtid_state: MariadbGtidState | MysqlGtidState | None
        if info.flavor == "mariadb":
            gtid_state = MariadbGtidState(start.gtid)
        elif info.gtid_mode:
            gtid_state = MysqlGtidState(start.gtid)
        else:
            gtid_state = None
        return TransactionAssembler(
            self._decoding,
            gtid_state,
            start.file,
            source=self._options.source,
            on_session_setting=self._options.on_session_setting,
            memory_rows=self._options.transaction_memory_rows,
            memory_bytes=self._options.transaction_memory_bytes,
            spill_dir=self._options.spill_dir,
        )

    def _feed(
        self, event: Any, assembler: TransactionAssembler, checks: _StartChecks
    ) -> Transaction | Heartbeat | None:
        """Give one event to the assembler; a transaction it completes, a heartbeat
        between transactions, or None. One flat branch per event type."""
        if isinstance(event, RotateEvent):
            if event.timestamp == 0 and not checks.verified_rotate:
                self._verify_start(event, checks.start, checks.use_gtid)
                checks.verified_rotate = True
            assembler.rotate(str(event.next_binlog))
        elif isinstance(event, FormatDescriptionEvent):
            assembler.format_description(event)
        elif isinstance(event, HeartbeatLogEvent):
            return None if assembler.in_transaction else Heartbeat()
        elif isinstance(event, MariadbGtidEvent):
            gtid = str(event.gtid)
            self._check_first_gtid(gtid, checks)
            assembler.gtid(event, gtid, int(event.flags), begun=True)
        elif isinstance(event, GtidEvent):
            assembler.gtid(event, str(event.gtid), 0, begun=False)
        elif isinstance(event, TableMapEvent):
            assembler.table_map(event)
        elif isinstance(event, MariadbAnnotateRowsEvent):
            assembler.row_query(event, self._annotation_text(event, assembler))
        elif isinstance(event, RowsQueryLogEvent):
            assembler.row_query(event, str(event.query))
        elif isinstance(event, WriteRowsEvent | UpdateRowsEvent | DeleteRowsEvent):
            assembler.rows(event)
        elif isinstance(event, ExecuteLoadQueryEvent):
            assembler.load_query(event)
        elif isinstance(event, XAPrepareEvent):
            raise SourceError(
                f"XA PREPARE at {assembler.file}:{event_start(event)}: XA transactions "
                "are not supported by the reader"
            )
        elif isinstance(event, XidEvent):
            return assembler.xid(event)
        elif isinstance(event, QueryEvent):
            return assembler.query(event)
        return None

    def _check_first_gtid(self, gtid: str, checks: _StartChecks) -> None:
        """In gtid mode, check each domain's first GTID against the start state."""
        if checks.start_state is None or not checks.use_gtid:
            return
        domain, _, seq = parse_mariadb_gtid(gtid)
        if domain not in checks.unchecked_domains:
            checks.unchecked_domains.add(domain)
            self._verify_gtid(gtid, domain, seq, checks.start_state)

    def _annotation_text(self, event: Any, assembler: TransactionAssembler) -> str:
        raw = bytes(event.sql_statement)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SourceError(
                f"source {self._options.source!r}: the statement of the ANNOTATE_ROWS event "
                f"at {assembler.where(event)} is not UTF-8 ({exc}); output_row_query "
                "publishes statements as UTF-8 text"
            ) from None

    def _verify_start(self, event: Any, start: Checkpoint, use_gtid: bool) -> None:
        got_file, got_pos = str(event.next_binlog), int(event.position)
        if use_gtid:
            return
        if (got_file, got_pos) != (start.file, start.pos):
            raise StartPositionMismatch(
                f"source {self._options.source!r}: asked the server for {start.file}:{start.pos} "
                f"but it streams from {got_file}:{got_pos}"
            )

    def _verify_gtid(self, gtid: str, domain: int, seq: int, start: MariadbGtidState) -> None:
        known = start.seq_of(domain)
        if known is not None and seq <= known:
            raise StartPositionMismatch(
                f"source {self._options.source!r}: asked the server for GTID state "
                f"{start} but its first transaction in domain {domain} is {gtid}, "
                "which that state already contains"
            )
