"""Transaction assembly: binlog events in, whole transactions out.

State machine (one instance per stream connection):

    IDLE --GTID--> OPENED --BEGIN--> IN_TXN          (MySQL; MariaDB GTID without
    IDLE --BEGIN--> IN_TXN                              FL_STANDALONE goes straight
    IN_TXN --TABLE_MAP / ROWS--> IN_TXN                 to IN_TXN)
    IN_TXN --XID or COMMIT/ROLLBACK query--> IDLE    (emit a row transaction)
    OPENED or IDLE --other query--> IDLE             (emit a statement: DDL)
    IN_TXN --DDL query--> IN_TXN                     (CREATE TABLE ... SELECT: kept with
    OPENED --DDL ... START TRANSACTION--> IN_TXN        the rows, published before them)
    IN_TXN or OPENED --ROTATE / FORMAT_DESCRIPTION / GTID / BEGIN--> error

A transaction is emitted only when its end event arrives, so its rows carry the
XID and the last row can carry `commit: true`. The position recorded with it is
the log position just after the end event, which is where a resumed stream must
start: never in the middle of a transaction (a stream resumed there would miss
the TABLE_MAP events and lose rows).

Memory stays bounded whatever the transaction's size: past `memory_rows` decoded
rows, or `memory_bytes` bytes of rows events, the rest of the transaction's rows
go to a temporary file (`SpilledRows`, Maxwell's way). `Transaction.rows()` reads
them back in order once the transaction is complete, so the format is unchanged:
every row carries the XID, the last one `commit: true`.

Binlog files never split a transaction, so a rotate or a new format description
inside one means the connection was re-established under us, and a GTID or
BEGIN inside one means the server replays. Both raise `TransactionOrderError`
so that the caller restarts the stream at the start of the open transaction.
"""

from __future__ import annotations

import logging
import pickle
import re
import struct
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from cdc.ddl import classify
from cdc.replication.errors import (
    PartialRowImage,
    SessionSettingError,
    SourceError,
    TransactionOrderError,
)
from cdc.replication.position import Checkpoint
from cdc.rows import EncodedRow, RowImage, TxnContext

log = logging.getLogger(__name__)

# MariaDB GTID event flags (sql/log_event.h).
_FL_STANDALONE = 1
_FL_PREPARED_XA = 64
_FL_COMPLETED_XA = 128

# A statement that changes rows. Logged as a QUERY event only under
# binlog_format=STATEMENT or MIXED (a session may set either).
_LEADING_COMMENTS = re.compile(r"^\s*(?:/\*.*?\*/\s*|(?:--|#)[^\n]*\n\s*)*", re.DOTALL)
_DML_WORDS = frozenset({"INSERT", "UPDATE", "DELETE", "REPLACE", "LOAD", "WITH"})
_NAME = r"(?:`(?:[^`]|``)+`|[\w$]+)"
_DML_TABLE = re.compile(
    r"^(?:INSERT|REPLACE)(?:\s+(?:LOW_PRIORITY|DELAYED|HIGH_PRIORITY|IGNORE))*(?:\s+INTO)?"
    r"|^UPDATE(?:\s+(?:LOW_PRIORITY|IGNORE))*"
    r"|^DELETE(?:\s+(?:LOW_PRIORITY|QUICK|IGNORE))*\s+FROM",
    re.IGNORECASE,
)
_QUALIFIED = re.compile(rf"\s+({_NAME})(?:\s*\.\s*({_NAME}))?")
_STARTS_TRANSACTION = re.compile(r"\bSTART\s+TRANSACTION\s*;?\s*$", re.IGNORECASE)


def dml_statement(sql: str) -> str | None:
    """`sql` without leading comments when it is a row-changing statement, else None."""
    body = sql[_LEADING_COMMENTS.match(sql).end() :]  # type: ignore[union-attr]
    word = body.split(None, 1)[0].upper() if body.strip() else ""
    return body if word in _DML_WORDS else None


def dml_table(sql: str, database: str) -> str:
    """The `database.table` a DML statement names first, or `<database>.<table>`."""
    head = _DML_TABLE.match(sql)
    if head is not None:
        name = _QUALIFIED.match(sql, head.end())
        if name is not None:
            first, second = (_unquote(n) if n else None for n in name.groups())
            if second is not None:
                return f"{first}.{second}"
            if database:
                return f"{database}.{first}"
    return "<database>.<table>"


def _unquote(name: str) -> str:
    return name[1:-1].replace("``", "`") if name.startswith("`") else name


