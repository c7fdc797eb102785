"""The PostgreSQL sink: materialize rows into PostgreSQL, exactly once per event.

`--handler postgres` (or `workers.sinks.postgres:PostgresSink`). The same engine as
the MariaDB sink (`workers.sinks.sql`), spoken in PostgreSQL: a batch is one
transaction that takes the shard's fence row lock (`SELECT ... FOR UPDATE`), refuses
a stale token, skips what was applied (offsets, and the applied-change record per
source stream), writes the data with `INSERT ... ON CONFLICT (primary key) DO UPDATE`
and `DELETE`, and stores the offsets and the newest applied changes, then commits.
The writes are folded per primary key, as in the MariaDB sink (`fold_changes =
false` keeps every change a write of its own). A group of at least BULK_ROWS rows
(the upserts of one table and column list, or its deletes) is written in bulk: COPY
into a temporary table (ON COMMIT DROP) made with the target columns' types, then one
`INSERT ... SELECT ... ON CONFLICT (primary key) DO UPDATE` or `DELETE ... USING`;
smaller groups go as multi-row statements (many VALUES rows in one INSERT ... ON
CONFLICT, one DELETE ... IN (...) per table). The batch's applied transactions are
one row per source stream (shardctl_applied_runs). All of it stays inside the batch's
one transaction.

Target: schema `target_schema` (default: the event's own database name, as a schema),
table = the event's table; the tables must exist, with a primary key (or the event
names its `primary_key_columns`), unless `schema_evolution = basic` creates them and
adds new columns (as in the MariaDB sink; the types in
workers.sinks.schema_evolution). The bookkeeping tables (shardctl_fences,
shardctl_offsets, shardctl_applied, shardctl_applied_runs, shardctl_applied_txns) are
made in the first schema of the user's search_path (`public` by default). Maxwell
values are converted by the target column's type: base64 -> bytes for bytea, JSON
values -> JSON text for json/jsonb.

Settings (environment `SHARDCTL_SINK_POSTGRES_*`, or handler options, except the
password which is environment/file only): host, port, user, password /
password_file, database (the database connected to), target_schema, scope (default:
the cluster name), replay_window, fold_changes, schema_evolution, and TLS:
`SHARDCTL_SINK_POSTGRES_TLS__CA_FILE` (then TLS is required and the server's
certificate and host name are verified: sslmode verify-full), `..._TLS__CERT_FILE`
and `..._TLS__KEY_FILE` (a client certificate).
"""

from __future__ import annotations

import functools
import itertools
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import psycopg
from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shardctl.core.config import TLSSettings, read_secret
from workers.events import Event
from workers.sinks.schema_evolution import (
    POSTGRES_TYPES,
    SchemaEvolution,
    Unmappable,
    postgres_refusal,
)
from workers.sinks.sql import SqlSink
from workers.sinks.sql_common import Dialect, MissingTable, TargetTable

log = logging.getLogger(__name__)

# PostgreSQL types that hold a date, none of them a zero date or a zero month or day.
_DATE_TYPES = frozenset({"date", "timestamp without time zone", "timestamp with time zone"})

# A MariaDB/MySQL date with a zero part, as the reader writes it ('0000-00-00',
# '2024-00-15 10:00:00', ...): year 0, month 0 or day 0.
_ZERO_DATE = re.compile(r"(?:0000-\d\d-\d\d|\d{4}-00-\d\d|\d{4}-\d\d-00)(?:$|[ T])")

ZeroDates = Literal["refuse", "null"]

# PostgreSQL type names -> the names `workers.sinks.sql.column_value` converts by.
_COLUMN_KINDS = {"bytea": "varbinary", "json": "json", "jsonb": "json"}


class PostgresSinkSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SHARDCTL_SINK_POSTGRES_", env_nested_delimiter="__", extra="forbid"
    )

    host: str = "127.0.0.1"
    port: int = Field(default=5432, gt=0, lt=65536)
    user: str = "postgres"
    password: SecretStr | None = None
    password_file: Path | None = None
    database: str = "postgres"  # the database connected to
    target_schema: str | None = None
    scope: str | None = None
    replay_window: int = Field(default=10_000, ge=1)
    # Prune a stream's remembered transactions to replay_window once this many were added.
    prune_every: int = Field(default=1000, ge=1)
    # Fold a batch's changes per primary key (false: each change is a write of its own).
    fold_changes: bool = True
    # basic: create missing target tables and add new columns (workers.sinks.schema_evolution).
    schema_evolution: SchemaEvolution = "none"
    # A zero date for a date/timestamp column: refuse the event (dead-lettered with
    # the reason) or write NULL.
    zero_dates: ZeroDates = "refuse"
    tls: TLSSettings = TLSSettings()

    @model_validator(mode="after")
    def _secret(self) -> PostgresSinkSettings:
        self.password = read_secret(self.password, self.password_file, "sink.postgres.password")
        return self


