"""Bootstrap: publish the current rows of a table, consistently with the live stream.

`shardctl cdc bootstrap db.table [--where ...]` stores a request under
`<root>cdc/<source>/bootstrap/<id>`. By default it is an incremental snapshot
that never pauses the stream (`cdc.snapshot`); this module holds the request
document, the reading of a table's columns and values shared by both modes, and
the blocking mode (`--blocking`), which the leading reader runs between
transactions in its own stream:

    PENDING --reader takes a snapshot--> ARMED(S) --stream reaches S--> EMITTING
    EMITTING --all messages acknowledged--> DONE (request key deleted)
    any state --bad table/where--> FAILED (request key holds the error)

Consistency rule (exact, not approximate):

    The snapshot is read in a `START TRANSACTION WITH CONSISTENT SNAPSHOT`
    transaction, and MariaDB reports the binlog position S that this snapshot
    corresponds to (`binlog_snapshot_file`/`binlog_snapshot_position`): it
    contains exactly the transactions that end at or before S. The reader
    publishes every streamed transaction that starts before S, then
    `bootstrap-start`, one `bootstrap-insert` per row of the snapshot, and
    `bootstrap-complete`, and only then the transactions that start at or
    after S.

So, per shard, a consumer that applies messages in order sees each row's
history up to S, then the row as of S, then its changes after S, and ends with
the table's true state. No change is missing and none is applied out of order.
(Debezium's incremental snapshot reaches the same end state with chunked
reads and watermarks and does not pause the stream; this implementation pauses
the stream while it publishes the snapshot, and holds one read view open from
the request until then.)

`bootstrap-start` and `bootstrap-complete` go to every shard, so a consumer of
any shard sees the bracket; `bootstrap-insert` goes to the row's shard, like
the row's live changes. Event ids are `bootstrap:<request id>#<n>`, the same if
the bootstrap is run again after a crash (it restarts from scratch, as in
Maxwell). The request's `where` is SQL from the operator and is used as given.
Needs MariaDB (binlog_snapshot_* status); InnoDB tables.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import pymysql
import pymysql.converters
from pymysql.constants import FIELD_TYPE

from cdc.acks import AckTracker
from cdc.decoding.columns import parse_json_text
from cdc.decoding.json_columns import json_column_of_check
from cdc.etcd_calls import call_with_retry
from cdc.formatter import BootstrapType
from cdc.leader_context import LeaderContext
from cdc.producers.base import Outgoing, Producer
from cdc.publisher import Publisher
from cdc.replication.position import BinlogPosition, Checkpoint
from cdc.rows import TxnContext
from cdc.schema import ColumnDef, ColumnType, TableDef
from shardctl.core.etcd.client import Delete, EtcdClient, EtcdUnavailable, Put
from shardctl.core.etcd.election import Leadership, NotLeader
from shardctl.core.keyspace import Keyspace

log = logging.getLogger(__name__)


class BootstrapError(Exception):
    """A bootstrap request cannot be carried out; the message names the table."""


Control = Literal["run", "pause", "cancel"]


@dataclass(frozen=True, slots=True)
class BootstrapRequest:
    """A request, written by `shardctl cdc bootstrap`; the operator's controls
    (`control`) are written here too. The reader writes only `error` (blocking
    mode); an incremental snapshot's progress has its own key (`cdc.snapshot`)."""

    id: str
    database: str
    table: str
    where: str | None = None
    error: str | None = None
    # The single-instant snapshot that pauses the stream (this module), not the
    # incremental one (`cdc.snapshot`).
    blocking: bool = False
    control: Control = "run"
    rows_per_s: float | None = None  # incremental only: at most this many rows a second

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "id": self.id,
                "database": self.database,
                "table": self.table,
                "where": self.where,
                "error": self.error,
                "blocking": self.blocking,
                "control": self.control,
                "rows_per_s": self.rows_per_s,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> BootstrapRequest:
        doc = json.loads(raw)
        control: Control
        match doc.get("control") or "run":
            case "run" | "pause" | "cancel" as known:
                control = known
            case other:
                raise ValueError(f"control {other!r} is not run, pause or cancel")
        rate = doc.get("rows_per_s")
        return cls(
            id=str(doc["id"]),
            database=str(doc["database"]),
            table=str(doc["table"]),
            where=doc.get("where"),
            error=doc.get("error"),
            # Requests stored before the incremental snapshot existed were blocking.
            blocking=bool(doc.get("blocking", True)),
            control=control,
            rows_per_s=None if rate is None else float(rate),
        )


def new_request_id() -> str:
    # Sortable by time, so pending requests run in the order they were made.
    return f"{int(time.time() * 1000):013d}-{uuid.uuid4().hex[:8]}"


