"""The SQL sink: materialize rows into MariaDB/MySQL, exactly once per event.

`--handler workers.sinks.sql:SqlSink`. What each event of a batch writes:

    insert, update, bootstrap-insert  ->  INSERT ... ON DUPLICATE KEY UPDATE (upsert)
                                          (an update that changed the primary key first
                                          deletes the row under the old key)
    delete                            ->  DELETE by primary key
    anything else (DDL, bootstrap-start/-complete)  ->  skipped

The writes of a batch are folded per primary key (the last image wins; a delete
before it stays a DELETE first) and go out as multi-row statements
(workers.sinks.row_changes); `fold_changes = false` keeps every change a write of
its own, still in multi-row statements.

A batch is ONE database transaction, which also holds the shard's fence and offsets:

    shardctl_fences  (scope, shard) -> token              the newest owner token seen
    shardctl_offsets (scope, shard, topic) -> position, event_id, token   (one row per
                                                         source topic of the shard)
    shardctl_applied (scope, shard, topic, stream) -> the newest applied change, as
                     its place in the source's commit order (shardctl.core.event_ids)
    shardctl_applied_runs (scope, shard, topic, stream, last_txn, first_txn) -> the
                     fingerprint (ts, xid) of each transaction a batch applied, one row
                     per batch and stream; the newest `replay_window` transactions
                     (at least) are kept

A stream is the message's `source` identity (source name and server_id) plus the
id's own order stream (GTID domain, MySQL server uuid, or binlog file name), so two
sources, or two servers of one source, never share one.

    BEGIN
      SELECT token FROM shardctl_fences ... FOR UPDATE     -- serializes owners of a shard
      stored token > batch token  ->  ROLLBACK, raise Fenced (a zombie is refused)
      skip events below the stored position of their topic   (already applied)
      an event not after the newest applied change of its topic and stream:
           its transaction was applied with the same fingerprint -> skip it (the CDC
           reader published it again after a restart: same event ids)
           else -> ROLLBACK, raise ShardHalted: the source's position went backwards
           (RESET MASTER, a restore, binlog renumbering); the message names the shard,
           topic, stream, both positions and `shardctl worker forget-stream`
      apply the rest; write the new positions and newest changes
    COMMIT

So data and offset commit together, a stale owner cannot write, a batch applied
twice has no second effect, and neither has a change the reader published twice:
the sink's effect is exactly-once per source change. `positions(shard)`
returns the stored positions, and the consumer resumes from them. `on_assign`
raises the fence to the new token at once, so a zombie is refused even before the
new owner's first batch.

Target: database `database` (default: the event's own database), table = the event's
table; the tables must exist, unless `schema_evolution = basic`: then, before the
batch's transaction (MariaDB commits DDL at once), a missing table is created and
new columns are added from the row values (workers.sinks.schema_evolution), each
change logged with the event id that needed it. Nothing is dropped or narrowed. With
`none` (the default) a missing table or column dead-letters the event, naming both.
A number with more digits after the point than its DECIMAL column keeps is
dead-lettered, never rounded. The primary key comes from the event's
`primary_key_columns` or else from the target table. Maxwell values are converted
back by the target column's type: base64 -> bytes for binary columns, JSON values ->
JSON text, SET lists -> comma lists.

Settings (environment `SHARDCTL_SINK_SQL_*`, or handler options, except the password
which is environment/file only): host, port, user, password / password_file,
database, scope (default: the cluster name), replay_window (transactions remembered
per shard, topic and stream to recognise a replay; a reader replay deeper than that
stops the shard as a backward position would), prune_every (how many transactions
a stream adds between two prunes to replay_window, default 1000), fold_changes
(default true), schema_evolution (none or basic, default none). TLS,
from the environment only: SHARDCTL_SINK_SQL_TLS__CA_FILE (required TLS, certificate
and host name verified), ..._TLS__CERT_FILE and ..._TLS__KEY_FILE (a client
certificate).

The engine is written against a `Dialect` (workers.sinks.sql_common): MariaDB's is
here, PostgreSQL's in workers.sinks.postgres. MySQL 8.0.19 and later is told
from MariaDB by its version and gets the row-alias upsert (`VALUES (...) AS _new ON
DUPLICATE KEY UPDATE c = _new.c`), since VALUES() there is deprecated.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
import threading
from collections.abc import Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, NoReturn

import msgspec
import pymysql
from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pymysql.constants.SERVER_STATUS import SERVER_STATUS_NO_BACKSLASH_ESCAPES
from pymysql.converters import escape_string

from shardctl.core.config import ConfigError, MySQLSettings, TLSSettings, read_secret
from shardctl.core.event_ids import describe_key, order_key
from workers.events import Batch, Event
from workers.handlers import Fenced, HandlerContext, ShardHalted, TransientError
from workers.sinks.row_changes import RowChanges
from workers.sinks.schema_evolution import (
    MARIADB_TYPES,
    MYSQL_TYPES,
    SchemaEvolution,
    Unmappable,
    fraction_digits,
    key_columns,
    mariadb_refusal,
    value_kind,
)
from workers.sinks.sql_common import STREAM_CHARS, Dialect, MissingTable, TargetTable
from workers.sinks.sql_common import fingerprint as _fingerprint
from workers.sinks.sql_common import txn_text as _txn_text

log = logging.getLogger(__name__)

_BINARY = {"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"}
_UPSERT_TYPES = {"insert", "update", "bootstrap-insert"}
_WRITE_TYPES = _UPSERT_TYPES | {"delete"}
_ROW_TYPES = {"insert", "update", "delete"}
# Values `column_value` returns unchanged for a plain column (TargetTable.plain).
_SCALARS = frozenset({int, str, float, bool, Decimal})

# Longest stream name the bookkeeping tables hold (source identity plus the id's stream).
_STREAM_CHARS = STREAM_CHARS


# ER_DUP_FIELDNAME: ADD COLUMN of a column the table has.
_DUPLICATE_COLUMN = 1060

# Server error codes that pass by waiting: the batch is retried, never dead-lettered.
TRANSIENT_MYSQL_CODES = frozenset(
    {
        1040,  # ER_CON_COUNT_ERROR: too many connections
        1053,  # ER_SERVER_SHUTDOWN
        1205,  # ER_LOCK_WAIT_TIMEOUT
        1213,  # ER_LOCK_DEADLOCK
        1290,  # ER_OPTION_PREVENTS_STATEMENT: read-only, e.g. during a failover
        1927,  # ER_CONNECTION_KILLED (MariaDB)
        2002,  # CR_CONNECTION_ERROR: no socket
        2003,  # CR_CONN_HOST_ERROR: cannot connect
        2006,  # CR_SERVER_GONE_ERROR
        2013,  # CR_SERVER_LOST: lost connection during a query
        4031,  # ER_CLIENT_INTERACTION_TIMEOUT (MySQL 8): disconnected while idle
    }
)


def mysql_error_is_transient(error: BaseException) -> bool:
    """True for a failure of the connection or the server's moment (retry and wait),
    False for one of the data (a data error, a constraint, a missing table or column:
    the event is dead-lettered). PyMySQL raises InterfaceError on a closed connection
    and OSError from the socket."""
    if isinstance(error, (pymysql.err.InterfaceError, OSError)):
        return True
    if isinstance(error, pymysql.err.MySQLError) and error.args:
        code = error.args[0]
        return isinstance(code, int) and code in TRANSIENT_MYSQL_CODES
    return False


class SqlSinkSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SHARDCTL_SINK_SQL_", env_nested_delimiter="__", extra="forbid"
    )

    host: str = "127.0.0.1"
    port: int = Field(default=3306, gt=0, lt=65536)
    user: str = "root"
    password: SecretStr | None = None
    password_file: Path | None = None
    database: str | None = None  # where the bookkeeping tables live, and the target
    scope: str | None = None
    replay_window: int = Field(default=10_000, ge=1)
    # Prune a stream's remembered transactions to replay_window once this many were added.
    prune_every: int = Field(default=1000, ge=1)
    # Fold a batch's changes per primary key (false: each change is a write of its own).
    fold_changes: bool = True
    # basic: create missing target tables and add new columns (workers.sinks.schema_evolution).
    schema_evolution: SchemaEvolution = "none"
    # Required, verified TLS when tls.ca_file is set (SHARDCTL_SINK_SQL_TLS__CA_FILE...).
    tls: TLSSettings = TLSSettings()

    @model_validator(mode="after")
    def _secret(self) -> SqlSinkSettings:
        self.password = read_secret(self.password, self.password_file, "sink.sql.password")
        return self


def forget_command(
    scope: str,
    shard: int,
    topic: str,
    stream: str,
    database: str | None = None,
    handler: str = "sql",
) -> str:
    """The command that forgets one stream of a shard's topic (see `SqlSink.forget_stream`)."""
    sink = "" if handler == "sql" else f" --handler {handler}"
    where = f" --handler-option database={database}" if database else ""
    return (
        f"shardctl worker forget-stream{sink} --handler-option scope={scope}{where} "
        f"--shard {shard} --topic {topic} --stream '{stream}'"
    )


def quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def column_value(value: Any, data_type: str) -> Any:
    """A Maxwell JSON value as the target column takes it."""
    if value is None:
        return None
    if data_type in _BINARY and isinstance(value, str):
        return base64.b64decode(value, validate=True)
    if data_type == "json" or isinstance(value, dict):
        return json_text(value)
    if isinstance(value, bool) and data_type == "longtext":
        # true/false come from a JSON column (MariaDB's JSON is LONGTEXT), never as 1/0.
        return json_text(value)
    if data_type == "set" and isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, list):
        return json_text(value)
    return value


def json_text(value: Any) -> str:
    """JSON text of a decoded message value. Numbers with a fraction were decoded as
    Decimal (workers.events); they are written digit for digit, since a float would
    round 12345678901234567.89 to 1.2345678901234568e+16."""
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise TypeError(f"cannot store {value} as JSON")
        return str(value)
    if isinstance(value, dict):
        items = (f"{json.dumps(str(k))}: {json_text(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(json_text(v) for v in value) + "]"
    if value is None or isinstance(value, str | int | float | bool):
        return json.dumps(value)
    raise TypeError(f"cannot store {type(value).__name__} as JSON")


_Table = TargetTable

# The alias MySQL 8's upsert gives the row it tried to insert.
ROW_ALIAS = "_new"


