"""One chaos run: pipeline up, load on, seeded faults in, then verify and report.

    SETUP     source/sink schemas and triggers, topics, shards; 2 readers,
              2 coordinators, `workers` workers; the owners/ watch starts logging
    SETTLED   a reader leads and has stored a checkpoint; every shard is owned
    LOADED    the workload writes; each scheduled fault is injected at its time,
              then a probe write (every probe row gets a new version) measures
              recovery: fault injected -> probe applied in the sink everywhere;
              killed processes start again after that, frozen ones were resumed
    DRAINED   the workload stops; wait until the sink applied every change
    VERIFIED  trigger logs, topic, DLQ and owners log compared (`verify.py`)

Every restarted stack service is healthy again before the next step (`restart`
returns once it is). `ChaosConfig.seed` fixes the schedule and the load;
`ChaosConfig.kinds` and `load_kinds` select what the run injects and writes.

Faults beyond process kills and service restarts:
    bootstrap        `cdc bootstrap` of a small table, and the CDC leader killed
                     (-9) while it runs
    sink outage      the sink's own MariaDB (`mariadb_sink`), or PostgreSQL with
                     `sink="postgres"`, stopped for longer than the workers' old
                     retry window, then started
    binlog session   one transaction of inserts/updates into `sessions` under
                     `SET SESSION binlog_format=STATEMENT` or
                     `binlog_row_image=MINIMAL`. The reader must exit naming the
                     setting and `position=<P>`; the run then does the operator's
                     fix: stop the readers, `cdc checkpoint skip --position <P>`,
                     `cdc bootstrap <db>.sessions`, start the readers
    DDL step         in turn: ADD COLUMN note<n>, RENAME it to memo<n>, MODIFY it
                     to JSON (after turning its non-JSON values into JSON objects),
                     on `evolving`, with the load paused. The SQL sink skips DDL,
                     so the run applies the same ALTER to the sink table as an
                     operator would, once the sink has applied every earlier change
                     of the table; the sink must then write the new columns.
`ChaosConfig.sink` chooses the sink: `sql` (MariaDB) or `postgres` (the stack's
PostgreSQL; the source MariaDB's values are compared with the rows PostgreSQL
returns, DECIMAL as NUMERIC, VARBINARY as BYTEA). The DDL step is MariaDB's only.
Load kinds: primary-key updates; a second source (`mariadb2`, reader `q1`) into the
same topic; a topic with a small max.message.bytes and rows over it.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pymysql

from shardctl.core.config import Settings
from tests.chaos.flaky_sink import is_poison
from tests.chaos.owners_log import OwnersLog, max_overlap, owned_shards
from tests.chaos.pipeline import SOURCE, SOURCE2, Pipeline, port_of
from tests.chaos.schedule import (
    ALL_KINDS,
    ALL_LOAD_KINDS,
    Fault,
    FaultKind,
    LoadKind,
    make_schedule,
)
from tests.chaos.topics import read_topic
from tests.chaos.verify import (
    ChangeKey,
    DeadLetters,
    Published,
    ReaderDeadLetters,
    Verdict,
    verdict,
)
from tests.chaos.workload import (
    DATA_TABLES,
    PROBE_ROWS,
    RETRYABLE,
    SECOND_SOURCE_TABLES,
    SMALL_TABLES,
    Workload,
    is_oversized,
    postgres_schema,
    schema,
)

POISON_TABLE = "accounts"


@dataclass(frozen=True)
class ChaosConfig:
    seed: int
    duration_s: float  # faults are scheduled within this; the load runs at least this long
    large_rows: int = 5_000
    large_every_s: float = 30.0
    workers: int = 3
    num_shards: int = 6
    ttl: int = 3
    poison_modulus: int = 97
    flaky_modulus: int = 13
    gap_s: tuple[float, float] = (3.0, 6.0)
    rounds: int | None = None  # at most this many rounds of every fault kind
    pause_s: float = 0.1  # between small transactions of the workload
    recovery_timeout_s: float = 120.0
    drain_timeout_s: float = 180.0
    kinds: tuple[FaultKind, ...] = ALL_KINDS
    load_kinds: tuple[LoadKind, ...] = ALL_LOAD_KINDS
    sink_outage_s: tuple[float, float] = (6.0, 12.0)  # the old retry window was ~3-5 s
    max_message_bytes: int = 20_000
    oversized_every: int = 15  # transactions between inserts into `wide`
    sink: str = "sql"  # sql (MariaDB) or postgres


@dataclass
class Recovery:
    fault: Fault
    target: str
    seconds: float | None  # None: not recovered within the timeout


@dataclass
class Report:
    seed: int
    schedule: list[Fault]
    recoveries: list[Recovery] = field(default_factory=list)
    verdict: Verdict | None = None
    published_messages: int = 0
    dead_letters: int = 0
    owner_records: int = 0
    overlap: int = 0
    transactions: int = 0
    large_transactions: int = 0
    interrupted_transactions: int = 0  # connection lost mid-transaction (MariaDB restart)
    workload_errors: list[str] = field(default_factory=list)
    tables_equal: dict[str, bool] = field(default_factory=dict)
    crashed: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)  # what a fault's own check saw
    pk_moves: int = 0
    wide_rows: int = 0
    second_source_transactions: int = 0
    operator_fixes: int = 0
    elapsed_s: float = 0.0
    drain_s: float | None = None  # load stopped -> sink caught up; None: it did not

    def faults_by_kind(self) -> Counter[str]:
        return Counter(r.fault.kind.value for r in self.recoveries)

    def render(self) -> str:
        v = self.verdict
        lines = [f"chaos run, seed {self.seed}, {self.elapsed_s:.0f} s"]
        lines.append("faults injected:")
        for kind, count in sorted(self.faults_by_kind().items()):
            lines.append(f"  {count:4d}  {kind}")
        lines.append("recovery (fault -> probe applied in the sink on every shard):")
        for r in self.recoveries:
            took = "NOT RECOVERED" if r.seconds is None else f"{r.seconds:6.2f} s"
            lines.append(f"  {took}  {r.fault.describe()} -> {r.target}")
        if v is not None:
            lines += [
                f"transactions: {self.transactions} ({self.large_transactions} large, "
                f"{self.interrupted_transactions} cut off by a fault)",
                f"row changes committed: {v.committed}",
                f"events published: {self.published_messages}",
                f"events processed (applied in the sink): {v.applied}",
                f"events lost: {len(v.lost)}",
                f"events duplicated: {len(v.duplicated)} "
                f"(records applied twice by workers/sink: {len(v.sink_duplicated)}; "
                f"reader redeliveries applied again: {len(v.reapplied_redeliveries)})",
                f"poisoned changes: {v.poisoned}, applied anyway: {len(v.poison_applied)}",
                f"dead letters: {self.dead_letters} "
                f"(missing {len(v.dlq_missing)}, unexpected {len(v.dlq_unexpected)}, "
                f"repeated {v.dlq_repeated}) -> exact: {v.dlq_exact}",
                f"changes never published: {len(v.unpublished)}; "
                f"published under two event ids: {len(v.split_event_ids)}",
                f"primary-key moves: {self.pk_moves}; second-source transactions: "
                f"{self.second_source_transactions}; bootstrap applications: "
                f"{v.bootstrap_applied}",
                f"operator fixes (skip + bootstrap): {self.operator_fixes}, "
                f"changes skipped by them: {v.skipped_by_operator}",
                f"wide rows: {self.wide_rows}, oversized: {v.oversized} (missing from the "
                f"reader DLQ {len(v.oversized_missing)}, unexpected there "
                f"{len(v.oversized_unexpected)}, in the sink {len(v.oversized_applied)}) "
                f"-> exact: {v.reader_dlq_exact}",
                f"row messages with a partial row: {len(v.partial_rows)}",
            ]
            for name, keys in (
                ("lost", v.lost),
                ("duplicated", v.duplicated),
                ("never published", v.unpublished),
                ("unexpected in the reader DLQ", v.oversized_unexpected),
            ):
                if keys:
                    lines.append(f"{name} (first 5): {keys[:5]}")
        lines.append(
            f"largest owner overlap: {self.overlap} ({self.owner_records} owners/ records)"
        )
        lines.append(f"source == sink per table: {self.tables_equal}")
        drained = "did not catch up" if self.drain_s is None else f"{self.drain_s:.1f} s"
        lines.append(f"sink caught up after the load stopped: {drained}")
        if self.crashed:
            lines.append(f"processes that exited on their own: {self.crashed}")
        if self.workload_errors:
            lines.append(f"workload errors: {self.workload_errors[:5]}")
        for finding in self.findings:
            lines.append(f"finding: {finding}")
        return "\n".join(lines)


def poison_rule(config: ChaosConfig) -> Any:
    return lambda key: is_poison(key[0], key[1], POISON_TABLE, config.poison_modulus)


def oversized_rule(config: ChaosConfig) -> Any:
    enabled = LoadKind.OVERSIZED_ROWS in config.load_kinds
    return lambda key: enabled and is_oversized(key[0], key[1])


ERROR_POSITION = re.compile(r"position=(\S+)")
# A bootstrap burst's pace: at least 1 s between its large transactions, and at most
# 5k rows/s, below what a reader publishes on a busy 2-core machine.
BURST_PAUSE_S = 1.0
BURST_ROWS_PER_S = 2_000
SOURCE_SERVER = "mariadb"
SECOND_SERVER = "mariadb2"
SINK_SERVER = "mariadb_sink"
POSTGRES_SERVER = "postgres"
SINKS = ("sql", "postgres")
BOOTSTRAP_TABLES = ("accounts", "orders")


class ChaosRun:
    def __init__(
        self, stack: Any, settings: Settings, source_db: str, workdir: Path, config: ChaosConfig
    ) -> None:
        self.stack = stack
        self.config = config
        if config.sink not in SINKS:
            raise ValueError(f"chaos sink {config.sink!r}: expected one of {', '.join(SINKS)}")
        self.postgres = config.sink == "postgres"
        if self.postgres and FaultKind.DDL in config.kinds:
            raise ValueError("the DDL step alters MariaDB sink tables: leave out ddl with postgres")
        if self.postgres:
            self.sink_server = POSTGRES_SERVER
        else:
            outage = FaultKind.SINK_OUTAGE in config.kinds
            self.sink_server = SINK_SERVER if outage else SOURCE_SERVER
        second = LoadKind.SECOND_SOURCE in config.load_kinds
        oversized = LoadKind.OVERSIZED_ROWS in config.load_kinds
        self.pipeline = Pipeline(
            stack,
            settings,
            source_db,
            workdir,
            num_shards=config.num_shards,
            ttl=config.ttl,
            poison_modulus=config.poison_modulus,
            flaky_modulus=config.flaky_modulus,
            sink_server=self.sink_server,
            second_source=SECOND_SERVER if second else None,
            max_message_bytes=config.max_message_bytes if oversized else None,
            sink=config.sink,
        )
        self.owners = OwnersLog(self.pipeline.keys)
        self.schedule = make_schedule(
            config.seed,
            config.duration_s,
            kinds=config.kinds,
            gap_s=config.gap_s,
            rounds=config.rounds,
        )
        self.report = Report(seed=config.seed, schedule=self.schedule)
        self._probe_version = 1
        self._began = time.monotonic()
        self._stopped_services: list[str] = []
        self._started_services: list[str] = []  # optional services this run brought up
        self._skipped: list[ChangeKey] = []  # changes of transactions the operator skipped
        self._session_next = 1
        self._loads: list[Workload] = []
        self._ddl_steps = 0
        self._json_columns: set[str] = set()

    # -- SQL --------------------------------------------------------------------------

    def connect(self, server: str, db: str | None = None) -> Any:
        if server == SOURCE_SERVER:
            return self.stack.mysql_root(db)
        return pymysql.connect(
            host="127.0.0.1",
            port=port_of(self.stack, server),
            user="root",
            password="",
            database=db,
            autocommit=True,
            charset="utf8mb4",
        )

    def sql(
        self,
        db: str | None,
        statement: str,
        args: Any = None,
        deadline_s: float = 120.0,
        server: str = SOURCE_SERVER,
    ) -> Any:
        """Run one statement, retrying while MariaDB restarts."""
        deadline = time.monotonic() + deadline_s
        while True:
            try:
                conn = self.connect(server, db)
                try:
                    with conn.cursor() as cur:
                        cur.execute(statement, args)
                        return list(cur.fetchall())
                finally:
                    conn.close()
            except RETRYABLE:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def sink_sql(self, statement: str, args: Any = None) -> Any:
        if self.postgres:
            return self.postgres_sql(self.pipeline.sink_db, statement, args)
        return self.sql(self.pipeline.sink_db, statement, args, server=self.sink_server)

    def postgres_sql(
        self, db: str | None, statement: str, args: Any = None, deadline_s: float = 120.0
    ) -> Any:
        """Run one statement on the stack's PostgreSQL (database `db`, or the default
        one), retrying while it is stopped or restarts."""
        from shardctl.cli.dev import load_devstack

        connect = load_devstack().Postgres(self.stack._stack).connect_args()
        if db is not None:
            connect["dbname"] = db
        deadline = time.monotonic() + deadline_s
        while True:
            try:
                with psycopg.connect(**connect, autocommit=True) as conn, conn.cursor() as cur:
                    cur.execute(statement, args)
                    return list(cur.fetchall()) if cur.description is not None else []
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    # -- phases -----------------------------------------------------------------------

    def _optional_servers(self) -> list[str]:
        p = self.pipeline
        wanted = [s for s in (p.second_source, self.sink_server) if s and s != SOURCE_SERVER]
        return wanted

    def setup(self) -> None:
        p = self.pipeline
        devstack = self.stack._stack
        for server in self._optional_servers():
            if devstack.pid(server) is None:
                self._started_services.append(server)
            devstack.up([server], echo=lambda _m: None)  # through devstack, as tests must
        for statement in schema("changes"):
            self.sql(p.source_db, statement)
        sink_tables = DATA_TABLES
        if p.second_source is not None:
            sink_tables = DATA_TABLES + SECOND_SOURCE_TABLES
            self.sql(None, f"CREATE DATABASE `{p.source_db}`", server=p.second_source)
            for statement in schema("changes", SECOND_SOURCE_TABLES):
                self.sql(p.source_db, statement, server=p.second_source)
        if self.postgres:
            self.postgres_sql(None, f'CREATE DATABASE "{p.sink_db}"')
            for statement in postgres_schema("effects", sink_tables):
                self.sink_sql(statement)
        else:
            self.sql(None, f"CREATE DATABASE `{p.sink_db}`", server=self.sink_server)
            for statement in schema("effects", sink_tables):
                self.sink_sql(statement)
        p.create_topics()
        done = p.shardctl("shards", "set", str(self.config.num_shards))
        if done.returncode != 0:
            raise RuntimeError(f"shardctl shards set: {done.stderr}")
        p.etcd.submit(self.owners.run(p.client))
        for name in ("r1", "r2"):
            p.start_reader(name)
        if p.second_source is not None:
            p.start_reader2("q1")
        for name in ("c1", "c2"):
            p.start_coordinator(name)
        for i in range(1, self.config.workers + 1):
            p.start_worker(f"w{i}")
        self._wait("a reader leads and checkpoints, every shard owned", self._settled, 90)
        rows = [(i, f"p{i}", "0.00") for i in range(1, PROBE_ROWS + 1)]
        conn = self.stack.mysql_root(p.source_db)
        try:
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO probe (id, version, name, amount) VALUES (%s, 1, %s, %s)", rows
                )
        finally:
            conn.close()
        self._wait("probe rows in the sink", lambda: self._probe_applied(1), 90)

    def _settled(self) -> bool:
        p = self.pipeline
        sources = [SOURCE] + ([SOURCE2] if p.second_source is not None else [])
        return (
            p.cdc_leader() is not None
            and all(p.leader(p.keys.cdc_checkpoint(s)) is not None for s in sources)
            and len(owned_shards(self.owners.records)) == self.config.num_shards
        )

    def _wait(self, what: str, check: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            crashed = self.pipeline.dead()
            if crashed:
                tails = "\n".join(f"== {n}\n{self.pipeline.log_tail(n)}" for n in crashed)
                raise AssertionError(f"while waiting for {what}: {crashed} exited\n{tails}")
            time.sleep(0.3)
        raise AssertionError(f"chaos run: timed out after {timeout:.0f}s waiting for {what}")

    def _probe(self) -> int:
        self._probe_version += 1
        version = self._probe_version
        self.sql(
            self.pipeline.source_db,
            "UPDATE probe SET version=%s, amount=amount+1",
            (version,),
        )
        return version

    def _probe_applied(self, version: int) -> bool:
        rows = self.sink_sql("SELECT COUNT(*), MIN(version) FROM probe")
        count, lowest = rows[0]
        return int(count) == PROBE_ROWS and lowest is not None and int(lowest) >= version

    def _recovered(self, started: float, version: int) -> float | None:
        deadline = started + self.config.recovery_timeout_s
        while time.monotonic() < deadline:
            if self._probe_applied(version):
                return time.monotonic() - started
            time.sleep(0.1)
        return None

    def inject(self, fault: Fault) -> Recovery:
        p = self.pipeline
        started = time.monotonic()
        kind = fault.kind
        if kind in (FaultKind.KILL_WORKER, FaultKind.FREEZE_WORKER):
            workers = p.names("w")
            target = workers[fault.pick % len(workers)]
            if kind is FaultKind.KILL_WORKER:
                p.kill9(target)
                seconds = self._recovered(started, self._probe())
                p.restart(target)
            else:
                p.freeze(target)
                version = self._probe()
                time.sleep(self.config.ttl + 1.5)  # past its lease TTL: a zombie when resumed
                p.thaw(target)
                seconds = self._recovered(started, version)
            return Recovery(fault, target, seconds)
        if kind is FaultKind.KILL_COORDINATOR_LEADER:
            target = p.coordinator_leader() or "none"
            if target in p.procs:
                p.kill9(target)
            others = [c for c in p.names("c") if c != target]
            seconds = self._leader_moved(started, p.coordinator_leader, others)
            if target in p.procs:
                p.restart(target)
            return Recovery(fault, target, seconds)
        if kind is FaultKind.KILL_CDC_LEADER:
            return Recovery(fault, *self._kill_cdc_leader(started))
        if kind is FaultKind.BOOTSTRAP:
            return self._bootstrap_during_failover(fault, started)
        if kind is FaultKind.SINK_OUTAGE:
            low, high = self.config.sink_outage_s
            outage = low + (high - low) * (fault.pick % 1000) / 1000
            self.stack.stop(self.sink_server)
            version = self._probe()
            time.sleep(outage)  # the outage itself: longer than the old retry window
            self.stack.start(self.sink_server)
            return Recovery(
                fault, f"{self.sink_server} {outage:.1f}s", self._recovered(started, version)
            )
        if kind is FaultKind.SESSION_BINLOG:
            return self._session_binlog(fault, started)
        if kind is FaultKind.DDL:
            return self._ddl_step(fault, started)
        service = {
            FaultKind.RESTART_ETCD: "etcd",
            FaultKind.RESTART_KAFKA: "kafka",
            FaultKind.RESTART_MARIADB: "mariadb",
        }[kind]
        self.stack.restart(service)  # returns once the service is healthy again
        return Recovery(fault, service, self._recovered(started, self._probe()))

    def _kill_cdc_leader(self, started: float) -> tuple[str, float | None]:
        p = self.pipeline
        target = p.cdc_leader() or "none"
        if target in p.procs:
            p.kill9(target)
        seconds = self._recovered(started, self._probe())
        if target in p.procs:
            p.restart(target)
        return target, seconds

    def _bootstrap_during_failover(self, fault: Fault, started: float) -> Recovery:
        """A bootstrap of a small table while large transactions stream, and the CDC
        leader killed (-9) as soon as it stores a checkpoint after the bootstrap was
        published: the checkpoint must not pass a transaction Kafka has not yet
        acknowledged (P4), or that transaction is lost.

        The load pauses meanwhile, so every transaction the bootstrap can be emitted
        before is a large one (a long window between sending it and its acks)."""
        p = self.pipeline
        table = BOOTSTRAP_TABLES[fault.pick % len(BOOTSTRAP_TABLES)]
        main = self._loads[0]
        burst_rows = max(1000, min(self.config.large_rows // 2, 20_000))
        stop_burst = threading.Event()

        def burst() -> None:
            conn: Any = None
            while not stop_burst.is_set():
                try:
                    conn = conn or self.stack.mysql_root(p.source_db)
                    main.large_once(conn, burst_rows)
                except RETRYABLE:
                    conn = None
                # Paced: an unpaced burst writes far faster than any reader publishes,
                # and the backlog then outlasts every recovery timeout of the run.
                stop_burst.wait(max(BURST_PAUSE_S, burst_rows / BURST_ROWS_PER_S))
            if conn is not None:
                conn.close()

        with main.gate:
            command = p.background(
                "cdc", "bootstrap", f"{p.source_db}.{table}", "--source", SOURCE, "--timeout", "300"
            )
            assert command.stdout is not None
            first_line = command.stdout.readline()  # "bootstrap <id> of <table> requested ..."
            streamer = threading.Thread(target=burst, name="chaos-burst", daemon=True)
            streamer.start()
            request = first_line.split()[1] if first_line.startswith("bootstrap ") else ""
            key = p.keys.cdc_bootstrap_prefix(SOURCE) + request
            checkpoint_key = p.keys.cdc_checkpoint(SOURCE)
            deadline = time.monotonic() + 120
            while request and p.leader(key) is not None and time.monotonic() < deadline:
                time.sleep(0.02)
            published_at = p.leader(checkpoint_key)
            while p.leader(checkpoint_key) == published_at and time.monotonic() < deadline:
                time.sleep(0.005)
            target, seconds = self._kill_cdc_leader(started)
            stop_burst.set()
            streamer.join(300)
        self._finish(command, f"bootstrap {request} of {table} across the kill -9 of {target}")
        return Recovery(fault, f"bootstrap {table} + kill -9 {target}", seconds)

    def _finish(self, command: subprocess.Popen[str], what: str, timeout: float = 330) -> bool:
        try:
            out, _ = command.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            command.kill()
            out, _ = command.communicate()
            self.report.findings.append(f"{what}: did not finish in {timeout:.0f}s: {out[-300:]}")
            return False
        if command.returncode != 0:
            self.report.findings.append(f"{what}: exit {command.returncode}: {out[-300:]}")
            return False
        return True

    def _session_binlog(self, fault: Fault, started: float) -> Recovery:
        """One transaction of inserts and updates under a session binlog setting the
        reader cannot follow; then the operator's fix when the reader stops."""
        p = self.pipeline
        setting, value = (
            ("binlog_format", "STATEMENT")
            if fault.pick % 2 == 0
            else ("binlog_row_image", "MINIMAL")
        )
        before = self.sql(
            p.source_db, "SELECT COALESCE(MAX(seq), 0) FROM changes WHERE tbl='sessions'"
        )[0][0]
        first = self._session_next
        self._session_next += 3
        conn = self.stack.mysql_root(p.source_db)
        try:
            with conn.cursor() as cur:
                cur.execute(f"SET SESSION {setting}='{value}'")
                cur.execute("BEGIN")
                cur.executemany(
                    "INSERT INTO sessions (id, version, name, amount) VALUES (%s, 1, %s, 0)",
                    [(i, f"s{i}") for i in range(first, first + 3)],
                )
                # Rows of this and earlier such transactions: the bootstrap re-copies them.
                cur.execute(
                    "UPDATE sessions SET version=version+1, amount=amount+1 WHERE id IN (%s, %s)",
                    (first, max(1, first - 2)),
                )
                cur.execute("COMMIT")
        finally:
            conn.close()
        rows = self.sql(
            p.source_db,
            "SELECT tbl, id, version, kind FROM changes WHERE tbl='sessions' AND seq > %s",
            (before,),
        )
        changes = [(str(t), int(i), int(v), str(k)) for t, i, v, k in rows]
        what = f"session {setting}={value}"
        version = self._probe()  # behind the transaction in the binlog
        stopped: list[str] = []
        deadline = started + self.config.recovery_timeout_s
        while time.monotonic() < deadline:
            stopped = [n for n in p.dead() if n.startswith("r")]
            if stopped or self._probe_applied(version):
                break
            time.sleep(0.2)
        if not stopped:
            self.report.findings.append(
                f"{what}: the reader went on past the transaction without stopping"
            )
            return Recovery(fault, what, self._recovered(started, version))
        reader = stopped[0]
        # The last such line: the log goes on across restarts, so an earlier stop of
        # this reader (an earlier fault of this kind) can still be in the tail.
        errors = [
            ln
            for ln in p.log_tail(reader, 20_000).splitlines()
            if setting in ln and ERROR_POSITION.search(ln)
        ]
        line = errors[-1] if errors else None
        code = p.procs[reader].returncode
        if line is None or code != 1:
            self.report.findings.append(
                f"{what}: reader {reader} exited {code} without an error naming {setting} "
                f"and position=: {p.log_tail(reader, 600)!r}"
            )
            for name in p.names("r"):
                if name in p.dead():
                    p.restart(name)
            return Recovery(fault, what, self._recovered(started, version))
        match = ERROR_POSITION.search(line)
        assert match is not None
        position = match.group(1).strip("'\"").rstrip(",;)'\"")
        for name in p.names("r"):  # the operator stops every reader of the source first
            if name not in p.dead():
                p.kill9(name)
        # ... and waits for the last leader's lease to lapse: `checkpoint skip` is refused
        # while a reader leads, and a reader killed while leading holds the key a TTL.
        lapsed = time.monotonic() + 3 * self.config.ttl + 10
        while p.cdc_leader() is not None and time.monotonic() < lapsed:
            time.sleep(0.2)
        skip = p.shardctl("cdc", "checkpoint", "skip", "--source", SOURCE, "--position", position)
        if skip.returncode != 0:
            self.report.findings.append(
                f"{what}: `cdc checkpoint skip --position {position}` exit {skip.returncode}: "
                f"{(skip.stdout + skip.stderr)[-300:]}"
            )
        command = p.background(
            "cdc", "bootstrap", f"{p.source_db}.sessions", "--source", SOURCE, "--timeout", "300"
        )
        for name in p.names("r"):
            p.restart(name)
        if skip.returncode == 0 and self._finish(command, f"{what}: bootstrap of sessions"):
            self._skipped.extend(changes)
            self.report.operator_fixes += 1
        elif command.poll() is None:
            command.kill()
            command.communicate()
        return Recovery(
            fault, f"{what}: {reader} stopped at {position}", self._recovered(started, version)
        )

    def _evolving_caught_up(self) -> bool:
        p = self.pipeline
        committed = self.sql(
            p.source_db,
            "SELECT COUNT(DISTINCT id, version, kind) FROM changes WHERE tbl='evolving'",
        )[0][0]
        applied = self.sink_sql(
            "SELECT COUNT(DISTINCT id, version, kind) FROM effects WHERE tbl='evolving'"
        )[0][0]
        return int(applied) >= int(committed)

    def _ddl_step(self, fault: Fault, started: float) -> Recovery:
        """The next DDL of the cycle add -> rename -> modify to JSON, on source and sink
        while the load is paused and the sink has applied every earlier change."""
        p = self.pipeline
        main = self._loads[0]
        step = self._ddl_steps
        self._ddl_steps += 1
        cycle, stage = divmod(step, 3)
        note, memo = f"note{cycle}", f"memo{cycle}"
        before: list[str] = []
        if stage == 0:
            ddl = f"ALTER TABLE evolving ADD COLUMN `{note}` VARCHAR(64) NULL"
            columns = [*main.extra_columns, (note, False)]
        elif stage == 1:
            ddl = f"ALTER TABLE evolving RENAME COLUMN `{note}` TO `{memo}`"
            columns = [(memo if n == note else n, j) for n, j in main.extra_columns]
        else:
            before = [
                f"UPDATE evolving SET version=version+1, `{memo}`=JSON_OBJECT('was', `{memo}`) "
                f"WHERE `{memo}` IS NOT NULL AND NOT JSON_VALID(`{memo}`)"
            ]
            ddl = f"ALTER TABLE evolving MODIFY `{memo}` JSON NULL"
            columns = [(n, j or n == memo) for n, j in main.extra_columns]
        with main.gate:
            for statement in before:
                self.sql(p.source_db, statement)
            # As long as a drain may take: after a failover the sink can be minutes
            # behind, and the sink's DDL needs the source's rows (MODIFY to JSON needs
            # the UPDATE above applied first). Not `_wait`: a process that an earlier
            # fault stopped may still be on its way back, which is no failure here.
            caught_up = time.monotonic() + self.config.drain_timeout_s
            while not self._evolving_caught_up():
                if time.monotonic() > caught_up:
                    self.report.findings.append(
                        f"DDL step {ddl!r} not run: the sink did not apply evolving within "
                        f"{self.config.drain_timeout_s:.0f}s"
                    )
                    self._ddl_steps -= 1  # the next DDL fault tries this step again
                    return Recovery(fault, ddl, None)
                time.sleep(0.3)
            self.sql(p.source_db, ddl)
            self.sink_sql(ddl)  # what an operator does: the SQL sink skips DDL events
            main.extra_columns = columns
            self._json_columns = {n for n, j in columns if j}
        return Recovery(fault, ddl, self._recovered(started, self._probe()))

    def _leader_moved(self, started: float, leader: Any, candidates: list[str]) -> float | None:
        deadline = started + self.config.recovery_timeout_s
        while time.monotonic() < deadline:
            if leader() in candidates:
                return time.monotonic() - started
            time.sleep(0.1)
        return None

    def _workloads(self) -> list[Workload]:
        cfg = self.config
        p = self.pipeline
        pk = LoadKind.PK_UPDATES in cfg.load_kinds
        oversized = LoadKind.OVERSIZED_ROWS in cfg.load_kinds

        def keep(table: str, ident: int) -> bool:
            return bool(is_poison(table, ident, POISON_TABLE, cfg.poison_modulus))

        loads = [
            Workload(
                connect=lambda: self.stack.mysql_root(p.source_db),
                seed=cfg.seed,
                large_rows=cfg.large_rows,
                large_every_s=cfg.large_every_s,
                pause_s=cfg.pause_s,
                tables=SMALL_TABLES,
                pk_updates=pk,
                oversized_every=cfg.oversized_every if oversized else 0,
                keep_in_place=keep,
                evolving=FaultKind.DDL in cfg.kinds,
            )
        ]
        second = p.second_source
        if second is not None:
            loads.append(
                Workload(
                    connect=lambda: self.connect(second, p.source_db),
                    seed=cfg.seed + 1,
                    large_rows=0,
                    large_every_s=cfg.large_every_s,
                    pause_s=cfg.pause_s,
                    tables=SECOND_SOURCE_TABLES,
                    pk_updates=pk,
                    keep_in_place=keep,
                )
            )
        return loads

    def load_and_faults(self) -> None:
        cfg = self.config
        workloads = self._loads = self._workloads()
        threads = [
            threading.Thread(target=w.run, name=f"chaos-workload-{i}", daemon=True)
            for i, w in enumerate(workloads)
        ]
        start = time.monotonic()
        for thread in threads:
            thread.start()
        try:
            for fault in self.schedule:
                # A run bounded by rounds injects all of them; one bounded by time stops.
                if cfg.rounds is None and time.monotonic() - start > cfg.duration_s:
                    self.say(f"duration over: {fault.describe()} and later faults not injected")
                    break
                wait = start + fault.at_s - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                recovery = self.inject(fault)
                self.report.recoveries.append(recovery)
                if recovery.seconds is None:
                    self.report.findings.append(
                        f"{fault.describe()}: not recovered; the processes' last warnings:\n"
                        + self.pipeline.complaints()
                    )
                took = "not recovered" if recovery.seconds is None else f"{recovery.seconds:.2f}s"
                self.say(f"{fault.describe()} -> {recovery.target}: recovered in {took}")
            rest = start + cfg.duration_s - time.monotonic()
            if rest > 0:
                time.sleep(rest)
        finally:
            for w in workloads:
                w.stop.set()
            for thread in threads:
                thread.join(120)
        main = workloads[0]
        self.report.transactions = sum(w.transactions for w in workloads)
        self.report.large_transactions = main.large_transactions
        self.report.interrupted_transactions = sum(w.failed_transactions for w in workloads)
        self.report.workload_errors = [e for w in workloads for e in w.errors]
        self.report.pk_moves = sum(w.pk_moves for w in workloads)
        self.report.wide_rows = main.wide_rows
        if len(workloads) > 1:
            self.report.second_source_transactions = workloads[1].transactions

    def say(self, line: str) -> None:
        print(f"[chaos +{time.monotonic() - self._began:6.1f}s] {line}", flush=True)

    def _committed(self) -> list[ChangeKey]:
        p = self.pipeline
        changes = self._changes(p.source_db, "changes")
        if p.second_source is not None:
            changes += self._changes(p.source_db, "changes", p.second_source)
        return changes

    def drain(self) -> None:
        """Until the sink applied every change it should (or the drain timeout; the
        verdict then counts what is missing)."""
        poison, oversized = poison_rule(self.config), oversized_rule(self.config)
        skipped = set(self._skipped)
        expected = {
            k for k in self._committed() if not poison(k) and not oversized(k) and k not in skipped
        }

        def caught_up() -> bool:
            count = self.sink_sql(
                "SELECT COUNT(*) FROM (SELECT DISTINCT tbl, id, version, kind FROM effects) AS d"
            )[0][0]
            return int(count) >= len(expected)

        started = time.monotonic()
        try:
            self._wait(
                "the sink to apply every committed change", caught_up, self.config.drain_timeout_s
            )
            self.report.drain_s = time.monotonic() - started
        except AssertionError as exc:
            self.say(f"drain: {exc}")
        time.sleep(2 * self.config.ttl)  # late duplicates, if any, land before we count

    def _changes(self, db: str, table: str, server: str = SOURCE_SERVER) -> list[ChangeKey]:
        rows = self.sql(db, f"SELECT tbl, id, version, kind FROM {table}", server=server)
        return [(str(t), int(i), int(v), str(k)) for t, i, v, k in rows]

    def verify(self) -> None:
        p = self.pipeline
        cfg = self.config
        poison, oversized = poison_rule(cfg), oversized_rule(cfg)
        published_raw = read_topic(self.stack.kafka_bootstrap, p.topic, cfg.num_shards)
        dead_raw = read_topic(self.stack.kafka_bootstrap, p.dlq, 1)
        reader_dead_raw = read_topic(self.stack.kafka_bootstrap, p.reader_dlq, cfg.num_shards)
        published = Published.of(published_raw)
        dead = DeadLetters.of(dead_raw)
        reader_dead = ReaderDeadLetters.of(reader_dead_raw)
        if reader_dead.unreadable:
            self.report.findings.append(
                f"reader dead letters naming no row: {len(reader_dead.unreadable)}, "
                f"first {reader_dead.unreadable[0]}"
            )
        self.report.published_messages = published.messages
        self.report.dead_letters = sum(dead.event_ids.values())
        self.report.verdict = verdict(
            self._committed(),
            [
                (str(t), int(i), int(v), str(k))
                for t, i, v, k in self.sink_sql("SELECT tbl, id, version, kind FROM effects")
            ],
            published,
            dead,
            poison,
            skipped=self._skipped,
            is_oversized=oversized,
            reader_dead=reader_dead,
        )
        tables = [(t, SOURCE_SERVER) for t in DATA_TABLES]
        if p.second_source is not None:
            tables += [(t, p.second_source) for t in SECOND_SOURCE_TABLES]
        for table, server in tables:
            if table == "evolving":
                self.report.tables_equal[table] = self._evolving_equal()
                continue
            columns = "id, version, name, amount, payload" + (", body" if table == "wide" else "")
            select = f"SELECT {columns} FROM {table} ORDER BY id"
            source = [
                r
                for r in self.sql(p.source_db, select, server=server)
                if not poison((table, r[0], 0, "")) and not oversized((table, r[0], 0, ""))
            ]
            self.report.tables_equal[table] = source == self.sink_sql(select)
        self.report.owner_records = len(self.owners.records)
        self.report.overlap = max_overlap(self.owners.records)

    def _evolving_equal(self) -> bool:
        """`evolving` on both sides: the same columns, and the same rows, JSON columns
        compared as parsed documents (the sink writes its own JSON text)."""
        p = self.pipeline
        source = self.sql(p.source_db, "SELECT * FROM evolving ORDER BY id")
        sink = self.sink_sql("SELECT * FROM evolving ORDER BY id")
        shape = (
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA=%s AND TABLE_NAME='evolving' ORDER BY ORDINAL_POSITION"
        )
        names = [r[0] for r in self.sql(None, shape, (p.source_db,))]
        if self.postgres:
            sink_shape = (
                "SELECT column_name FROM information_schema.columns WHERE table_schema = "
                "'public' AND table_name = 'evolving' ORDER BY ordinal_position"
            )
            sink_names = [r[0] for r in self.sink_sql(sink_shape)]
        else:
            sink_names = [
                r[0] for r in self.sql(None, shape, (p.sink_db,), server=self.sink_server)
            ]
        if names != sink_names:
            return False

        def parsed(rows: list[Any]) -> list[list[Any]]:
            return [
                [
                    json.loads(v) if n in self._json_columns and v is not None else v
                    for n, v in zip(names, row, strict=True)
                ]
                for row in rows
            ]

        try:
            return parsed(source) == parsed(sink)
        except json.JSONDecodeError:
            return False

    def run(self) -> Report:
        began = self._began = time.monotonic()
        try:
            self.setup()
            self.say(f"settled; schedule of {len(self.schedule)} faults, seed {self.config.seed}")
            self.load_and_faults()
            self.say("load stopped; draining")
            self.drain()
            self.verify()
        finally:
            self.report.crashed = self.pipeline.dead()
            self.report.elapsed_s = time.monotonic() - began
        return self.report

    def close(self) -> None:
        p = self.pipeline
        try:
            p.close()
        finally:
            # A failed run may have left a service stopped: bring it back regardless.
            for service in ("etcd", "kafka", "mariadb"):
                self.stack.start(service)
            for server in self._optional_servers():
                self.stack.start(server)
            if p.second_source is not None:
                self.sql(None, f"DROP DATABASE IF EXISTS `{p.source_db}`", server=p.second_source)
            p.delete_topics()
            if self.postgres:
                self.postgres_sql(None, f'DROP DATABASE IF EXISTS "{p.sink_db}" WITH (FORCE)')
            else:
                self.sql(None, f"DROP DATABASE IF EXISTS `{p.sink_db}`", server=self.sink_server)
            for server in self._started_services:
                self.stack.stop(server)  # leave the stack as the run found it