async def submit_request(
    client: EtcdClient,
    keyspace: Keyspace,
    source: str,
    database: str,
    table: str,
    where: str | None,
    *,
    blocking: bool = False,
    rows_per_s: float | None = None,
) -> BootstrapRequest:
    request = BootstrapRequest(
        new_request_id(), database, table, where, blocking=blocking, rows_per_s=rows_per_s
    )
    await client.put(keyspace.cdc_bootstrap_prefix(source) + request.id, request.to_json())
    return request


# --- reading the snapshot ---------------------------------------------------------

_TEXT_TEMPORAL = {
    FIELD_TYPE.DATE,
    FIELD_TYPE.NEWDATE,
    FIELD_TYPE.DATETIME,
    FIELD_TYPE.TIMESTAMP,
    FIELD_TYPE.TIME,
}


def _as_text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def snapshot_conversions() -> dict[Any, Any]:
    # Temporal values as the server writes them (fsp digits, zero dates kept):
    # the same text the binlog decoder produces.
    conv: dict[Any, Any] = dict(pymysql.converters.conversions)
    for field_type in _TEXT_TEMPORAL:
        conv[field_type] = _as_text
    return conv


_INT_TYPES = {
    "tinyint": ColumnType.TINY,
    "smallint": ColumnType.SHORT,
    "mediumint": ColumnType.INT24,
    "int": ColumnType.LONG,
    "bigint": ColumnType.LONGLONG,
}
_BINARY_TYPES = {"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"}
_TEXT_TYPES = {"char", "varchar", "tinytext", "text", "mediumtext", "longtext"}
_TYPE_OF = {
    "decimal": ColumnType.NEWDECIMAL,
    "float": ColumnType.FLOAT,
    "double": ColumnType.DOUBLE,
    "date": ColumnType.DATE,
    "datetime": ColumnType.DATETIME2,
    "timestamp": ColumnType.TIMESTAMP2,
    "time": ColumnType.TIME2,
    "year": ColumnType.YEAR,
    "bit": ColumnType.BIT,
    "enum": ColumnType.ENUM,
    "set": ColumnType.SET,
    "json": ColumnType.JSON,
    "char": ColumnType.STRING,
    "binary": ColumnType.STRING,
    "varchar": ColumnType.VARCHAR,
    "varbinary": ColumnType.VARCHAR,
}


@dataclass(frozen=True, slots=True)
class SourceColumn:
    name: str
    kind: str  # information_schema DATA_TYPE
    json: bool


def read_columns(cursor: Any, database: str, table: str) -> tuple[TableDef, list[SourceColumn]]:
    cursor.execute(
        "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_KEY, COLUMN_TYPE FROM information_schema.COLUMNS"
        " WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
        (database, table),
    )
    rows = cursor.fetchall()
    if not rows:
        raise BootstrapError(f"bootstrap of {database}.{table}: no such table")
    cursor.execute(
        "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS"
        " WHERE CONSTRAINT_SCHEMA = %s AND TABLE_NAME = %s",
        (database, table),
    )
    json_names = {json_column_of_check(str(r[0])) for r in cursor.fetchall()}
    cursor.execute(
        "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE WHERE TABLE_SCHEMA = %s"
        " AND TABLE_NAME = %s AND CONSTRAINT_NAME = 'PRIMARY' ORDER BY ORDINAL_POSITION",
        (database, table),
    )
    primary_key = tuple(str(r[0]) for r in cursor.fetchall())
    columns: list[SourceColumn] = []
    defs: list[ColumnDef] = []
    for name, data_type, _key, column_type in rows:
        kind = str(data_type).lower()
        supported = (
            kind in _INT_TYPES or kind in _BINARY_TYPES or kind in _TEXT_TYPES or kind in _TYPE_OF
        )
        if not supported:
            raise BootstrapError(
                f"bootstrap of {database}.{table}: column {name!r} of type {column_type} "
                "is not supported"
            )
        is_json = kind == "json" or (kind in _TEXT_TYPES and name in json_names)
        columns.append(SourceColumn(str(name), kind, is_json))
        col_type = _INT_TYPES.get(kind) or _TYPE_OF.get(kind) or ColumnType.BLOB
        defs.append(
            ColumnDef(
                name=str(name),
                type=col_type,
                is_json=is_json,
                unsigned="unsigned" in str(column_type).lower(),
            )
        )
    return TableDef(0, database, table, tuple(defs), primary_key), columns