def uses_row_alias(server_version: str) -> bool:
    """Whether a server's upsert takes the row alias (MySQL 8.0.19 and later) rather
    than VALUES() (MariaDB, older MySQL). `server_version` is what the server reports
    (`SELECT VERSION()`), e.g. '8.0.36' or '10.11.6-MariaDB-0+deb12u1'."""
    if "mariadb" in server_version.lower():
        return False
    found = re.match(r"(\d+)\.(\d+)\.(\d+)", server_version)
    if found is None:
        return False
    return tuple(int(n) for n in found.groups()) >= (8, 0, 19)


class MariaDBDialect(Dialect):
    """MariaDB and MySQL, through PyMySQL."""

    name = "sql"
    connection_errors = (pymysql.err.Error,)
    driver_errors = (pymysql.err.MySQLError, OSError)
    long_text = "MEDIUMTEXT"

    def __init__(self, row_alias: bool = False) -> None:
        self._streams_checked = False
        # Set from the server's version at each connect (see `uses_row_alias`).
        self.row_alias = row_alias
        self.column_types = MYSQL_TYPES if row_alias else MARIADB_TYPES

    def is_transient(self, error: BaseException) -> bool:
        return mysql_error_is_transient(error)

    def schema(self) -> tuple[str, ...]:
        return tuple(f"{statement} ENGINE=InnoDB" for statement in super().schema())

    def upgrade_schema(self, cur: Any) -> None:
        """Streams carry the source identity since shardctl_applied was first made with
        VARCHAR(100): widen an older table once."""
        if self._streams_checked:
            return
        cur.execute(
            "SELECT CHARACTER_MAXIMUM_LENGTH FROM information_schema.COLUMNS WHERE "
            "TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'shardctl_applied' "
            "AND COLUMN_NAME = 'stream'"
        )
        row = cur.fetchone()
        if row is not None and int(row[0]) < _STREAM_CHARS:
            cur.execute(
                f"ALTER TABLE shardctl_applied MODIFY stream VARCHAR({_STREAM_CHARS}) NOT NULL"
            )
        self._streams_checked = True

    def connect(self, settings: Any) -> pymysql.connections.Connection[Any]:
        s: SqlSinkSettings = settings
        # The source's connection settings own the TLS options (verified, required).
        kwargs = MySQLSettings.model_construct(
            host=s.host, port=s.port, user=s.user, password=s.password, tls=s.tls
        ).connect_kwargs()
        conn = pymysql.connect(**kwargs, database=s.database, autocommit=False, charset="utf8mb4")
        version: str = conn.get_server_info()  # type: ignore[no-untyped-call]
        self.row_alias = uses_row_alias(version)
        self.column_types = MYSQL_TYPES if self.row_alias else MARIADB_TYPES
        return conn

    def is_open(self, conn: Any) -> bool:
        return bool(conn.open)

    def ping(self, conn: Any) -> None:
        conn.ping(reconnect=False)

    def begin(self, conn: Any) -> None:
        conn.begin()

    def quote(self, name: str) -> str:
        return quote(name)

    def execute(self, cur: Any, statement: str, params: Sequence[Any]) -> None:
        """The statement with its values written in as PyMySQL writes them (the
        connection's own escaping, which follows the server's sql_mode), with two
        shortcuts for a batch's thousands of values: an int is its digits, and a string
        that repeats (the scope, topic and stream of every bookkeeping row) is escaped
        once."""
        connection = cur.connection
        escape = connection.escape
        # A str is quoted as connection.escape quotes it, without its two calls.
        no_backslash = connection.server_status & SERVER_STATUS_NO_BACKSLASH_ESCAPES
        escaped: dict[str, str] = {}
        literals: list[str] = []
        for value in params:
            kind = type(value)
            if kind is int:
                literals.append(str(value))
            elif kind is str:
                literal = escaped.get(value)
                if literal is None:
                    inner = value.replace("'", "''") if no_backslash else escape_string(value)
                    literal = escaped[value] = f"'{inner}'"
                literals.append(literal)
            else:
                literals.append(escape(value))
        cur.execute(statement % tuple(literals))

    def on_conflict(self, keys: Sequence[str]) -> str:
        return "ON DUPLICATE KEY UPDATE"

    def after_values(self) -> str:
        return f" AS {quote(ROW_ALIAS)}" if self.row_alias else ""

    def new_value(self, column: str) -> str:
        if self.row_alias:
            return f"{quote(ROW_ALIAS)}.{quote(column)}"
        return f"VALUES({quote(column)})"

    def old_value(self, table: str, column: str) -> str:
        return quote(column)

    def target_table(self, cur: Any, namespace: str, table: str) -> TargetTable:
        cur.execute(
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_KEY, NUMERIC_SCALE "
            "FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA=%s AND TABLE_NAME=%s ORDER BY ORDINAL_POSITION",
            (namespace, table),
        )
        rows = cur.fetchall()
        if not rows:
            raise MissingTable(
                f"sql sink: target table {namespace}.{table} does not exist (create it, "
                "or set schema_evolution = basic)"
            )
        types = {str(name): str(kind).lower() for name, kind, _k, _s in rows}
        primary = [str(name) for name, _t, k, _s in rows if k == "PRI"]
        scales = {
            str(name): int(scale)
            for name, kind, _k, scale in rows
            if str(kind).lower() == "decimal" and scale is not None
        }
        return TargetTable(self.qualified(namespace, table), types, primary, scales)

    def refusal(self, kind: str, value: Any) -> str | None:
        return mariadb_refusal(kind, value)

    def table_options(self) -> str:
        return " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"

    def add_column(self, conn: Any, name: str, column: str, kind: str) -> None:
        # Not ADD COLUMN IF NOT EXISTS: MySQL 8 has no such clause.
        try:
            with conn.cursor() as cur:
                cur.execute(f"ALTER TABLE {name} ADD COLUMN {quote(column)} {kind} NULL")
        except pymysql.err.MySQLError as exc:
            if not exc.args or exc.args[0] != _DUPLICATE_COLUMN:
                raise
        conn.commit()


