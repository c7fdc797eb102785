"""The SQL sink: materialize rows into MariaDB/MySQL, exactly once per event.

`--handler workers.sinks.sql:SqlSink`. For every event of a batch, in order:

    insert, update, bootstrap-insert  ->  INSERT ... ON DUPLICATE KEY UPDATE (upsert)
                                          (an update that changed the primary key first
                                          deletes the row under the old key)
    delete                            ->  DELETE by primary key
    anything else (DDL, bootstrap-start/-complete)  ->  skipped

A batch is ONE database transaction, which also holds the shard's fence and offsets:

    shardctl_fences  (scope, shard) -> token              the newest owner token seen
    shardctl_offsets (scope, shard, topic) -> position, event_id, token   (one row per
                                                         source topic of the shard)
    shardctl_applied (scope, shard, topic, stream) -> the newest applied change, as
                     its place in the source's commit order (shardctl.event_ids)

    BEGIN
      SELECT token FROM shardctl_fences ... FOR UPDATE     -- serializes owners of a shard
      stored token > batch token  ->  ROLLBACK, raise Fenced (a zombie is refused)
      skip events below the stored position of their topic   (already applied)
      skip events not after the newest applied change of their topic and stream
           (the CDC reader published them again after a restart: same event ids)
      apply the rest; write the new positions and newest changes
    COMMIT

So data and offset commit together, a stale owner cannot write, a batch applied
twice has no second effect, and neither has a change the reader published twice:
the sink's effect is exactly-once per source change. `positions(shard)`
returns the stored positions, and the consumer resumes from them. `on_assign`
raises the fence to the new token at once, so a zombie is refused even before the
new owner's first batch.

Target: database `database` (default: the event's own database), table = the event's
table; the tables must exist. The primary key comes from the event's
`primary_key_columns` or else from the target table. Maxwell values are converted
back by the target column's type: base64 -> bytes for binary columns, JSON values ->
JSON text, SET lists -> comma lists.

Settings (environment `SHARDCTL_SINK_SQL_*`, or handler options, except the password
which is environment/file only): host, port, user, password / password_file,
database, scope (default: the cluster name).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, NoReturn

import pymysql
from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shardctl.config import ConfigError
from shardctl.event_ids import order_key
from workers.events import Batch, Event
from workers.handlers import Fenced, HandlerContext, TransientError

log = logging.getLogger(__name__)

_BINARY = {"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"}
_UPSERT_TYPES = {"insert", "update", "bootstrap-insert"}

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS shardctl_fences (
        scope VARCHAR(190) NOT NULL, shard INT NOT NULL, token BIGINT NOT NULL,
        PRIMARY KEY (scope, shard)) ENGINE=InnoDB""",
    """CREATE TABLE IF NOT EXISTS shardctl_offsets (
        scope VARCHAR(190) NOT NULL, shard INT NOT NULL, topic VARCHAR(249) NOT NULL,
        position BIGINT NOT NULL, event_id VARCHAR(255) NULL, token BIGINT NOT NULL,
        PRIMARY KEY (scope, shard, topic)) ENGINE=InnoDB""",
    # The newest source position applied per topic and source stream (GTID domain or
    # binlog): a change the reader publishes again after a restart is skipped by it.
    """CREATE TABLE IF NOT EXISTS shardctl_applied (
        scope VARCHAR(190) NOT NULL, shard INT NOT NULL, topic VARCHAR(249) NOT NULL,
        stream VARCHAR(100) NOT NULL, last_key VARCHAR(100) NOT NULL,
        PRIMARY KEY (scope, shard, topic, stream)) ENGINE=InnoDB""",
)


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
    model_config = SettingsConfigDict(env_prefix="SHARDCTL_SINK_SQL_", extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=3306, gt=0, lt=65536)
    user: str = "root"
    password: SecretStr | None = None
    password_file: Path | None = None
    database: str | None = None  # where the bookkeeping tables live, and the target
    scope: str | None = None

    @model_validator(mode="after")
    def _secret(self) -> SqlSinkSettings:
        if self.password is None and self.password_file is not None:
            try:
                self.password = SecretStr(self.password_file.read_text().rstrip("\n"))
            except OSError as exc:
                raise ValueError(
                    f"sink.sql.password_file: cannot read {self.password_file}: {exc.strerror}"
                ) from exc
        return self


def quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def column_value(value: Any, data_type: str) -> Any:
    """A Maxwell JSON value as the target column takes it."""
    if value is None:
        return None
    if data_type in _BINARY and isinstance(value, str):
        return base64.b64decode(value, validate=True)
    if data_type == "json" or isinstance(value, dict):
        return json.dumps(value, default=_json_default)
    if data_type == "set" and isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, list):
        return json.dumps(value, default=_json_default)
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value) if value != value.to_integral_value() else int(value)
    raise TypeError(f"cannot store {type(value).__name__} as JSON")


class _Table:
    def __init__(self, name: str, types: dict[str, str], primary_key: list[str]) -> None:
        self.name = name
        self.types = types
        self.primary_key = primary_key


class SqlSink:
    def __init__(self, context: HandlerContext | None = None) -> None:
        context = context or HandlerContext()
        allowed = set(SqlSinkSettings.model_fields) - {"password", "password_file"}
        overrides: dict[str, Any] = {k: v for k, v in context.options.items() if k in allowed}
        secret_options = {"password", "password_file"} & set(context.options)
        if secret_options:
            raise ConfigError(
                "sink.sql.password: give it in SHARDCTL_SINK_SQL_PASSWORD or "
                "SHARDCTL_SINK_SQL_PASSWORD_FILE, never as an option"
            )
        try:
            self.settings = SqlSinkSettings(**overrides)
        except ValidationError as exc:
            problems = "; ".join(
                f"sink.sql.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise ConfigError(problems) from None
        cluster = context.settings.cluster if context.settings is not None else "default"
        self.scope = self.settings.scope or cluster
        self._conns: dict[int, pymysql.connections.Connection[Any]] = {}
        self._tokens: dict[int, int] = {}
        self._tables: dict[tuple[str, str], _Table] = {}
        self._lock = threading.Lock()

    # -- connections -------------------------------------------------------------

    def _connect(self) -> pymysql.connections.Connection[Any]:
        s = self.settings
        return pymysql.connect(
            host=s.host,
            port=s.port,
            user=s.user,
            password=s.password.get_secret_value() if s.password else "",
            database=s.database,
            autocommit=False,
            charset="utf8mb4",
        )

    def _conn(self, shard: int) -> pymysql.connections.Connection[Any]:
        conn = self._conns.get(shard)
        if conn is not None and conn.open:
            try:
                conn.ping(reconnect=False)
                return conn
            except pymysql.err.Error as exc:
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
            for statement in _SCHEMA:
                cur.execute(statement)
            cur.execute(
                "INSERT INTO shardctl_fences (scope, shard, token) VALUES (%s, %s, %s) "
                "ON DUPLICATE KEY UPDATE token = GREATEST(token, VALUES(token))",
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
        except (pymysql.err.MySQLError, OSError) as exc:
            self._raise_classified(batch, exc)
        try:
            with conn.cursor() as cur:
                conn.begin()
                self._check_fence(cur, batch)
                cur.execute(
                    "SELECT topic, position FROM shardctl_offsets WHERE scope=%s AND shard=%s",
                    (self.scope, batch.shard),
                )
                stored = {str(t): int(p) for t, p in cur.fetchall()}
                newest = self._newest_applied(cur, batch.shard)
                changed: set[tuple[str, str]] = set()
                applied = 0
                last_ids: dict[str, str] = {}
                for event in batch.events:
                    if event.event_id is not None:
                        last_ids[event.topic] = event.event_id
                    if event.position is not None and event.position < stored.get(event.topic, -1):
                        continue  # this record was applied by an earlier transaction
                    place = order_key(event.event_id) if event.event_id else None
                    if place is not None:
                        stream, key = place
                        seen = newest.get((event.topic, stream))
                        if seen is not None and key <= seen:
                            continue  # the same change, published again after a restart
                        newest[(event.topic, stream)] = key
                        changed.add((event.topic, stream))
                    self._apply(cur, event)
                    applied += 1
                for topic, stream in changed:
                    cur.execute(
                        "INSERT INTO shardctl_applied (scope, shard, topic, stream, last_key) "
                        "VALUES (%s, %s, %s, %s, %s) "
                        "ON DUPLICATE KEY UPDATE last_key = VALUES(last_key)",
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
                        "INSERT INTO shardctl_offsets (scope, shard, topic, position, event_id,"
                        " token) VALUES (%s, %s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE "
                        "position=VALUES(position), event_id=VALUES(event_id), "
                        "token=VALUES(token)",
                        (
                            self.scope,
                            batch.shard,
                            topic,
                            position,
                            last_ids.get(topic),
                            batch.token,
                        ),
                    )
            conn.commit()
        except BaseException as exc:
            try:
                conn.rollback()
            except (pymysql.err.MySQLError, OSError):
                self._conns.pop(batch.shard, None)  # broken: the next batch reconnects
            if isinstance(exc, (pymysql.err.MySQLError, OSError)):
                self._raise_classified(batch, exc)
            raise
        log.debug(
            "sql sink: shard %d: %d of %d events applied", batch.shard, applied, len(batch.events)
        )

    def _raise_classified(self, batch: Batch, error: BaseException) -> NoReturn:
        """Raise `error`, as a TransientError saying where if waiting will cure it."""
        if not mysql_error_is_transient(error):
            raise error
        raise TransientError(
            f"sql sink {self.settings.host}:{self.settings.port}, shard {batch.shard}: "
            f"{type(error).__name__}: {error}"
        ) from error

    def on_revoke(self, shard: int) -> None:
        self._tokens.pop(shard, None)
        conn = self._conns.pop(shard, None)
        if conn is not None and conn.open:
            conn.close()

    def on_close(self) -> None:
        for shard in list(self._conns):
            self.on_revoke(shard)

    # -- internals -------------------------------------------------------------------

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
                "INSERT INTO shardctl_fences (scope, shard, token) VALUES (%s, %s, %s) "
                "ON DUPLICATE KEY UPDATE token = VALUES(token)",
                (self.scope, batch.shard, batch.token),
            )

    def _table(self, cur: Any, database: str, table: str) -> _Table:
        key = (database, table)
        with self._lock:
            found = self._tables.get(key)
        if found is not None:
            return found
        cur.execute(
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_KEY FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA=%s AND TABLE_NAME=%s ORDER BY ORDINAL_POSITION",
            (database, table),
        )
        rows = cur.fetchall()
        if not rows:
            raise LookupError(f"sql sink: target table {database}.{table} does not exist")
        types = {str(name): str(kind).lower() for name, kind, _k in rows}
        primary = [str(name) for name, _t, k in rows if k == "PRI"]
        found = _Table(f"{quote(database)}.{quote(table)}", types, primary)
        with self._lock:
            self._tables[key] = found
        return found

    def _apply(self, cur: Any, event: Event) -> None:
        if event.type not in _UPSERT_TYPES and event.type != "delete":
            return
        database = self.settings.database or event.database
        table = self._table(cur, database, event.table)
        pk = _primary_key(event, table)
        data = event.data
        if event.type == "delete":
            self._delete(cur, table, pk, data, event)
            return
        old = event.old or {}
        if any(col in old for col in pk):
            self._delete(cur, table, pk, {**data, **{c: old[c] for c in pk if c in old}}, event)
        unknown = [c for c in data if c not in table.types]
        if unknown:
            raise LookupError(
                f"sql sink: {event.describe()}: {table.name} has no column(s) {unknown}"
            )
        cols = list(data)
        values = [column_value(data[c], table.types[c]) for c in cols]
        updates = [c for c in cols if c not in pk] or cols[:1]
        cur.execute(
            f"INSERT INTO {table.name} ({', '.join(quote(c) for c in cols)}) "
            f"VALUES ({', '.join(['%s'] * len(cols))}) ON DUPLICATE KEY UPDATE "
            + ", ".join(f"{quote(c)}=VALUES({quote(c)})" for c in updates),
            values,
        )

    def _delete(
        self, cur: Any, table: _Table, pk: Sequence[str], row: dict[str, Any], event: Event
    ) -> None:
        missing = [c for c in pk if c not in row]
        if missing:
            raise LookupError(
                f"sql sink: {event.describe()}: primary key column(s) {missing} "
                f"absent from the event"
            )
        cur.execute(
            f"DELETE FROM {table.name} WHERE " + " AND ".join(f"{quote(c)}=%s" for c in pk),
            [column_value(row[c], table.types.get(c, "")) for c in pk],
        )


def _primary_key(event: Event, table: _Table) -> list[str]:
    declared = event.message.get("primary_key_columns")
    if isinstance(declared, list) and declared:
        return [str(c) for c in declared]
    if not table.primary_key:
        raise LookupError(
            f"sql sink: {event.describe()}: {table.name} has no primary key, "
            "and the event names none"
        )
    return table.primary_key