def json_ready(column: SourceColumn, value: Any, where: str) -> Any:
    """A snapshot value in the form the binlog decoder gives the same value."""
    if value is None:
        return None
    kind = column.kind
    try:
        if column.json:
            raw = value if isinstance(value, bytes) else str(value).encode()
            return parse_json_text(raw)
        if kind in _BINARY_TYPES:
            return base64.b64encode(bytes(value)).decode()
        if kind == "bit":
            return int.from_bytes(bytes(value), "big")
        if kind == "set":
            text = str(value)
            return text.split(",") if text else []
        if kind == "float":
            return float(value)
        return value
    except (ValueError, TypeError) as exc:
        raise BootstrapError(f"bootstrap {where}: column {column.name!r}: {exc}") from None


@dataclass
class _Armed:
    request: BootstrapRequest
    key: str
    connection: Any
    snapshot: BinlogPosition
    table: TableDef
    columns: list[SourceColumn]


class BootstrapRunner:
    """Runs pending bootstrap requests inside the reader's stream; see the module docstring."""

    def __init__(self, context: LeaderContext) -> None:
        self._ctx = context
        self._prefix = context.keyspace.cdc_bootstrap_prefix(context.options.source)
        self._timeout = 10.0
        self.armed: _Armed | None = None
        self.completed = 0

    # -- step 1: take the snapshot ----------------------------------------------

    def arm_next(self, leadership: Leadership) -> bool:
        """Take the snapshot for the oldest pending request; True if one is armed."""
        if self.armed is not None:
            return True
        listing = call_with_retry(
            self._ctx.loop,
            lambda: self._ctx.client.get_prefix(self._prefix),
            f"reading {self._prefix}",
            deadline_s=5.0,
            timeout_s=self._timeout,
        )
        for kv in sorted(listing.items, key=lambda kv: kv.key):
            try:
                request = BootstrapRequest.from_json(kv.value)
            except (ValueError, KeyError, TypeError) as exc:
                log.error("bootstrap request %s is unreadable: %s", kv.key, exc)
                continue
            if request.error is not None or not request.blocking:
                continue
            try:
                self.armed = self._arm(request, kv.key)
            except (BootstrapError, pymysql.err.MySQLError) as exc:
                self._fail(leadership, request, kv.key, str(exc))
                continue
            log.info(
                "bootstrap %s of %s.%s armed at snapshot %s",
                request.id,
                request.database,
                request.table,
                self.armed.snapshot,
            )
            return True
        return False

    def _arm(self, request: BootstrapRequest, key: str) -> _Armed:
        if not self._ctx.row_filter.includes_table(request.database, request.table):
            raise BootstrapError(
                f"bootstrap of {request.database}.{request.table}: the table is excluded by "
                "cdc.filter"
            )
        connection = pymysql.connect(
            **self._ctx.connect, conv=snapshot_conversions(), charset="utf8mb4"
        )
        try:
            with connection.cursor() as cursor:
                table, columns = read_columns(cursor, request.database, request.table)
                cursor.execute("SET time_zone = '+00:00'")
                cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                cursor.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
                cursor.execute("SHOW STATUS LIKE 'binlog_snapshot_%'")
                status = {str(k).lower(): v for k, v in cursor.fetchall()}
            file = status.get("binlog_snapshot_file")
            pos = status.get("binlog_snapshot_position")
            if not file or pos is None:
                raise BootstrapError(
                    f"bootstrap of {request.database}.{request.table}: the server reports no "
                    "binlog_snapshot_file/position (bootstrap needs MariaDB)"
                )
            return _Armed(
                request, key, connection, BinlogPosition(str(file), int(pos)), table, columns
            )
        except BaseException:
            connection.close()
            raise

    # -- step 2: publish at the snapshot's position --------------------------------

    def due(self, ctx: TxnContext | None) -> bool:
        """Publish now? Before a transaction that starts at or after S, or when idle."""
        if self.armed is None:
            return False
        if ctx is None:
            return True
        at = BinlogPosition(ctx.file, ctx.pos)
        return at.sort_key() >= self.armed.snapshot.sort_key()

    def emit(
        self,
        producer: Producer,
        tracker: AckTracker[Checkpoint],
        boundary: Checkpoint,
        leadership: Leadership,
    ) -> None:
        armed = self.armed
        assert armed is not None
        request = armed.request
        name = f"{request.database}.{request.table}"
        sent: list[Outgoing] = []
        try:
            count = 0
            rows: list[Outgoing] = []
            sent.extend(
                edge_messages(
                    self._ctx.publisher,
                    "bootstrap-start",
                    armed.table,
                    f"bootstrap:{request.id}#start",
                )
            )
            for data in self._rows(armed):
                count += 1
                rows.append(
                    insert_message(
                        self._ctx.publisher, armed.table, f"bootstrap:{request.id}#{count}", data
                    )
                )
                if len(rows) >= 1000:
                    self._send(producer, tracker, boundary, sent + rows)
                    sent, rows = [], []
                    if not leadership.session.is_valid():
                        self._close()
                        raise NotLeader(
                            f"bootstrap {request.id} of {name}: leadership lost while "
                            "publishing the snapshot; the next leader runs it again"
                        )
            complete = edge_messages(
                self._ctx.publisher,
                "bootstrap-complete",
                armed.table,
                f"bootstrap:{request.id}#complete",
            )
            self._send(producer, tracker, boundary, sent + rows + complete)
        except (BootstrapError, pymysql.err.MySQLError) as exc:
            self._close()
            # Messages already sent stay sent; consumers see a start without a complete.
            self._fail(leadership, request, armed.key, str(exc))
            return
        self._close()
        # Delivered in full before the request is marked done: a crash before this
        # point runs the bootstrap again.
        producer.flush(120)
        try:
            call_with_retry(
                self._ctx.loop,
                lambda: leadership.guarded_txn([Delete(armed.key)]),
                f"removing {armed.key}",
                timeout_s=self._timeout,
            )
        except EtcdUnavailable as exc:
            log.error(
                "bootstrap %s of %s published, but its request could not be removed; "
                "it will run again: %s",
                request.id,
                name,
                exc,
            )
            return
        self.completed += 1
        log.info(
            "bootstrap %s of %s done: %d rows at snapshot %s",
            request.id,
            name,
            count,
            armed.snapshot,
        )

    def _send(
        self,
        producer: Producer,
        tracker: AckTracker[Checkpoint],
        boundary: Checkpoint,
        messages: list[Outgoing],
    ) -> None:
        ack = partial(tracker.ack, tracker.open(boundary, len(messages)))
        for message in messages:
            producer.send(message, ack)
        producer.poll(0)

    def _rows(self, armed: _Armed) -> Iterator[dict[str, Any]]:
        request = armed.request
        sql = f"SELECT * FROM `{quote_ident(request.database)}`.`{quote_ident(request.table)}`"
        if request.where:
            sql += f" WHERE {request.where}"
        where = f"{request.id} of {request.database}.{request.table}"
        cursor = armed.connection.cursor(pymysql.cursors.SSCursor)
        try:
            cursor.execute(sql)
            names = [d[0] for d in cursor.description]
            if names != [c.name for c in armed.columns]:
                raise BootstrapError(
                    f"bootstrap {where}: columns changed while the snapshot was taken"
                )
            for row in cursor:
                yield {
                    col.name: json_ready(col, value, where)
                    for col, value in zip(armed.columns, row, strict=True)
                }
        finally:
            cursor.close()

    def _close(self) -> None:
        if self.armed is not None:
            try:
                self.armed.connection.close()
            finally:
                self.armed = None

    def close(self) -> None:
        self._close()

    def _fail(
        self, leadership: Leadership, request: BootstrapRequest, key: str, error: str
    ) -> None:
        log.error(
            "bootstrap %s of %s.%s failed: %s", request.id, request.database, request.table, error
        )
        failed = dataclasses.replace(request, error=error)
        try:
            call_with_retry(
                self._ctx.loop,
                lambda: leadership.guarded_txn([Put(key, failed.to_json())]),
                f"marking {key} failed",
                timeout_s=self._timeout,
            )
        except EtcdUnavailable as exc:
            log.error("bootstrap %s: its failure could not be recorded: %s", request.id, exc)


def edge_messages(
    publisher: Publisher, kind: BootstrapType, table: TableDef, event_id: str
) -> list[Outgoing]:
    """`bootstrap-start` or `bootstrap-complete`, one to every shard."""
    message = publisher.formatter.format_bootstrap(kind, table, event_id=event_id)
    return [_outgoing(message, shard) for shard in range(publisher.partitioner.num_shards)]


def insert_message(
    publisher: Publisher, table: TableDef, event_id: str, data: dict[str, Any]
) -> Outgoing:
    """A `bootstrap-insert` of one row, on the row's shard (that of its live changes)."""
    message = publisher.formatter.format_bootstrap(
        "bootstrap-insert", table, event_id=event_id, data=data
    )
    shard = publisher.partitioner.shard(
        message.key, message.database, message.table, None, data, table.primary_key
    )
    return _outgoing(message, shard)


def quote_ident(name: str) -> str:
    return name.replace("`", "``")


def _outgoing(message: Any, shard: int) -> Outgoing:
    return Outgoing(
        key=message.key,
        value=message.value,
        shard=shard,
        event_id=message.event_id,
        database=message.database,
        table=message.table,
    )