class SqlSink:
    # What a subclass for another database changes (see workers.sinks.postgres).
    settings_class: type[BaseSettings] = SqlSinkSettings
    section = "sql"  # the settings' name: sink.<section>.<field>, SHARDCTL_SINK_<SECTION>_*

    def __init__(self, context: HandlerContext | None = None) -> None:
        context = context or HandlerContext()
        allowed = set(self.settings_class.model_fields) - {"password", "password_file"}
        overrides: dict[str, Any] = {k: v for k, v in context.options.items() if k in allowed}
        secret_options = {"password", "password_file"} & set(context.options)
        env = f"SHARDCTL_SINK_{self.section.upper()}_PASSWORD"
        if secret_options:
            raise ConfigError(
                f"sink.{self.section}.password: give it in {env} or {env}_FILE, never as an option"
            )
        try:
            made: Any = self.settings_class(**overrides)
        except ValidationError as exc:
            problems = "; ".join(
                f"sink.{self.section}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                for e in exc.errors()
            )
            raise ConfigError(problems) from None
        self.settings = made
        self.dialect = self.make_dialect()
        cluster = context.settings.cluster if context.settings is not None else "default"
        self.scope = self.settings.scope or cluster
        self._conns: dict[int, Any] = {}
        self._tokens: dict[int, int] = {}
        self._tables: dict[tuple[Any, Any], _Table] = {}  # by the event's own names
        self._lock = threading.Lock()
        # (shard, topic, stream) -> transactions remembered since the last prune
        self._unpruned: dict[tuple[int, str, str], int] = {}

    def make_dialect(self) -> Dialect:
        return MariaDBDialect()

    def dated_values(
        self, table: _Table, pk: Sequence[str], data: dict[str, Any], event: Event
    ) -> dict[str, Any]:
        """The row's values for `table.dates` columns the target can hold (see
        workers.sinks.postgres: zero dates)."""
        return data

    def target_namespace(self, event: Event) -> str:
        """Where the event's table is: the `database` setting, else the event's own."""
        return str(self.settings.database or event.database)

    # -- connections -------------------------------------------------------------

    def _connect(self) -> Any:
        return self.dialect.connect(self.settings)

    def _conn(self, shard: int) -> Any:
        conn = self._conns.get(shard)
        if conn is not None and self.dialect.is_open(conn):
            try:
                self.dialect.ping(conn)
                return conn
            except self.dialect.connection_errors as exc:
                log.warning(
                    "sql sink: shard %d: connection to %s:%s lost, reconnecting: %s",
                    shard,
                    self.settings.host,
                    self.settings.port,
                    exc,
                )
        conn = self._connect()
        self._conns[shard] = conn
        return conn

    # -- handler hooks -------------------------------------------------------------

    def on_assign(self, shard: int, token: int) -> None:
        """Create the bookkeeping tables if needed and raise the shard's fence to `token`."""
        conn = self._conn(shard)
        with conn.cursor() as cur:
            self.dialect.lock_schema(cur)
            for statement in self.dialect.schema():
                cur.execute(statement)
            self.dialect.upgrade_schema(cur)
            cur.execute(
                self.dialect.upsert(
                    "shardctl_fences",
                    ("scope", "shard", "token"),
                    ("scope", "shard"),
                    (),
                    greatest=("token",),
                ),
                (self.scope, shard, token),
            )
            cur.execute(
                "SELECT token FROM shardctl_fences WHERE scope=%s AND shard=%s", (self.scope, shard)
            )
            row = cur.fetchone()
        conn.commit()
        stored = int(row[0]) if row else token
        if stored > token:
            raise Fenced(
                f"sql sink {self.scope}: shard {shard} already fenced at token {stored} > {token}",
                shard,
                token,
            )
        self._tokens[shard] = token

    def resume_positions(self, shard: int) -> dict[str, int]:
        conn = self._conn(shard)
        with conn.cursor() as cur:
            cur.execute(
                "SELECT topic, position FROM shardctl_offsets WHERE scope=%s AND shard=%s",
                (self.scope, shard),
            )
            rows = cur.fetchall()
        conn.commit()
        return {str(topic): int(position) for topic, position in rows}

    def on_events(self, batch: Batch) -> None:
        try:
            conn = self._conn(batch.shard)
        except self.dialect.driver_errors as exc:
            self._raise_classified(batch, exc)
        if self.settings.schema_evolution == "basic":
            self._evolve(conn, batch)
        with self._committed(conn, batch), conn.cursor() as cur:
            self.dialect.begin(conn)
            self._check_fence(cur, batch)
            cur.execute(
                "SELECT topic, position FROM shardctl_offsets WHERE scope=%s AND shard=%s",
                (self.scope, batch.shard),
            )
            stored = {str(t): int(p) for t, p in cur.fetchall()}
            newest = self._newest_applied(cur, batch.shard)
            changed: set[tuple[str, str]] = set()
            # (topic, stream) -> {txn: fingerprint} applied by this batch
            added: dict[tuple[str, str], dict[str, str]] = {}
            known = _Remembered()  # what the batch read of earlier batches' transactions
            applied = 0
            changes = RowChanges(fold=self.settings.fold_changes)
            last_ids: dict[str, str] = {}
            # The loop below runs once per event: it reads the message directly
            # rather than through Event's properties, which cost a call each.
            for event in batch.events:
                message = event.message
                event_id = message.get("event_id")
                if type(event_id) is not str:
                    event_id = None
                else:
                    last_ids[event.topic] = event_id
                if event.position is not None and event.position < stored.get(event.topic, -1):
                    continue  # this record was applied by an earlier transaction
                # Only the row changes it applies are ordered (DDL carries no source).
                kind = message.get("type")
                place = None
                if event_id and type(kind) is str and kind in _ROW_TYPES:
                    source = message.get("source")
                    place = order_key(event_id, source if type(source) is str else None)
                if place is not None:
                    stream, key = place
                    if len(stream) > _STREAM_CHARS:
                        raise ShardHalted(
                            f"sql sink {self.scope}: {event.describe()}: stream {stream!r} "
                            f"is longer than {_STREAM_CHARS} characters; shorten the "
                            "reader's cdc.source"
                        )
                    seen = newest.get((event.topic, stream))
                    txns = added.setdefault((event.topic, stream), {})
                    if seen is not None and key <= seen:
                        # The same change published again after a reader restart,
                        # or a source that went backwards: never skip the latter.
                        self._check_replay(cur, batch.shard, event, stream, key, seen, txns, known)
                        continue
                    newest[(event.topic, stream)] = key
                    changed.add((event.topic, stream))
                    txns[_txn_text(key)] = _fingerprint(event)
                self._add(cur, event, changes)
                applied += 1
            changes.write(self.dialect, cur)
            for topic, stream in changed:
                self._remember_txns(cur, batch.shard, topic, stream, added[(topic, stream)])
                cur.execute(
                    self.dialect.upsert(
                        "shardctl_applied",
                        ("scope", "shard", "topic", "stream", "last_key"),
                        ("scope", "shard", "topic", "stream"),
                        ("last_key",),
                    ),
                    (
                        self.scope,
                        batch.shard,
                        topic,
                        stream,
                        ",".join(map(str, newest[(topic, stream)])),
                    ),
                )
            for topic, position in batch.next_positions.items():
                if position <= stored.get(topic, -1):
                    continue
                cur.execute(
                    self.dialect.upsert(
                        "shardctl_offsets",
                        ("scope", "shard", "topic", "position", "event_id", "token"),
                        ("scope", "shard", "topic"),
                        ("position", "event_id", "token"),
                    ),
                    (
                        self.scope,
                        batch.shard,
                        topic,
                        position,
                        last_ids.get(topic),
                        batch.token,
                    ),
                )
        log.debug(
            "%s sink: shard %d: %d of %d events applied in %d row writes",
            self.dialect.name,
            batch.shard,
            applied,
            len(batch.events),
            changes.writes(),
        )

    @contextlib.contextmanager
    def _committed(self, conn: Any, batch: Batch) -> Iterator[None]:
        """Commit what the block wrote. On any failure roll back (a connection that
        cannot is dropped, and the next batch reconnects), and raise a driver error
        classified as transient or not."""
        try:
            yield
            conn.commit()
        except BaseException as exc:
            try:
                conn.rollback()
            except self.dialect.driver_errors:
                self._conns.pop(batch.shard, None)
            if isinstance(exc, self.dialect.driver_errors):
                self._raise_classified(batch, exc)
            raise

    def _raise_classified(self, batch: Batch, error: BaseException) -> NoReturn:
        """Raise `error`, as a TransientError saying where if waiting will cure it."""
        if not self.dialect.is_transient(error):
            raise error
        raise TransientError(
            f"{self.dialect.name} sink {self.settings.host}:{self.settings.port}, "
            f"shard {batch.shard}: "
            f"{type(error).__name__}: {error}"
        ) from error

    def on_revoke(self, shard: int) -> None:
        self._tokens.pop(shard, None)
        conn = self._conns.pop(shard, None)
        if conn is not None and self.dialect.is_open(conn):
            conn.close()

    def on_close(self) -> None:
        for shard in list(self._conns):
            self.on_revoke(shard)

    # -- internals -------------------------------------------------------------------

    def _evolve(self, conn: Any, batch: Batch) -> None:
        """schema_evolution = basic: create the tables and add the columns the batch's
        row changes need. It runs before the batch's transaction, since MariaDB commits
        DDL at once; each change only adds, so one made for a batch that then fails
        (or for a zombie owner, which the fence then refuses) leaves nothing wrong."""
        with self._committed(conn, batch), conn.cursor() as cur:
            for event in batch.events:
                if event.type not in _WRITE_TYPES:
                    continue
                namespace = self.target_namespace(event)
                try:
                    table = self._table(cur, event)
                except MissingTable:
                    self._create_table(conn, namespace, event)
                    self._table(cur, event, reread=True)
                    continue
                data = event.data
                if all(c in table.types or data[c] is None for c in data):
                    continue
                # Another worker may have added them since the table was read.
                table = self._table(cur, event, reread=True)
                missing = [c for c in data if c not in table.types and data[c] is not None]
                if missing:
                    for column in missing:
                        kind = self._column_type(table.name, column, data[column], event)
                        self.dialect.add_column(conn, table.name, column, kind)
                        log.info(
                            "%s sink: %s: added column %s %s to %s (schema_evolution = basic)",
                            self.dialect.name,
                            event.describe(),
                            self.dialect.quote(column),
                            kind,
                            table.name,
                        )
                    self._table(cur, event, reread=True)

    def _create_table(self, conn: Any, namespace: str, event: Event) -> None:
        """Create the missing target table of `event` from its row's values."""
        name = self.dialect.qualified(namespace, event.table)
        key = key_columns(event.message, event.key)
        data = event.data
        if not key:
            raise LookupError(
                f"{self.dialect.name} sink: {event.describe()}: cannot create {name}: the "
                "event names no primary key (give the reader output_primary_key_columns, "
                "or use Kafka keys with pk. fields), or create the table"
            )
        absent = [c for c in key if data.get(c) is None]
        if absent:
            raise LookupError(
                f"{self.dialect.name} sink: {event.describe()}: cannot create {name}: "
                f"primary key column(s) {absent} absent from the event"
            )
        columns = [
            (column, self._column_type(name, column, value, event, key=column in key))
            for column, value in data.items()
            if value is not None
        ]
        self.dialect.create_table(conn, name, columns, key)
        log.info(
            "%s sink: %s: created table %s (%s), primary key (%s) (schema_evolution = basic)",
            self.dialect.name,
            event.describe(),
            name,
            ", ".join(f"{self.dialect.quote(c)} {kind}" for c, kind in columns),
            ", ".join(self.dialect.quote(c) for c in key),
        )

    def _column_type(
        self, table: str, column: str, value: Any, event: Event, key: bool = False
    ) -> str:
        """The SQL type a new column is made with for `value`; Unmappable, naming the
        table, column and event, if the target cannot hold the value exactly."""
        try:
            kind = value_kind(value, key)
            why = None if kind is None else self.dialect.refusal(kind, value)
        except Unmappable as exc:
            kind, why = None, str(exc)
        if kind is None or why is not None:
            raise Unmappable(
                f"{self.dialect.name} sink: {event.describe()}: {table} column {column!r}: "
                f"{why or 'null: nothing to make the column from'}; nothing of the event "
                "is written"
            )
        return self.dialect.column_types[kind]

    def _newest_applied(self, cur: Any, shard: int) -> dict[tuple[str, str], tuple[int, ...]]:
        """(topic, stream) -> the order key of the newest change applied for it."""
        cur.execute(
            "SELECT topic, stream, last_key FROM shardctl_applied WHERE scope=%s AND shard=%s",
            (self.scope, shard),
        )
        return {
            (str(topic), str(stream)): tuple(int(n) for n in str(key).split(","))
            for topic, stream, key in cur.fetchall()
        }

    def _check_replay(
        self,
        cur: Any,
        shard: int,
        event: Event,
        stream: str,
        key: tuple[int, ...],
        seen: tuple[int, ...],
        added: dict[str, str],
        known: _Remembered,
    ) -> None:
        """Return if `event` repeats an applied transaction; else raise ShardHalted."""
        txn = _txn_text(key)
        fingerprint = _fingerprint(event)
        remembered = added.get(txn)
        if remembered is None:
            remembered = self._remembered(cur, shard, event.topic, stream, txn, known)
        if remembered == fingerprint:
            return
        why = (
            "no transaction at that position was applied"
            if remembered is None
            else f"the transaction applied there differs (ts:xid {remembered}, now {fingerprint})"
        )
        raise ShardHalted(
            f"sql sink {self.scope}: shard {shard} topic {event.topic} stream {stream}: "
            f"the source position went backwards: stored {describe_key(seen)}, new "
            f"{describe_key(key)} ({event.describe()}); {why}. The source was reset "
            "(RESET MASTER, a restore, binlog renumbering), or the reader replayed more "
            f"than replay_window={self.settings.replay_window} transactions. Nothing from "
            "this event on is applied. Once the source is checked, forget the stream's "
            f"applied record and the shard goes on: "
            + forget_command(
                self.scope, shard, event.topic, stream, self.settings.database, self.section
            )
        )

    def _remembered(
        self, cur: Any, shard: int, topic: str, stream: str, txn: str, known: _Remembered
    ) -> str | None:
        """The fingerprint an earlier batch stored for transaction `txn` of the stream,
        or None. The stream's rows from `txn` on are read once per batch (a replay goes
        on in order, so its next transactions are then known too); a transaction not
        among them is looked up in the rows of releases that stored one per
        transaction."""
        stream_key = (topic, stream)
        start = known.read_from.get(stream_key)
        if start is None or txn < start:
            cur.execute(
                "SELECT fingerprints FROM shardctl_applied_runs WHERE scope=%s AND shard=%s "
                "AND topic=%s AND stream=%s AND last_txn >= %s",
                (self.scope, shard, topic, stream, txn),
            )
            for (text,) in cur.fetchall():
                for stored, fingerprint in json.loads(text).items():
                    known.fingerprints[(topic, stream, str(stored))] = str(fingerprint)
            known.read_from[stream_key] = txn
        where = (topic, stream, txn)
        if where not in known.fingerprints:
            cur.execute(
                "SELECT fingerprint FROM shardctl_applied_txns WHERE scope=%s AND "
                "shard=%s AND topic=%s AND stream=%s AND txn=%s",
                (self.scope, shard, *where),
            )
            row = cur.fetchone()
            known.fingerprints[where] = None if row is None else str(row[0])
        return known.fingerprints[where]

    def _remember_txns(
        self, cur: Any, shard: int, topic: str, stream: str, txns: dict[str, str]
    ) -> None:
        """Store the fingerprints of the batch's applied transactions of one stream, in
        one row; prune now and then."""
        if not txns:
            return
        self.dialect.execute(
            cur,
            self.dialect.upsert(
                "shardctl_applied_runs",
                (
                    "scope",
                    "shard",
                    "topic",
                    "stream",
                    "last_txn",
                    "first_txn",
                    "txns",
                    "fingerprints",
                ),
                ("scope", "shard", "topic", "stream", "last_txn", "first_txn"),
                ("txns", "fingerprints"),
            ),
            (
                self.scope,
                shard,
                topic,
                stream,
                max(txns),
                min(txns),
                len(txns),
                msgspec.json.encode(txns).decode(),
            ),
        )
        counter = (shard, topic, stream)
        count = self._unpruned.get(counter, 0) + len(txns)
        if count < self.settings.prune_every:
            self._unpruned[counter] = count
            return
        self._unpruned[counter] = 0
        self._prune_txns(cur, shard, topic, stream)

    def _prune_txns(self, cur: Any, shard: int, topic: str, stream: str) -> None:
        """Delete the stream's rows older than its newest `replay_window` transactions
        (a row that holds some of those stays whole)."""
        where = "scope=%s AND shard=%s AND topic=%s AND stream=%s"
        args = (self.scope, shard, topic, stream)
        window = self.settings.replay_window
        cur.execute(
            f"SELECT last_txn, txns FROM shardctl_applied_runs WHERE {where} "
            "ORDER BY last_txn DESC LIMIT %s",
            (*args, window),
        )
        total = 0
        for last_txn, count in cur.fetchall():
            total += int(count)
            if total >= window:
                cur.execute(
                    f"DELETE FROM shardctl_applied_runs WHERE {where} AND last_txn < %s",
                    (*args, last_txn),
                )
                cur.execute(
                    f"DELETE FROM shardctl_applied_txns WHERE {where} AND txn < %s",
                    (*args, last_txn),
                )
                return

    def forget_stream(self, shard: int, topic: str, stream: str) -> int:
        """Delete what the sink remembers of one stream of a shard's topic (after the
        source went backwards). Returns the rows deleted."""
        conn = self._conn(shard)
        deleted = 0
        try:
            with conn.cursor() as cur:
                self.dialect.begin(conn)
                for table in (
                    "shardctl_applied",
                    "shardctl_applied_runs",
                    "shardctl_applied_txns",
                ):
                    cur.execute(
                        f"DELETE FROM {table} WHERE scope=%s AND shard=%s AND topic=%s "
                        "AND stream=%s",
                        (self.scope, shard, topic, stream),
                    )
                    deleted += max(cur.rowcount, 0)
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        return deleted

    def _check_fence(self, cur: Any, batch: Batch) -> None:
        cur.execute(
            "SELECT token FROM shardctl_fences WHERE scope=%s AND shard=%s FOR UPDATE",
            (self.scope, batch.shard),
        )
        row = cur.fetchone()
        stored = int(row[0]) if row else None
        if stored is not None and stored > batch.token:
            raise Fenced(
                f"sql sink {self.scope}: shard {batch.shard} batch from "
                f"{batch.events[0].describe()} refused: token {batch.token} is older than "
                f"{stored}",
                batch.shard,
                batch.token,
            )
        if stored != batch.token:
            cur.execute(
                self.dialect.upsert(
                    "shardctl_fences", ("scope", "shard", "token"), ("scope", "shard"), ("token",)
                ),
                (self.scope, batch.shard, batch.token),
            )

    def _table(self, cur: Any, event: Event, reread: bool = False) -> _Table:
        """The target table of `event`, read from the target once and then kept. It is
        kept by the event's own database and table names, which name one target (the
        target namespace depends on nothing else), so the per-event path reads the
        message and calls nothing."""
        message = event.message
        key = (message.get("database"), message.get("table"))
        # One dict read is atomic: the lock guards the writes.
        found = None if reread else self._tables.get(key)
        if found is not None:
            return found
        found = self.dialect.target_table(cur, self.target_namespace(event), event.table)
        with self._lock:
            self._tables[key] = found
        return found

    def _add(self, cur: Any, event: Event, changes: RowChanges) -> None:
        """Add the row writes of `event` to the batch's `changes`."""
        message = event.message
        kind = message.get("type")
        if type(kind) is not str or kind not in _WRITE_TYPES:
            return
        table = self._table(cur, event)
        pk = _primary_key(message, event, table)
        data = message.get("data")
        if type(data) is not dict:
            data = {}
        if kind == "delete":
            changes.delete(table.name, pk, self._key_values(table, pk, data, event))
            return
        old = message.get("old")
        if type(old) is dict and old and any(col in old for col in pk):
            moved_from = {**data, **{c: old[c] for c in pk if c in old}}
            changes.delete(table.name, pk, self._key_values(table, pk, moved_from, event))
        types = table.types
        if not types.keys() >= data.keys():
            basic = self.settings.schema_evolution == "basic"
            if basic and all(c in types or data[c] is None for c in data):
                # A column made once a value comes: until then a row reads NULL there.
                data = {c: v for c, v in data.items() if c in types}
            else:
                # The target may have gained the columns since it was read (an ALTER
                # that followed the source's): read it again once before refusing.
                table = self._table(cur, event, reread=True)
                types = table.types
                unknown = [c for c in data if c not in types]
                if unknown and basic and all(data[c] is None for c in unknown):
                    data = {c: v for c, v in data.items() if c in types}
                elif unknown:
                    raise LookupError(
                        f"{self.dialect.name} sink: {event.describe()}: {table.name} has no "
                        f"column(s) {unknown} (add them to the target, or set "
                        "schema_evolution = basic)"
                    )
        for column in pk:
            if column not in data:
                self._key_values(table, pk, data, event)  # raises, naming the missing columns
        if table.scales:
            _check_scales(table, data, event, self.dialect.name)
        if table.dates:
            data = self.dated_values(table, pk, data, event)
        plain = table.plain
        # A scalar bound for a plain column is written as it is; the rest is converted.
        image = {
            c: v if v is None or (type(v) in _SCALARS and c in plain) else column_value(v, types[c])
            for c, v in data.items()
        }
        changes.upsert(table.name, pk, image, owned=True)

    def _key_values(
        self, table: _Table, pk: Sequence[str], row: dict[str, Any], event: Event
    ) -> list[Any]:
        missing = [c for c in pk if c not in row]
        if missing:
            raise LookupError(
                f"{self.dialect.name} sink: {event.describe()}: primary key column(s) "
                f"{missing} absent from the event"
            )
        return [column_value(row[c], table.types.get(c, "")) for c in pk]


