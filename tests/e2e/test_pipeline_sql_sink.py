"""The whole pipeline: MariaDB -> CDC reader -> Kafka -> 3 workers -> SQL sink.

After N random writes the sink table equals the source table (row lists and
CHECKSUM TABLE), and a trigger on the sink table counts every row write, so the
count equals the number of row changes exactly: no duplicate was applied. The chaos
run does the same while a worker is killed (kill -9), another is added, and a third
is frozen (SIGSTOP) past its lease TTL and then resumed as a zombie.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shardctl.core.config import Settings
from shardctl.core.processes import ProcessGroup
from tests.conftest import StackHandle
from tests.integration.cdc_support import stored_checkpoint
from tests.integration.workers_support import create_topic, delete_topics

pytestmark = pytest.mark.e2e

NUM_SHARDS = 6
TTL = 3
TABLE = (
    "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(64) NOT NULL, "
    "amount DECIMAL(12,2) NOT NULL, payload VARBINARY(8) NULL)"
)


class Pipeline:
    handler = "sql"  # the workers' --handler

    def __init__(self, stack: StackHandle, settings: Settings, source_db: str, workdir: Path):
        self.stack = stack
        self.settings = settings
        self.source_db = source_db
        self.sink_db = f"{source_db}_sink"
        self.topic = f"cdc-{source_db}"
        self.workdir = workdir
        self.env = {
            **os.environ,
            **stack.env(),
            "SHARDCTL_CLUSTER": settings.cluster,
            "SHARDCTL_CDC_KAFKA_TOPIC": self.topic,
            "SHARDCTL_CDC_SOURCE": "src",
            # The trigger counts every change: each must be a write of its own, not
            # folded with the batch's other changes of its row.
            "SHARDCTL_SINK_SQL_FOLD_CHANGES": "false",
            "SHARDCTL_SINK_POSTGRES_FOLD_CHANGES": "false",
            # One replica server_id per test: the server evicts duplicates.
            "SHARDCTL_CDC_SERVER_ID": str(
                10_000 + zlib.crc32(settings.cluster.encode()) % 2_000_000_000
            ),
            "SHARDCTL_CDC_FILTER": f"exclude: *.*, include: {source_db}.items",
            "SHARDCTL_CDC_LEASE_TTL_S": str(TTL),
            "SHARDCTL_SINK_SQL_PORT": str(stack.mysql_port),
            "SHARDCTL_SINK_SQL_USER": "root",
            "SHARDCTL_SINK_SQL_DATABASE": self.sink_db,
        }
        self.env.pop("SHARDCTL_SINK_SQL_PASSWORD", None)
        self.processes = ProcessGroup(workdir, self.env)

    @property
    def procs(self) -> dict[str, subprocess.Popen[bytes]]:
        return self.processes.procs

    def sql(self, db: str, statement: str, args: Any = None) -> list[tuple[Any, ...]]:
        conn = self.stack.mysql_root(db)
        try:
            with conn.cursor() as cur:
                cur.execute(statement, args)
                return list(cur.fetchall())
        finally:
            conn.close()

    def prepare(self) -> None:
        self.sql(self.source_db, TABLE)
        self.sql(self.source_db, f"CREATE DATABASE `{self.sink_db}`")
        self.sql(self.sink_db, TABLE)
        self.sql(self.sink_db, "CREATE TABLE effects (n INT NOT NULL)")
        self.sql(self.sink_db, "INSERT INTO effects VALUES (0)")
        for when in ("INSERT", "UPDATE", "DELETE"):
            self.sql(
                self.sink_db,
                f"CREATE TRIGGER count_{when.lower()} AFTER {when} ON items "
                "FOR EACH ROW UPDATE effects SET n = n + 1",
            )
        create_topic(self.stack.kafka_bootstrap, self.topic, NUM_SHARDS)
        done = self.shardctl("shards", "set", str(NUM_SHARDS))
        assert done.returncode == 0, done.stderr

    def shardctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "shardctl.cli.main", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def spawn(self, name: str, args: list[str]) -> None:
        """Start `python <args>` as `name`, with the pipeline's environment as it is now."""
        self.processes.start(name, [sys.executable, *args], env=self.env)

    def start_cdc(self) -> None:
        self.spawn(
            "cdc",
            [
                "-m",
                "shardctl.cli.main",
                "cdc",
                "run",
                "--reader-id",
                "r1",
                "--num-shards",
                str(NUM_SHARDS),
            ],
        )

    def start_coordinator(self) -> None:
        self.spawn(
            "coord",
            [
                "-m",
                "shardctl.cli.main",
                "coordinator",
                "run",
                "--id",
                "c1",
                "--ttl",
                str(TTL),
                "--stabilization",
                "0.3",
            ],
        )

    def start_worker(self, name: str) -> None:
        self.spawn(
            name,
            [
                "-m",
                "shardctl.cli.main",
                "worker",
                "run",
                "--id",
                name,
                "--topic",
                self.topic,
                "--handler",
                self.handler,
                "--ttl",
                str(TTL),
                "--commit-interval",
                "0.2",
            ],
        )

    def log(self, name: str) -> str:
        return self.processes.log(name)

    def close(self) -> None:
        self.processes.stop_all(grace_s=0)
        self.sql(self.source_db, f"DROP DATABASE IF EXISTS `{self.sink_db}`")
        delete_topics(self.stack.kafka_bootstrap, [self.topic, f"{self.topic}.dlq"])