def connect_kwargs(settings: PostgresSinkSettings) -> dict[str, Any]:
    """Keyword arguments for psycopg.connect; never log the result."""
    kwargs: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "user": settings.user,
        "password": settings.password.get_secret_value() if settings.password else "",
        "dbname": settings.database,
    }
    tls = settings.tls
    if tls.enabled:
        # Required TLS, verifying the certificate chain and the host name.
        kwargs["sslmode"] = "verify-full"
        kwargs["sslrootcert"] = str(tls.ca_file)
        if tls.cert_file is not None and tls.key_file is not None:
            kwargs["sslcert"] = str(tls.cert_file)
            kwargs["sslkey"] = str(tls.key_file)
    return kwargs


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@functools.lru_cache(maxsize=256)
def numbered(statement: str) -> str:
    """`statement` with its `%s` placeholders as `$1`, `$2`, ... (a batch repeats a
    few statement shapes: they are converted once)."""
    parts = statement.split("%s")
    out = [parts[0]]
    for n, part in enumerate(parts[1:], start=1):
        out.append(f"${n}")
        out.append(part)
    return "".join(out)


# From this many rows a group of writes is copied into a temporary table and merged
# with one statement; fewer go as multi-row statements (a COPY and a temporary table
# cost a few round trips of their own).
BULK_ROWS = 64

# The advisory lock key under which workers create the bookkeeping tables (any fixed
# bigint; "shardctl" in ASCII).
SCHEMA_LOCK_KEY = 0x736861726463746C

# The bulk path's temporary tables: distinct names within a transaction, dropped at
# its end (ON COMMIT DROP; a rollback drops them as well).
_bulk_tables = itertools.count()


# SQLSTATEs of a passing moment: waiting and retrying cures them.
TRANSIENT_SQLSTATES = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "53300",  # too_many_connections
        "55P03",  # lock_not_available
        "57P01",  # admin_shutdown
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now
    }
)


def postgres_error_is_transient(error: BaseException) -> bool:
    """True for a lost or refused connection (SQLSTATE class 08, or no SQLSTATE at all:
    the server never answered), a server shutting down, a deadlock or a lock wait;
    False for an error of the data (the event is dead-lettered)."""
    if isinstance(error, (psycopg.InterfaceError, OSError)):
        return True
    if isinstance(error, psycopg.Error):
        state = error.sqlstate
        if state is None:
            return isinstance(error, psycopg.OperationalError)
        return state.startswith("08") or state in TRANSIENT_SQLSTATES
    return False


