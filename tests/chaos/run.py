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
returns once it is). `ChaosConfig.seed` fixes the schedule and the load.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shardctl.config import Settings
from tests.chaos.flaky_sink import is_poison
from tests.chaos.owners_log import OwnersLog, max_overlap, owned_shards
from tests.chaos.pipeline import SOURCE, Pipeline
from tests.chaos.schedule import Fault, FaultKind, make_schedule
from tests.chaos.topics import read_topic
from tests.chaos.verify import ChangeKey, DeadLetters, Published, Verdict, verdict
from tests.chaos.workload import DATA_TABLES, PROBE_ROWS, RETRYABLE, Workload, schema

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
            ]
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
        return "\n".join(lines)


def poison_rule(config: ChaosConfig) -> Any:
    return lambda key: is_poison(key[0], key[1], POISON_TABLE, config.poison_modulus)


class ChaosRun:
    def __init__(
        self, stack: Any, settings: Settings, source_db: str, workdir: Path, config: ChaosConfig
    ) -> None:
        self.stack = stack
        self.config = config
        self.pipeline = Pipeline(
            stack,
            settings,
            source_db,
            workdir,
            num_shards=config.num_shards,
            ttl=config.ttl,
            poison_modulus=config.poison_modulus,
            flaky_modulus=config.flaky_modulus,
        )
        self.owners = OwnersLog(self.pipeline.keys)
        self.schedule = make_schedule(
            config.seed, config.duration_s, gap_s=config.gap_s, rounds=config.rounds
        )
        self.report = Report(seed=config.seed, schedule=self.schedule)
        self._probe_version = 1
        self._began = time.monotonic()
        self._stopped_services: list[str] = []

    # -- SQL --------------------------------------------------------------------------

    def sql(self, db: str, statement: str, args: Any = None, deadline_s: float = 120.0) -> Any:
        """Run one statement, retrying while MariaDB restarts."""
        deadline = time.monotonic() + deadline_s
        while True:
            try:
                conn = self.stack.mysql_root(db)
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

    # -- phases -----------------------------------------------------------------------

    def setup(self) -> None:
        p = self.pipeline
        for statement in schema("changes"):
            self.sql(p.source_db, statement)
        self.sql(p.source_db, f"CREATE DATABASE `{p.sink_db}`")
        for statement in schema("effects"):
            self.sql(p.sink_db, statement)
        p.create_topics()
        done = p.shardctl("shards", "set", str(self.config.num_shards))
        if done.returncode != 0:
            raise RuntimeError(f"shardctl shards set: {done.stderr}")
        p.etcd.submit(self.owners.run(p.client))
        for name in ("r1", "r2"):
            p.start_reader(name)
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
        checkpoint = p.leader(p.keys.cdc_checkpoint(SOURCE))
        return (
            p.cdc_leader() is not None
            and checkpoint is not None
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
        rows = self.sql(self.pipeline.sink_db, "SELECT COUNT(*), MIN(version) FROM probe")
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
            target = p.cdc_leader() or "none"
            if target in p.procs:
                p.kill9(target)
            seconds = self._recovered(started, self._probe())
            if target in p.procs:
                p.restart(target)
            return Recovery(fault, target, seconds)
        service = {
            FaultKind.RESTART_ETCD: "etcd",
            FaultKind.RESTART_KAFKA: "kafka",
            FaultKind.RESTART_MARIADB: "mariadb",
        }[kind]
        self.stack.restart(service)  # returns once the service is healthy again
        return Recovery(fault, service, self._recovered(started, self._probe()))

    def _leader_moved(self, started: float, leader: Any, candidates: list[str]) -> float | None:
        deadline = started + self.config.recovery_timeout_s
        while time.monotonic() < deadline:
            if leader() in candidates:
                return time.monotonic() - started
            time.sleep(0.1)
        return None

    def load_and_faults(self) -> None:
        cfg = self.config
        workload = Workload(
            connect=lambda: self.stack.mysql_root(self.pipeline.source_db),
            seed=cfg.seed,
            large_rows=cfg.large_rows,
            large_every_s=cfg.large_every_s,
            pause_s=cfg.pause_s,
        )
        thread = threading.Thread(target=workload.run, name="chaos-workload", daemon=True)
        start = time.monotonic()
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
                took = "not recovered" if recovery.seconds is None else f"{recovery.seconds:.2f}s"
                self.say(f"{fault.describe()} -> {recovery.target}: recovered in {took}")
            rest = start + cfg.duration_s - time.monotonic()
            if rest > 0:
                time.sleep(rest)
        finally:
            workload.stop.set()
            thread.join(120)
        self.report.transactions = workload.transactions
        self.report.large_transactions = workload.large_transactions
        self.report.interrupted_transactions = workload.failed_transactions
        self.report.workload_errors = workload.errors

    def say(self, line: str) -> None:
        print(f"[chaos +{time.monotonic() - self._began:6.1f}s] {line}", flush=True)

    def drain(self) -> None:
        """Until the sink applied as many non-poison changes as were committed (or the
        drain timeout; the verdict then counts what is missing)."""
        p = self.pipeline
        rule = poison_rule(self.config)
        committed = [k for k in self._changes(p.source_db, "changes") if not rule(k)]

        def caught_up() -> bool:
            count = self.sql(p.sink_db, "SELECT COUNT(*) FROM effects")[0][0]
            return int(count) >= len(committed)

        started = time.monotonic()
        try:
            self._wait(
                "the sink to apply every committed change", caught_up, self.config.drain_timeout_s
            )
            self.report.drain_s = time.monotonic() - started
        except AssertionError as exc:
            self.say(f"drain: {exc}")
        time.sleep(2 * self.config.ttl)  # late duplicates, if any, land before we count

    def _changes(self, db: str, table: str) -> list[ChangeKey]:
        rows = self.sql(db, f"SELECT tbl, id, version, kind FROM {table}")
        return [(str(t), int(i), int(v), str(k)) for t, i, v, k in rows]

    def verify(self) -> None:
        p = self.pipeline
        cfg = self.config
        rule = poison_rule(cfg)
        published_raw = read_topic(self.stack.kafka_bootstrap, p.topic, cfg.num_shards)
        dead_raw = read_topic(self.stack.kafka_bootstrap, p.dlq, 1)
        published = Published.of(published_raw)
        dead = DeadLetters.of(dead_raw)
        self.report.published_messages = published.messages
        self.report.dead_letters = sum(dead.event_ids.values())
        self.report.verdict = verdict(
            self._changes(p.source_db, "changes"),
            self._changes(p.sink_db, "effects"),
            published,
            dead,
            rule,
        )
        for table in DATA_TABLES:
            select = f"SELECT id, version, name, amount, payload FROM {table} ORDER BY id"
            source = [r for r in self.sql(p.source_db, select) if not rule((table, r[0], 0, ""))]
            self.report.tables_equal[table] = source == self.sql(p.sink_db, select)
        self.report.owner_records = len(self.owners.records)
        self.report.overlap = max_overlap(self.owners.records)

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
            p.delete_topics()
            self.sql(p.source_db, f"DROP DATABASE IF EXISTS `{p.sink_db}`")