@dataclass(slots=True)
class RowChange:
    """One decoded row with the table definition it was decoded against."""

    table: Any  # cdc.schema.TableDef
    row: RowImage | EncodedRow
    # The statement that changed the row, when the server logs it (output_row_query).
    query: str | None = None


@dataclass(frozen=True, slots=True)
class Statement:
    """A statement outside any row transaction, usually DDL; or the CREATE of a
    CREATE TABLE ... SELECT, which comes with the rows it writes."""

    database: str
    sql: str


# Defaults of `cdc.transaction_memory_rows` and `cdc.transaction_memory_bytes`.
DEFAULT_MEMORY_ROWS = 50_000
DEFAULT_MEMORY_BYTES = 32 * 1024 * 1024

_LENGTH = struct.Struct("<I")


class SpilledRows:
    """Row changes of one transaction in a temporary file, in order.

    Each row is a length-prefixed pickle of (table index, row image, query); the
    table definitions stay in memory, one per table. The file has no name (it is
    deleted as it is created) and goes away with `close()` or the process.
    """

    def __init__(self, directory: str | None = None) -> None:
        # Lives as long as this object (closed by close()), not a with-block.
        self._file: IO[bytes] = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115
        self._tables: list[Any] = []
        self._table_index: dict[int, int] = {}  # id(table) -> index in _tables
        self.count = 0

    def append(self, change: RowChange) -> None:
        table = change.table
        index = self._table_index.get(id(table))
        if index is None:
            index = self._table_index[id(table)] = len(self._tables)
            self._tables.append(table)
        blob = pickle.dumps((index, change.row, change.query), pickle.HIGHEST_PROTOCOL)
        self._file.write(_LENGTH.pack(len(blob)))
        self._file.write(blob)
        self.count += 1

    def __iter__(self) -> Iterator[RowChange]:
        """The rows in the order they were appended (read back from the file)."""
        self._file.flush()
        self._file.seek(0)
        read = self._file.read
        tables = self._tables
        for _ in range(self.count):
            (size,) = _LENGTH.unpack(read(_LENGTH.size))
            index, row, query = pickle.loads(read(size))
            yield RowChange(tables[index], row, query)

    def close(self) -> None:
        self._file.close()


@dataclass(slots=True)
class Transaction:
    ctx: TxnContext
    end: Checkpoint
    # The first rows, held in memory; the rest (if any) are in `spilled`.
    changes: list[RowChange] = field(default_factory=list)
    statement: Statement | None = None
    spilled: SpilledRows | None = None

    def rows(self) -> Iterator[RowChange]:
        """Every row change of the transaction, in binlog order."""
        yield from self.changes
        if self.spilled is not None:
            yield from self.spilled

    @property
    def row_count(self) -> int:
        return len(self.changes) + (self.spilled.count if self.spilled is not None else 0)

    def close(self) -> None:
        """Release the spilled rows' file (the transaction can no longer be read)."""
        if self.spilled is not None:
            self.spilled.close()


class RowsDecoding(Protocol):
    """What the assembler needs from table tracking and row decoding."""

    def on_table_map(self, event: Any, where: str) -> None: ...

    def on_rotate(self, next_file: str) -> None: ...

    def decode_rows(self, event: Any, where: str) -> Sequence[RowChange]:
        """The rows of a rows event; empty when the table is filtered out."""
        ...


class GtidTracker(Protocol):
    def advance(self, gtid: str) -> None: ...

    def __str__(self) -> str: ...


@dataclass(slots=True)
class _Open:
    gtid: str | None
    server_id: int
    thread_id: int | None
    file: str
    pos: int
    ts: int
    begun: bool
    changes: list[RowChange] = field(default_factory=list)
    memory_bytes: int = 0  # rows events' bytes behind `changes`
    spilled: SpilledRows | None = None
    # CREATE TABLE ... SELECT: the schema change logged before the rows it fills.
    statement: Statement | None = None
    # The statement behind the next rows events (ANNOTATE_ROWS / ROWS_QUERY).
    row_query: str | None = None


def event_start(event: Any) -> int:
    """Log position of the first byte of `event` (its header's log_pos is the next event's)."""
    packet = event.packet
    return int(packet.log_pos) - int(packet.event_size)


def event_end(event: Any) -> int:
    return int(event.packet.log_pos)