class _Remembered:
    """What one batch's transaction read of the transactions earlier batches applied."""

    __slots__ = ("fingerprints", "read_from")

    def __init__(self) -> None:
        # (topic, stream, txn) -> its fingerprint; None: none is stored
        self.fingerprints: dict[tuple[str, str, str], str | None] = {}
        # (topic, stream) -> the txn from which on every stored one is in `fingerprints`
        self.read_from: dict[tuple[str, str], str] = {}


def _primary_key(message: dict[str, Any], event: Event, table: _Table) -> list[str]:
    declared = message.get("primary_key_columns")
    if type(declared) is list and declared:
        for column in declared:  # a loop: cheaper than all() for the usual one or two
            if type(column) is not str:
                return [str(c) for c in declared]
        return declared
    if not table.primary_key:
        raise LookupError(
            f"sql sink: {event.describe()}: {table.name} has no primary key, "
            "and the event names none"
        )
    return table.primary_key


def _check_scales(table: _Table, data: dict[str, Any], event: Event, sink: str) -> None:
    """Refuse a number with more digits after the point than its DECIMAL/NUMERIC
    column keeps: both databases would round it without an error."""
    for column, scale in table.scales.items():
        value = data.get(column)
        if isinstance(value, Decimal) and value.is_finite():
            places = fraction_digits(value)
            if places > scale:
                raise Unmappable(
                    f"{sink} sink: {event.describe()}: {table.name} column {column!r}: "
                    f"{value} has {places} digits after the point, the column keeps "
                    f"{scale}; it would be rounded, so nothing of the event is written"
                )