class PostgresDialect(Dialect):
    """PostgreSQL, through psycopg 3 (a transaction begins with the first statement)."""

    name = "postgres"
    connection_errors = (psycopg.Error,)
    driver_errors = (psycopg.Error, OSError)
    column_types = POSTGRES_TYPES
    bulk_rows: int | None = BULK_ROWS

    def is_transient(self, error: BaseException) -> bool:
        return postgres_error_is_transient(error)

    def connect(self, settings: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(**connect_kwargs(settings), autocommit=False)

    def is_open(self, conn: Any) -> bool:
        return not (conn.closed or conn.broken)

    def lock_schema(self, cur: Any) -> None:
        """CREATE TABLE IF NOT EXISTS does not cover a concurrent CREATE in PostgreSQL:
        of the first workers of a new database, all but one failed with a unique
        violation on the catalog (pg_type). A transaction-scoped advisory lock makes
        them take turns."""
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))

    def ping(self, conn: Any) -> None:
        conn.execute("SELECT 1")
        conn.rollback()

    def begin(self, conn: Any) -> None:
        """psycopg opens the transaction at the first statement."""

    def quote(self, name: str) -> str:
        return quote(name)

    def execute(self, cur: Any, statement: str, params: Sequence[Any]) -> None:
        """With PostgreSQL's own `$n` placeholders and no client-side parsing: psycopg
        would tokenize a statement of thousands of `%s` at every call (it caches only
        short ones), which costs more than the server's work."""
        psycopg.RawCursor(cur.connection).execute(numbered(statement), params)

    def _copy_in(
        self, cur: Any, table: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
    ) -> str:
        """COPY `rows` into a new temporary table with the types of `columns` of `table`
        (and none of its constraints); returns its name. Values go in COPY's text form,
        which the server parses by the column's type, as it does a statement's text
        parameter: DECIMAL digits, JSON, bytea and dates arrive exactly."""
        temp = quote(f"_shardctl_bulk_{next(_bulk_tables)}")
        names = ", ".join(quote(c) for c in columns)
        cur.execute(
            f"CREATE TEMPORARY TABLE {temp} ON COMMIT DROP AS "
            f"SELECT {names} FROM {table} WITH NO DATA"
        )
        with cur.copy(f"COPY {temp} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return temp

    def bulk_upsert(
        self,
        cur: Any,
        table: str,
        columns: Sequence[str],
        keys: Sequence[str],
        updates: Sequence[str],
        rows: Sequence[tuple[Any, ...]],
    ) -> None:
        """COPY into a temporary table, then one INSERT ... SELECT ... ON CONFLICT."""
        temp = self._copy_in(cur, table, columns, rows)
        names = ", ".join(quote(c) for c in columns)
        assignments = ", ".join(f"{quote(c)} = {self.new_value(c)}" for c in updates)
        cur.execute(
            f"INSERT INTO {table} ({names}) SELECT {names} FROM {temp} "
            f"{self.on_conflict(keys)} {assignments}"
        )

    def bulk_delete(
        self, cur: Any, table: str, keys: Sequence[str], rows: Sequence[tuple[Any, ...]]
    ) -> None:
        """COPY the keys into a temporary table, then one DELETE ... USING it."""
        temp = self._copy_in(cur, table, keys, rows)
        match = " AND ".join(f"_t.{quote(k)} = _d.{quote(k)}" for k in keys)
        cur.execute(f"DELETE FROM {table} AS _t USING {temp} AS _d WHERE {match}")

    def on_conflict(self, keys: Sequence[str]) -> str:
        return f"ON CONFLICT ({', '.join(quote(k) for k in keys)}) DO UPDATE SET"

    def new_value(self, column: str) -> str:
        return f"EXCLUDED.{quote(column)}"

    def old_value(self, table: str, column: str) -> str:
        return f"{table}.{quote(column)}"

    def target_table(self, cur: Any, namespace: str, table: str) -> TargetTable:
        cur.execute(
            "SELECT column_name, data_type, numeric_scale FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
            (namespace, table),
        )
        rows = cur.fetchall()
        if not rows:
            raise MissingTable(
                f"postgres sink: target table {namespace}.{table} does not exist (create it, "
                "or set schema_evolution = basic)"
            )
        types = {str(name): _COLUMN_KINDS.get(str(kind), str(kind)) for name, kind, _s in rows}
        # An unconstrained NUMERIC has no scale, and rounds nothing.
        scales = {
            str(name): int(scale)
            for name, kind, scale in rows
            if str(kind) == "numeric" and scale is not None
        }
        cur.execute(
            "SELECT k.column_name FROM information_schema.table_constraints t "
            "JOIN information_schema.key_column_usage k ON k.constraint_schema = "
            "t.constraint_schema AND k.constraint_name = t.constraint_name "
            "WHERE t.table_schema = %s AND t.table_name = %s "
            "AND t.constraint_type = 'PRIMARY KEY' ORDER BY k.ordinal_position",
            (namespace, table),
        )
        primary = [str(name) for (name,) in cur.fetchall()]
        dates = frozenset(str(name) for name, kind, _s in rows if str(kind) in _DATE_TYPES)
        return TargetTable(self.qualified(namespace, table), types, primary, scales, dates)

    def refusal(self, kind: str, value: Any) -> str | None:
        return postgres_refusal(kind, value)

    def create_table(
        self, conn: Any, name: str, columns: Sequence[tuple[str, str]], key: Sequence[str]
    ) -> None:
        try:
            super().create_table(conn, name, columns, key)
        except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable):
            # Another worker created it at the same moment (IF NOT EXISTS does not
            # cover a concurrent CREATE in PostgreSQL).
            conn.rollback()

    def add_column(self, conn: Any, name: str, column: str, kind: str) -> None:
        with conn.cursor() as cur:
            cur.execute(f"ALTER TABLE {name} ADD COLUMN IF NOT EXISTS {quote(column)} {kind} NULL")
        conn.commit()


class PostgresSink(SqlSink):
    settings_class = PostgresSinkSettings
    section = "postgres"

    def make_dialect(self) -> Dialect:
        return PostgresDialect()

    def dated_values(
        self, table: TargetTable, pk: Sequence[str], data: dict[str, Any], event: Event
    ) -> dict[str, Any]:
        """A zero date (year, month or day 0, which MariaDB and MySQL keep and
        PostgreSQL has no value for) bound for a date/timestamp column: refused
        (Unmappable, the event is dead-lettered with the reason) with zero_dates =
        refuse, NULL with zero_dates = null. A primary key column is always refused."""
        zero = [
            c
            for c in table.dates
            if isinstance(data.get(c), str) and _ZERO_DATE.match(data[c]) is not None
        ]
        if not zero:
            return data
        nulled = self.settings.zero_dates == "null"
        for column in zero:
            if not nulled or column in pk:
                why = "it is a primary key column" if column in pk else "zero_dates = refuse"
                raise Unmappable(
                    f"postgres sink: {event.describe()}: {table.name} column {column!r}: "
                    f"zero date {data[column]!r} has no PostgreSQL {table.types[column]} "
                    f"value ({why}; zero_dates = null writes NULL instead); nothing of "
                    "the event is written"
                )
        log.debug(
            "postgres sink: %s: %s: zero dates in %s written as NULL (zero_dates = null)",
            event.describe(),
            table.name,
            zero,
        )
        return {**data, **dict.fromkeys(zero)}

    def target_namespace(self, event: Event) -> str:
        """The `target_schema` setting, else the event's database name as a schema."""
        return str(self.settings.target_schema or event.database)
