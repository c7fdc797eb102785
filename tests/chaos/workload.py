"""The write load of a chaos run, and the tables it writes.

Source tables `accounts`, `orders` (small transactions), `bulk` (large ones),
`probe` (recovery probes), `sessions` (transactions under session binlog settings,
written by the run) and `wide` (rows with a text body, some over the topic's
max.message.bytes) share one shape: id, version, name, amount, payload (`wide`
adds `body`; `evolving` gains columns through the run's DDL steps). A second source
server gets `accounts2` and `orders2`.
Every insert and update sets a new `version`, so (table, id, version, kind) names
one row change. Triggers in the source database append each committed change to
`changes` in the same transaction, so the expected set of changes is exact even
when a COMMIT's outcome is unknown to the client (MariaDB restarted mid-commit).
An update that changes the primary key is logged as a delete of the old key and a
write of the new one.
The sink database has the same triggers writing `effects`: comparing the two is
the exactly-once check.

`Workload.run()` loops until stopped, writing:
- transactions of 1-5 inserts/updates/deletes spread over `accounts` and `orders`;
- with `pk_updates`, some of those updates also move the row to a new id;
- with `oversized_every` > 0, every that many transactions one insert into `wide`,
  whose body is over `OVERSIZED_BYTES` when its id is a multiple of
  `OVERSIZED_MODULUS` (a fixed rule the verifier knows);
- with `evolving`, every third transaction one insert or update of `evolving`,
  setting its added columns (`extra_columns`, changed by the DDL steps while they
  hold `gate`): JSON columns get JSON objects, text columns plain text or JSON text;
- every `large_every_s` seconds, one transaction inserting `large_rows` rows into
  `bulk`, and the next time also updating and deleting part of what is there.
A lost connection is retried with backoff; the loop never gives up while running.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pymysql

log = logging.getLogger(__name__)

DATA_TABLES = ("accounts", "orders", "bulk", "probe", "sessions", "wide", "evolving")
SMALL_TABLES = ("accounts", "orders")
SECOND_SOURCE_TABLES = ("accounts2", "orders2")
PROBE_ROWS = 24
ROW_COLUMNS = "id BIGINT PRIMARY KEY, version INT NOT NULL, name VARCHAR(64) NOT NULL, " + (
    "amount DECIMAL(12,2) NOT NULL, payload VARBINARY(8) NULL"
)
ROW_SHAPE = f"({ROW_COLUMNS})"
WIDE_SHAPE = f"({ROW_COLUMNS}, body MEDIUMTEXT NOT NULL)"
OVERSIZED_MODULUS = 5
OVERSIZED_BYTES = 30_000  # over the run's max.message.bytes; other bodies are 200 B
LOG_SHAPE = (
    "(seq BIGINT AUTO_INCREMENT PRIMARY KEY, tbl VARCHAR(16) NOT NULL, id BIGINT NOT NULL, "
    "version INT NOT NULL, kind CHAR(1) NOT NULL)"
)
Connect = Callable[[], "pymysql.connections.Connection[Any]"]


def is_oversized(table: str, ident: int) -> bool:
    return table == "wide" and ident % OVERSIZED_MODULUS == 0


def schema(log_table: str, tables: tuple[str, ...] = DATA_TABLES) -> list[str]:
    """DDL of the data tables and of the trigger-fed change log `log_table`."""
    statements = [f"CREATE TABLE {t} {WIDE_SHAPE if t == 'wide' else ROW_SHAPE}" for t in tables]
    statements.append(f"CREATE TABLE {log_table} {LOG_SHAPE}")

    def log(table: str, row: str, kind: str) -> str:
        return (
            f"INSERT INTO {log_table} (tbl, id, version, kind) "
            f"VALUES ('{table}', {row}.id, {row}.version, '{kind}')"
        )

    for table in tables:
        statements.append(
            f"CREATE TRIGGER {table}_insert AFTER INSERT ON {table} FOR EACH ROW "
            + log(table, "NEW", "w")
        )
        # A primary-key change is a delete of the old key and a write of the new one:
        # what a sink that moves the row ends up doing, whichever way it is published.
        statements.append(
            f"CREATE TRIGGER {table}_update AFTER UPDATE ON {table} FOR EACH ROW BEGIN "
            f"IF OLD.id <> NEW.id THEN {log(table, 'OLD', 'd')}; END IF; "
            f"{log(table, 'NEW', 'w')}; END"
        )
        statements.append(
            f"CREATE TRIGGER {table}_delete AFTER DELETE ON {table} FOR EACH ROW "
            + log(table, "OLD", "d")
        )
    return statements


# The same tables in PostgreSQL, for the PostgreSQL sink: the types its sink writes
# the MariaDB values into exactly, and a trigger per table logging each row write.
PG_ROW_COLUMNS = "id BIGINT PRIMARY KEY, version INT NOT NULL, name VARCHAR(64) NOT NULL, " + (
    "amount NUMERIC(12,2) NOT NULL, payload BYTEA NULL"
)
PG_LOG_SHAPE = (
    "(seq BIGSERIAL PRIMARY KEY, tbl VARCHAR(16) NOT NULL, id BIGINT NOT NULL, "
    "version INT NOT NULL, kind CHAR(1) NOT NULL)"
)


def postgres_schema(log_table: str, tables: tuple[str, ...] = DATA_TABLES) -> list[str]:
    """`schema` for PostgreSQL: the data tables and the trigger-fed change log."""
    statements = [
        f"CREATE TABLE {t} ({PG_ROW_COLUMNS}{', body TEXT NOT NULL' if t == 'wide' else ''})"
        for t in tables
    ]
    statements.append(f"CREATE TABLE {log_table} {PG_LOG_SHAPE}")

    def log(row: str, kind: str) -> str:
        return (
            f"INSERT INTO {log_table} (tbl, id, version, kind) "
            f"VALUES (TG_TABLE_NAME, {row}.id, {row}.version, '{kind}');"
        )

    # As in MariaDB, a primary-key change logs a delete of the old key and a write.
    statements.append(
        f"CREATE FUNCTION log_{log_table}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF TG_OP = 'DELETE' THEN {log('OLD', 'd')} "
        f"ELSIF TG_OP = 'UPDATE' THEN "
        f"IF OLD.id <> NEW.id THEN {log('OLD', 'd')} END IF; {log('NEW', 'w')} "
        f"ELSE {log('NEW', 'w')} END IF; RETURN NULL; END $$"
    )
    statements.extend(
        f"CREATE TRIGGER {t}_log AFTER INSERT OR UPDATE OR DELETE ON {t} "
        f"FOR EACH ROW EXECUTE FUNCTION log_{log_table}()"
        for t in tables
    )
    return statements


RETRYABLE = (pymysql.err.OperationalError, pymysql.err.InterfaceError)


@dataclass
class Workload:
    connect: Connect
    seed: int
    large_rows: int
    large_every_s: float
    pause_s: float = 0.02
    tables: tuple[str, ...] = SMALL_TABLES
    pk_updates: bool = False
    oversized_every: int = 0  # every this many transactions one insert into `wide`
    # Rows a primary-key update must neither leave nor reach (the handler's poison rule).
    keep_in_place: Callable[[str, int], bool] = lambda _table, _ident: False
    evolving: bool = False
    extra_columns: list[tuple[str, bool]] = field(default_factory=list)  # (name, is JSON)
    transactions: int = 0
    pk_moves: int = 0
    wide_rows: int = 0
    large_transactions: int = 0
    failed_transactions: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    # Held around each transaction: a fault that needs the load paused takes it.
    gate: threading.Lock = field(default_factory=threading.Lock)
    errors: list[str] = field(default_factory=list)
    _live: dict[str, list[int]] = field(default_factory=dict)
    _next_id: dict[str, int] = field(default_factory=dict)

    def run(self) -> None:
        rng = random.Random(self.seed)
        self._live = {t: [] for t in self.tables}
        self._next_id = {t: 1 for t in (*self.tables, "wide", "evolving")}
        conn: Any = None
        next_large = time.monotonic() + min(10.0, self.large_every_s)
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = self.connect()
                with self.gate:
                    if self.large_rows and time.monotonic() >= next_large:
                        self._large(conn)
                        next_large = time.monotonic() + self.large_every_s
                    elif self.oversized_every and self.transactions % self.oversized_every == 0:
                        self._wide(conn, rng)
                    elif self.evolving and self.transactions % 3 == 1:
                        self._evolve(conn, rng)
                    else:
                        self._small(conn, rng)
                self.transactions += 1
            except RETRYABLE as exc:
                self.failed_transactions += 1
                log.info("workload: connection lost (%s); reconnecting", exc)
                _close(conn)
                conn = None
                self.stop.wait(0.5)
                continue
            except pymysql.err.Error as exc:
                # Not a lost connection: a bug in the load itself. Record it for the
                # report (the run fails on it) and carry on with a fresh connection.
                self.errors.append(f"{type(exc).__name__}: {exc}")
                _close(conn)
                conn = None
                continue
            self.stop.wait(self.pause_s)
        _close(conn)

    def _small(self, conn: Any, rng: random.Random) -> None:
        with conn.cursor() as cur:
            cur.execute("BEGIN")
            for _ in range(rng.randint(1, 5)):
                table = rng.choice(self.tables)
                live = self._live[table]
                op = rng.random()
                if not live or op < 0.5:
                    ident = self._next_id[table]
                    self._next_id[table] += 1
                    payload = rng.choice([None, rng.randbytes(4)])
                    cur.execute(
                        f"INSERT INTO {table} VALUES (%s, 1, %s, %s, %s)",
                        (ident, f"n{ident}", f"{rng.randint(0, 99999)}.{ident % 100:02d}", payload),
                    )
                    live.append(ident)
                elif self.pk_updates and op < 0.6:
                    self._move(cur, table, rng)
                elif op < 0.85:
                    cur.execute(
                        f"UPDATE {table} SET version=version+1, name=%s, amount=amount+1 "
                        "WHERE id=%s",
                        (f"u{rng.randrange(10**6)}", rng.choice(live)),
                    )
                else:
                    victim = live.pop(rng.randrange(len(live)))
                    cur.execute(f"DELETE FROM {table} WHERE id=%s", (victim,))
            cur.execute("COMMIT")

    def _move(self, cur: Any, table: str, rng: random.Random) -> None:
        """An update that changes the primary key to a fresh id (and the version)."""
        live = self._live[table]
        movable = [i for i in live if not self.keep_in_place(table, i)]
        new = self._next_id[table]
        while self.keep_in_place(table, new):
            new += 1
        self._next_id[table] = new + 1
        if not movable:
            return
        old = rng.choice(movable)
        cur.execute(
            f"UPDATE {table} SET id=%s, version=version+1, name=%s WHERE id=%s",
            (new, f"m{old}", old),
        )
        live[live.index(old)] = new
        self.pk_moves += 1

    def _wide(self, conn: Any, rng: random.Random) -> None:
        """One insert into `wide`; its body is over the topic's limit on the fixed rule."""
        ident = self._next_id["wide"]
        self._next_id["wide"] += 1
        size = OVERSIZED_BYTES if is_oversized("wide", ident) else 200
        body = "".join(rng.choices("abcdefghij", k=size))
        with conn.cursor() as cur:
            cur.execute(
                "INSERT INTO wide (id, version, name, amount, body) VALUES (%s, 1, %s, 0, %s)",
                (ident, f"w{ident}", body),
            )
        self.wide_rows += 1

    def large_once(self, conn: Any, rows: int) -> None:
        """One large transaction of `rows` inserts (see `_large`), for a fault."""
        self._large(conn, rows)

    def _evolve(self, conn: Any, rng: random.Random) -> None:
        """One insert or update of `evolving`, with values for its added columns."""
        top = self._next_id["evolving"]
        columns = list(self.extra_columns)
        values = [
            json.dumps({"n": rng.randrange(1000)})
            if is_json or rng.random() < 0.5
            else f"text {rng.randrange(1000)}"
            for _name, is_json in columns
        ]
        sets = "".join(f", `{name}`=%s" for name, _j in columns)
        with conn.cursor() as cur:
            if top > 1 and rng.random() < 0.5:
                cur.execute(
                    f"UPDATE evolving SET version=version+1, amount=amount+1{sets} WHERE id=%s",
                    (*values, rng.randrange(1, top)),
                )
                return
            self._next_id["evolving"] = top + 1
            names = "".join(f", `{name}`" for name, _j in columns)
            cur.execute(
                f"INSERT INTO evolving (id, version, name, amount{names}) "
                f"VALUES (%s, 1, %s, 0{', %s' * len(columns)})",
                (top, f"e{top}", *values),
            )

    def _large(self, conn: Any, count: int | None = None) -> None:
        """One transaction of `large_rows` inserts into `bulk`, plus (when rows are
        there) an update of a tenth as many rows and a delete of another tenth.

        The update and delete are sized by `count`, not by the table: sized by the
        table, which grows by most of each transaction, a "100k-row" transaction of a
        long run carried several hundred thousand row changes."""
        count = self.large_rows if count is None else count
        with conn.cursor() as cur:
            cur.execute("BEGIN")
            # Read the table, not our memory: a COMMIT lost in a restart may have landed.
            cur.execute("SELECT COALESCE(MIN(id), 0), COALESCE(MAX(id), 0) FROM bulk")
            low, high = cur.fetchone()
            first = int(high) + 1
            if high:
                span = max(1, min(int(high) - int(low), count) // 10)
                cur.execute(
                    "UPDATE bulk SET version=version+1, amount=amount+1 WHERE id BETWEEN %s AND %s",
                    (low + span, low + 2 * span - 1),
                )
                cur.execute("DELETE FROM bulk WHERE id BETWEEN %s AND %s", (low, low + span - 1))
            chunk = 1000
            for low in range(first, first + count, chunk):
                high = min(low + chunk, first + count)
                rows = [(i, f"b{i}", f"{i % 100000}.{i % 100:02d}") for i in range(low, high)]
                cur.executemany(
                    "INSERT INTO bulk (id, version, name, amount) VALUES (%s, 1, %s, %s)", rows
                )
            cur.execute("COMMIT")
        self.large_transactions += 1


def _close(conn: Any) -> None:
    if conn is not None:
        try:
            conn.close()
        except pymysql.err.Error as exc:
            log.debug("workload: closing a broken connection: %s", exc)
