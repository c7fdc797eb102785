"""What the SQL sinks share beside their engine (`workers.sinks.sql.SqlSink`): the
bookkeeping tables, the upsert statement, and the dialect interface that tells one
database from another (MariaDB/MySQL in `workers.sinks.sql`, PostgreSQL in
`workers.sinks.postgres`).

The engine itself (fence, offsets, applied-event dedupe, one transaction per batch)
is written once against a `Dialect`; a dialect only says how to connect, how to spell
an upsert and a name, and how to read a target table's columns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from workers.events import Event

# Longest stream name the bookkeeping tables hold (source identity plus the id's stream).
STREAM_CHARS = 200

# The bookkeeping tables in portable SQL; a dialect may append table options.
BOOKKEEPING_TABLES = (
    """CREATE TABLE IF NOT EXISTS shardctl_fences (
        scope VARCHAR(190) NOT NULL, shard INT NOT NULL, token BIGINT NOT NULL,
        PRIMARY KEY (scope, shard))""",
    """CREATE TABLE IF NOT EXISTS shardctl_offsets (
        scope VARCHAR(190) NOT NULL, shard INT NOT NULL, topic VARCHAR(249) NOT NULL,
        position BIGINT NOT NULL, event_id VARCHAR(255) NULL, token BIGINT NOT NULL,
        PRIMARY KEY (scope, shard, topic))""",
    # The newest source position applied per topic and source stream (GTID domain or
    # binlog): a change the reader publishes again after a restart is skipped by it.
    f"""CREATE TABLE IF NOT EXISTS shardctl_applied (
        scope VARCHAR(190) NOT NULL, shard INT NOT NULL, topic VARCHAR(249) NOT NULL,
        stream VARCHAR({STREAM_CHARS}) NOT NULL, last_key VARCHAR(100) NOT NULL,
        PRIMARY KEY (scope, shard, topic, stream))""",
    # The newest applied transactions per stream, to tell a replay (same transaction,
    # same fingerprint) from a source whose position went backwards: one row per batch
    # and stream, holding the batch's transactions from first_txn to last_txn (`txns`
    # of them) with their fingerprints, as a JSON object {txn: fingerprint}.
    # {long_text} is the dialect's type for text of up to a few MiB.
    f"""CREATE TABLE IF NOT EXISTS shardctl_applied_runs (
        scope VARCHAR(190) NOT NULL, shard INT NOT NULL, topic VARCHAR(249) NOT NULL,
        stream VARCHAR({STREAM_CHARS}) NOT NULL, last_txn VARCHAR(64) NOT NULL,
        first_txn VARCHAR(64) NOT NULL, txns INT NOT NULL, fingerprints {{long_text}} NOT NULL,
        PRIMARY KEY (scope, shard, topic, stream, last_txn, first_txn))""",
    # What releases before shardctl_applied_runs wrote: one row per transaction. Read
    # (a replay of what they applied is still recognised) and pruned, never written.
    f"""CREATE TABLE IF NOT EXISTS shardctl_applied_txns (
        scope VARCHAR(190) NOT NULL, shard INT NOT NULL, topic VARCHAR(249) NOT NULL,
        stream VARCHAR({STREAM_CHARS}) NOT NULL, txn VARCHAR(64) NOT NULL,
        fingerprint VARCHAR(64) NOT NULL,
        PRIMARY KEY (scope, shard, topic, stream, txn))""",
)


def txn_text(key: tuple[int, ...]) -> str:
    """The transaction part of an order key (all but the row), as sortable text.
    (Also the Kafka sink's record of applied transactions.)"""
    if len(key) == 2:  # a GTID's sequence number and the row: the common case
        return f"{key[0]:020d}"
    return ".".join(f"{n:020d}" for n in key[:-1])


def fingerprint(event: Event) -> str:
    """What a replay repeats exactly and a different transaction does not: the binlog
    timestamp and XID (the same on every row of the transaction)."""
    return f"{event.message.get('ts')}:{event.message.get('xid')}"[:64]


# Column types (as `TargetTable.types` names them) whose values
# `workers.sinks.sql.column_value` converts even when they are scalars.
CONVERTED_TYPES = frozenset(
    {"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob", "json", "set", "longtext"}
)


class TargetTable:
    """A target table: its quoted full name, column types (as `column_value` knows
    them), primary key, the scale of each DECIMAL/NUMERIC column that has one, and
    the columns of a date type that cannot hold a zero date (PostgreSQL's)."""

    def __init__(
        self,
        name: str,
        types: dict[str, str],
        primary_key: list[str],
        scales: dict[str, int] | None = None,
        dates: frozenset[str] = frozenset(),
    ) -> None:
        self.name = name
        self.types = types
        self.primary_key = primary_key
        self.scales = scales or {}
        self.dates = dates
        # Columns whose scalar values (numbers, strings, booleans) are written as they
        # come: every type but binary, JSON, SET, and LONGTEXT (MariaDB's JSON).
        self.plain = frozenset(c for c, kind in types.items() if kind not in CONVERTED_TYPES)


class MissingTable(LookupError):
    """The target table does not exist."""


class Dialect:
    """How one database is spoken to. Subclasses fill in every method that raises."""

    #: The sink's name in messages (`--handler` name).
    name = "sql"
    #: Driver errors that mean the connection is unusable (a reconnect may help).
    connection_errors: tuple[type[BaseException], ...] = ()
    #: Every error the driver raises (classified by `is_transient`).
    driver_errors: tuple[type[BaseException], ...] = (OSError,)
    #: Rows one multi-row statement carries at most.
    rows_per_statement = 1000
    #: Bind parameters one statement may carry (PostgreSQL's protocol allows 65535).
    max_parameters = 65535
    #: Rows from which a group of writes goes through `bulk_upsert`/`bulk_delete`
    #: (None: the dialect has no bulk path; every write is a multi-row statement).
    bulk_rows: int | None = None
    #: The column type of text up to a few MiB (a batch's applied transactions).
    long_text = "TEXT"

    def is_transient(self, error: BaseException) -> bool:
        """True for a failure of the connection or the server's moment (wait and
        retry), False for one of the data (the event is dead-lettered)."""
        raise NotImplementedError

    def schema(self) -> Sequence[str]:
        return tuple(s.replace("{long_text}", self.long_text) for s in BOOKKEEPING_TABLES)

    def upgrade_schema(self, cur: Any) -> None:
        """Bring bookkeeping tables made by an older release up to date."""

    def lock_schema(self, cur: Any) -> None:
        """Hold, until the transaction ends, a lock that makes workers create the
        bookkeeping tables one at a time (where the database needs it)."""

    def connect(self, settings: Any) -> Any:
        raise NotImplementedError

    def is_open(self, conn: Any) -> bool:
        raise NotImplementedError

    def ping(self, conn: Any) -> None:
        """Raise one of `connection_errors` if `conn` no longer reaches the server."""
        raise NotImplementedError

    def begin(self, conn: Any) -> None:
        raise NotImplementedError

    def quote(self, name: str) -> str:
        raise NotImplementedError

    def on_conflict(self, keys: Sequence[str]) -> str:
        """The clause after INSERT ... VALUES (...) that turns it into an upsert."""
        raise NotImplementedError

    def new_value(self, column: str) -> str:
        """In the upsert's update list: the value the INSERT tried to write."""
        raise NotImplementedError

    def old_value(self, table: str, column: str) -> str:
        """In the upsert's update list: the value stored in the row."""
        raise NotImplementedError

    def target_table(self, cur: Any, namespace: str, table: str) -> TargetTable:
        """Read a target table's columns; MissingTable naming it if it does not exist."""
        raise NotImplementedError

    # -- schema evolution (workers.sinks.schema_evolution) ----------------------------

    #: The column type made for each kind of value.
    column_types: Mapping[str, str] = {}

    def refusal(self, kind: str, value: Any) -> str | None:
        """Why the type made for `kind` cannot hold `value` exactly; None if it can."""
        raise NotImplementedError

    def qualified(self, namespace: str, table: str) -> str:
        """A table's quoted full name, as `TargetTable.name` holds it."""
        return f"{self.quote(namespace)}.{self.quote(table)}"

    def create_table(
        self, conn: Any, name: str, columns: Sequence[tuple[str, str]], key: Sequence[str]
    ) -> None:
        """Create table `name` (quoted) with `columns` (name, SQL type) and primary key
        `key` unless it exists, and commit."""
        q = self.quote
        made = ", ".join(
            f"{q(c)} {kind} {'NOT NULL' if c in key else 'NULL'}" for c, kind in columns
        )
        with conn.cursor() as cur:
            cur.execute(
                f"CREATE TABLE IF NOT EXISTS {name} ({made}, "
                f"PRIMARY KEY ({', '.join(q(c) for c in key)})){self.table_options()}"
            )
        conn.commit()

    def table_options(self) -> str:
        """What follows a created table's column list."""
        return ""

    def add_column(self, conn: Any, name: str, column: str, kind: str) -> None:
        """Add a nullable `column` of SQL type `kind` to table `name` unless it has it
        (another worker may have added it a moment ago), and commit."""
        raise NotImplementedError

    def execute(self, cur: Any, statement: str, params: Sequence[Any]) -> None:
        """Run one of the batch's data statements (`%s` placeholders) on `cur`."""
        cur.execute(statement, params)

    def after_values(self) -> str:
        """What follows the VALUES list before the conflict clause (MySQL 8's row alias)."""
        return ""

    def upsert(
        self,
        table: str,
        columns: Sequence[str],
        keys: Sequence[str],
        updates: Sequence[str],
        greatest: Sequence[str] = (),
        rows: int = 1,
    ) -> str:
        """INSERT `rows` rows of `columns` (placeholders), on a key conflict set
        `updates` to the new values, and each of `greatest` to the larger of the stored
        and the new value."""
        q = self.quote
        assignments = [f"{q(c)} = {self.new_value(c)}" for c in updates] + [
            f"{q(c)} = GREATEST({self.old_value(table, c)}, {self.new_value(c)})" for c in greatest
        ]
        row = f"({', '.join(['%s'] * len(columns))})"
        return (
            f"INSERT INTO {table} ({', '.join(q(c) for c in columns)}) "
            f"VALUES {', '.join([row] * rows)}{self.after_values()} {self.on_conflict(keys)} "
            + ", ".join(assignments)
        )

    def bulk_upsert(
        self,
        cur: Any,
        table: str,
        columns: Sequence[str],
        keys: Sequence[str],
        updates: Sequence[str],
        rows: Sequence[tuple[Any, ...]],
    ) -> None:
        """Upsert `rows` (values of `columns`, no key twice) into `table` in bulk, as
        `upsert` would; only called when `bulk_rows` is set."""
        raise NotImplementedError

    def bulk_delete(
        self, cur: Any, table: str, keys: Sequence[str], rows: Sequence[tuple[Any, ...]]
    ) -> None:
        """Delete the rows of `table` whose primary key `keys` holds one of `rows`."""
        raise NotImplementedError

    def delete(self, table: str, keys: Sequence[str], rows: int = 1) -> str:
        """DELETE the rows whose primary key `keys` equals one of `rows` key tuples."""
        if len(keys) == 1:
            marks = ", ".join(["%s"] * rows)
            return f"DELETE FROM {table} WHERE {self.quote(keys[0])} IN ({marks})"
        row = f"({', '.join(['%s'] * len(keys))})"
        return (
            f"DELETE FROM {table} WHERE ({', '.join(self.quote(k) for k in keys)}) "
            f"IN ({', '.join([row] * rows)})"
        )