def random_writes(p: Pipeline, count: int, seed: int, between: Any = None) -> int:
    """`count` row changes in transactions of 1-4 statements; returns the changes made.
    `between(i)` runs after the i-th transaction (to kill or freeze workers)."""
    rng = random.Random(seed)
    conn = p.stack.mysql_root(p.source_db)
    live: list[int] = []
    next_id = 1
    made = 0
    txn = 0
    try:
        with conn.cursor() as cur:
            while made < count:
                cur.execute("BEGIN")
                for _ in range(min(rng.randint(1, 4), count - made)):
                    op = rng.random()
                    if not live or op < 0.5:
                        payload = rng.choice([None, bytes(rng.randrange(256) for _ in range(4))])
                        amount = f"{rng.randint(0, 99999)}.{made % 100:02d}"
                        cur.execute(
                            "INSERT INTO items VALUES (%s, %s, %s, %s)",
                            (next_id, f"n{next_id}", amount, payload),
                        )
                        live.append(next_id)
                        next_id += 1
                    elif op < 0.85:
                        cur.execute(
                            "UPDATE items SET name=%s, amount=amount+1 WHERE id=%s",
                            (f"u{made}", rng.choice(live)),
                        )
                    else:
                        victim = live.pop(rng.randrange(len(live)))
                        cur.execute("DELETE FROM items WHERE id=%s", (victim,))
                    made += 1
                cur.execute("COMMIT")
                txn += 1
                if between is not None:
                    between(txn)
                time.sleep(0.01)
    finally:
        conn.close()
    return made


def wait_for_sink(p: Pipeline, changes: int, timeout: float = 120.0) -> None:
    """Until the sink has every row and has applied `changes` writes (liveness bound)."""
    select = "SELECT id, name, amount, payload FROM items ORDER BY id"
    deadline = time.monotonic() + timeout
    source = p.sql(p.source_db, select)
    while time.monotonic() < deadline:
        if p.sql(p.sink_db, select) == source and p.sql(p.sink_db, "SELECT n FROM effects") == [
            (changes,)
        ]:
            return
        time.sleep(0.5)
    sink = p.sql(p.sink_db, select)
    effects = p.sql(p.sink_db, "SELECT n FROM effects")
    raise AssertionError(
        f"sink did not converge: {len(source)} source rows, {len(sink)} sink "
        f"rows, {effects} writes applied for {changes} changes"
    )


def checksums(p: Pipeline) -> tuple[Any, Any]:
    src = p.sql(p.source_db, "CHECKSUM TABLE items")[0][1]
    dst = p.sql(p.sink_db, "CHECKSUM TABLE items")[0][1]
    return src, dst


@pytest.fixture
def pipeline(
    stack: StackHandle, settings: Settings, mysql_db: str, tmp_path: Path
) -> Iterator[Pipeline]:
    p = Pipeline(stack, settings, mysql_db, tmp_path)
    try:
        p.prepare()
        p.start_cdc()
        p.start_coordinator()
        yield p
    finally:
        p.close()


def _settle_in(p: Pipeline) -> None:
    # The reader starts at the current binlog position: wait until it is live.
    deadline = time.monotonic() + 60
    while "cdc" in p.procs and time.monotonic() < deadline:
        assert p.procs["cdc"].poll() is None, p.log("cdc")
        status = p.shardctl("status", "--json")
        # The first stored checkpoint means the reader leads and streams.
        if (
            status.returncode == 0
            and status.stdout.count('"w') >= 3
            and stored_checkpoint(p.settings, "src") is not None
        ):
            return
        time.sleep(0.5)
    raise AssertionError(f"pipeline did not start:\n{p.log('cdc')[-2000:]}")


def test_random_writes_reach_the_sink_exactly_once(pipeline: Pipeline) -> None:
    for name in ("w1", "w2", "w3"):
        pipeline.start_worker(name)
    _settle_in(pipeline)
    changes = random_writes(pipeline, 400, seed=5)
    wait_for_sink(pipeline, changes)
    src, dst = checksums(pipeline)
    assert src == dst
    for name in ("w1", "w2", "w3"):
        assert "dead-lettered" not in pipeline.log(name)


def test_exactly_once_while_workers_are_killed_added_and_frozen(pipeline: Pipeline) -> None:
    for name in ("w1", "w2", "w3"):
        pipeline.start_worker(name)
    _settle_in(pipeline)

    frozen: dict[str, float] = {}

    def chaos(txn: int) -> None:
        if txn == 30:
            pipeline.procs["w2"].kill()  # kill -9
            pipeline.procs["w2"].wait(10)
        elif txn == 50:
            pipeline.start_worker("w4")
        elif txn == 80:
            pipeline.procs["w1"].send_signal(signal.SIGSTOP)
            frozen["at"] = time.monotonic()
        elif "at" in frozen and time.monotonic() - frozen["at"] > TTL + 2:
            # Frozen past its TTL, its shards moved on; resumed, it is a zombie.
            pipeline.procs["w1"].send_signal(signal.SIGCONT)
            frozen.clear()
            frozen["resumed"] = txn

    changes = random_writes(pipeline, 1500, seed=11, between=chaos)
    assert "resumed" in frozen, "the run ended before the frozen worker was resumed"
    wait_for_sink(pipeline, changes)
    src, dst = checksums(pipeline)
    assert src == dst