class TransactionAssembler:
    """Feeds on events of one stream connection; see the module docstring."""

    def __init__(
        self,
        decoding: RowsDecoding,
        gtid_state: GtidTracker | None,
        file: str,
        source: str = "",
        on_session_setting: Callable[[SessionSettingError], None] | None = None,
        memory_rows: int = DEFAULT_MEMORY_ROWS,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
        spill_dir: str | None = None,
    ) -> None:
        self._decoding = decoding
        self._memory_rows = memory_rows
        self._memory_bytes = memory_bytes
        self._spill_dir = spill_dir
        self._gtid_state = gtid_state
        self.file = file
        self._open: _Open | None = None
        self._source = source
        # Without a handler a change written under a bad session setting raises;
        # the checkpoint skip command passes one to read past that transaction.
        self._on_session_setting = on_session_setting

    def _session_setting(
        self, event: Any, setting: str, wanted: str, table: str, detail: str
    ) -> None:
        opened = self._open
        position = f"{opened.file}:{opened.pos}" if opened else self.where(event)
        error = SessionSettingError(
            self._source,
            setting,
            wanted,
            position,
            opened.gtid if opened else None,
            table,
            f"{detail} at {self.where(event)}",
        )
        if self._on_session_setting is None:
            raise error
        self._on_session_setting(error)

    @property
    def in_transaction(self) -> bool:
        return self._open is not None

    def where(self, event: Any) -> str:
        return f"{self.file}:{event_start(event)}"

    def rotate(self, next_file: str) -> None:
        if self._open is not None:
            raise TransactionOrderError(
                f"binlog rotated to {next_file} inside the transaction that starts at "
                f"{self._open.file}:{self._open.pos}: the connection was re-established"
            )
        self.file = next_file
        self._decoding.on_rotate(next_file)

    def format_description(self, event: Any) -> None:
        if self._open is not None:
            raise TransactionOrderError(
                f"format description at {self.where(event)} inside the transaction that "
                f"starts at {self._open.file}:{self._open.pos}: the connection was "
                "re-established"
            )

    def gtid(self, event: Any, gtid: str, flags: int, begun: bool) -> None:
        if self._open is not None:
            raise TransactionOrderError(
                f"GTID {gtid} at {self.where(event)} inside the transaction that starts at "
                f"{self._open.file}:{self._open.pos}: the server replays"
            )
        if flags & (_FL_PREPARED_XA | _FL_COMPLETED_XA):
            raise SourceError(
                f"XA transaction {gtid} at {self.where(event)}: XA transactions are not "
                "supported by the reader"
            )
        self._open = _Open(
            gtid=gtid,
            server_id=int(event.packet.server_id),
            thread_id=None,
            file=self.file,
            pos=event_start(event),
            ts=int(event.timestamp),
            begun=begun and not flags & _FL_STANDALONE,
        )

    def table_map(self, event: Any) -> None:
        self._decoding.on_table_map(event, self.where(event))

    def row_query(self, event: Any, sql: str) -> None:
        """The statement behind the rows events that follow, up to the next one."""
        if self._open is None:
            raise TransactionOrderError(
                f"row query event at {self.where(event)} outside a transaction"
            )
        self._open.row_query = sql

    def rows(self, event: Any) -> None:
        if self._open is None or not self._open.begun:
            raise TransactionOrderError(f"rows event at {self.where(event)} outside a transaction")
        try:
            changes = self._decoding.decode_rows(event, self.where(event))
        except PartialRowImage as exc:
            self._session_setting(event, exc.setting, exc.wanted, exc.table, exc.detail)
            return
        opened = self._open
        if opened.row_query is not None:
            for change in changes:
                change.query = opened.row_query
        if opened.spilled is None:
            opened.changes.extend(changes)
            opened.memory_bytes += int(event.packet.event_size)
            if len(opened.changes) > self._memory_rows or opened.memory_bytes > self._memory_bytes:
                # Keep the first `memory_rows` in memory; the rest, and every later
                # row of the transaction, go to the file.
                log.info(
                    "transaction at %s:%d: past %d rows or %d bytes in memory; spilling "
                    "its further rows to a temporary file",
                    opened.file,
                    opened.pos,
                    self._memory_rows,
                    self._memory_bytes,
                )
                opened.spilled = SpilledRows(self._spill_dir)
                for change in opened.changes[self._memory_rows :]:
                    opened.spilled.append(change)
                del opened.changes[self._memory_rows :]
        else:
            for change in changes:
                opened.spilled.append(change)

    def load_query(self, event: Any) -> None:
        """LOAD DATA logged as a statement (EXECUTE_LOAD_QUERY): no rows to publish."""
        schema = event.schema.decode() if isinstance(event.schema, bytes) else str(event.schema)
        self._session_setting(
            event,
            "binlog_format",
            "ROW",
            f"{schema or '<database>'}.<table>",
            "binlog_format=STATEMENT or MIXED: LOAD DATA logged as a statement",
        )

    def xid(self, event: Any) -> Transaction:
        if self._open is None:
            raise TransactionOrderError(f"XID at {self.where(event)} outside a transaction")
        return self._close(event, xid=int(event.xid), statement=None)

    def query(self, event: Any) -> Transaction | None:
        sql = str(event.query).strip()
        word = sql.split(None, 1)[0].upper() if sql else ""
        if word == "BEGIN":
            if self._open is not None and self._open.begun:
                raise TransactionOrderError(
                    f"BEGIN at {self.where(event)} inside the transaction that starts at "
                    f"{self._open.file}:{self._open.pos}: the server replays"
                )
            self._open_at_query(event).begun = True
            return None
        if word in ("COMMIT", "ROLLBACK") and self._open is not None and self._open.begun:
            return self._close(event, xid=None, statement=None)
        schema = event.schema.decode() if isinstance(event.schema, bytes) else str(event.schema)
        dml = dml_statement(sql)
        if dml is not None:
            # Rows changed by a statement the server logged as text: a session ran
            # with binlog_format=STATEMENT or MIXED. No row values to publish.
            opened = self._open_at_query(event)
            self._session_setting(
                event,
                "binlog_format",
                "ROW",
                dml_table(dml, schema),
                f"binlog_format=STATEMENT or MIXED: DML logged as the statement {dml[:200]!r}",
            )
            if opened.begun:
                return None
            return self._close(event, xid=None, statement=None)
        if self._open is not None and self._open.begun:
            if classify(sql, schema):
                self._statement_in_transaction(event, Statement(database=schema, sql=sql))
            # Any other statement logged inside a row transaction (SAVEPOINT and the
            # like) changes no rows; the transaction goes on.
            return None
        opened = self._open_at_query(event)
        if _STARTS_TRANSACTION.search(sql) and classify(sql, schema):
            # MySQL's atomic CREATE TABLE ... SELECT: `CREATE TABLE ... START
            # TRANSACTION`, then its rows and an XID, with no BEGIN.
            opened.begun = True
            self._statement_in_transaction(event, Statement(database=schema, sql=sql))
            return None
        return self._close(event, xid=None, statement=Statement(database=schema, sql=sql))

    def _statement_in_transaction(self, event: Any, statement: Statement) -> None:
        """A schema change the server logs inside the transaction of the rows it
        writes (CREATE TABLE ... SELECT): kept, to publish before those rows."""
        opened = self._open
        assert opened is not None
        if opened.statement is not None or opened.changes or opened.spilled is not None:
            # A CREATE implicitly commits what came before it: a schema change after
            # rows, or a second one, is not a form the reader knows how to order.
            raise SourceError(
                f"schema change {statement.sql[:200]!r} at {self.where(event)} inside the "
                f"transaction that starts at {opened.file}:{opened.pos}, after its rows or "
                "another schema change: the reader cannot place it in the stream"
            )
        opened.statement = statement

    def _open_at_query(self, event: Any) -> _Open:
        """The transaction a QUERY event belongs to: the one a GTID event opened (the
        query carries its thread id), or a new one starting at this event."""
        if self._open is None:
            self._open = _Open(
                gtid=None,
                server_id=int(event.packet.server_id),
                thread_id=int(event.slave_proxy_id),
                file=self.file,
                pos=event_start(event),
                ts=int(event.timestamp),
                begun=False,
            )
        else:
            self._open.thread_id = int(event.slave_proxy_id)
        return self._open

    def _close(self, event: Any, xid: int | None, statement: Statement | None) -> Transaction:
        assert self._open is not None
        opened, self._open = self._open, None
        if opened.gtid is not None and self._gtid_state is not None:
            self._gtid_state.advance(opened.gtid)
        ctx = TxnContext(
            server_id=opened.server_id,
            thread_id=opened.thread_id,
            gtid=opened.gtid,
            file=opened.file,
            pos=opened.pos,
            ts=opened.ts,
            xid=xid,
        )
        end = Checkpoint(
            file=self.file,
            pos=event_end(event),
            gtid=str(self._gtid_state) if self._gtid_state is not None else None,
            ts=int(event.timestamp),
            server_id=opened.server_id,
        )
        return Transaction(
            ctx=ctx,
            end=end,
            changes=opened.changes,
            statement=statement or opened.statement,
            spilled=opened.spilled,
        )
