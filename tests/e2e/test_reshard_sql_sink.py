"""Online resharding end to end: MariaDB -> reader -> Kafka -> 3 workers -> SQL sink,
growing from 8 to 12 shards under write load, the reader running throughout.

Every update raises the row's `version`; a trigger on the sink table records any
write that would lower it, so a change applied before an older change of the same
row shows up there. The change of the shard count is requested right after a burst
of updates while one worker is frozen (SIGSTOP): its old shards lag behind the
switch while the keys that move arrive in the new shards, which must wait for them.
At the end the sink equals the source, no version went down, and the reader
process never stopped or campaigned again.
"""

from __future__ import annotations

import asyncio
import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest
from confluent_kafka import Consumer, TopicPartition

from shardctl.core.config import Settings
from shardctl.core.etcd.client import EtcdClient, EtcdUnavailable
from shardctl.core.hashing import shard_of
from shardctl.core.keyspace import Keyspace
from shardctl.core.records import ClusterConfig, Reshard
from tests.conftest import StackHandle
from tests.e2e.test_pipeline_sql_sink import Pipeline
from tests.integration.cdc_support import stored_checkpoint
from tests.polling import wait_for

pytestmark = pytest.mark.e2e

OLD, NEW = 8, 12
WORKER_TTL = 30
ROWS = 240
TABLE = "CREATE TABLE items (id INT PRIMARY KEY, version INT NOT NULL, name VARCHAR(64) NOT NULL)"
SELECT = "SELECT id, version, name FROM items ORDER BY id"


class ReshardPipeline(Pipeline):
    def prepare(self) -> None:
        self.sql(self.source_db, TABLE)
        self.sql(self.source_db, f"CREATE DATABASE `{self.sink_db}`")
        self.sql(self.sink_db, TABLE)
        self.sql(
            self.sink_db,
            "CREATE TABLE regressions (id INT NOT NULL, old_version INT NOT NULL, "
            "new_version INT NOT NULL)",
        )
        self.sql(
            self.sink_db,
            "CREATE TRIGGER version_only_grows BEFORE UPDATE ON items FOR EACH ROW "
            "IF NEW.version < OLD.version THEN "
            "INSERT INTO regressions VALUES (OLD.id, OLD.version, NEW.version); END IF",
        )
        done = self.shardctl("cluster", "init", "--shards", str(OLD), "--topic", self.topic)
        assert done.returncode == 0, done.stderr

    def start_worker(self, name: str) -> None:
        # A lease that outlives the freeze below: the frozen worker keeps its shards.
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
                str(WORKER_TTL),
                "--commit-interval",
                "0.2",
            ],
        )

    def start_cdc(self) -> None:
        # No --num-shards: the reader follows the cluster config through the change.
        self.spawn("cdc", ["-m", "shardctl.cli.main", "cdc", "run", "--reader-id", "r1"])

    def etcd(self, key: str) -> bytes | None:
        async def read() -> bytes | None:
            async with EtcdClient(self.settings.etcd) as client:
                kv = await client.get(key)
                return None if kv is None else kv.value

        return asyncio.run(read())

    def reshard(self) -> Reshard | None:
        key = Keyspace.of(self.settings).reshard
        raw = self.etcd(key)
        return None if raw is None else Reshard.decode(key, raw)

    def config(self) -> ClusterConfig:
        key = Keyspace.of(self.settings).config
        raw = self.etcd(key)
        assert raw is not None
        return ClusterConfig.decode(key, raw)

    def high_watermarks(self) -> list[int]:
        consumer = Consumer({"bootstrap.servers": self.stack.kafka_bootstrap, "group.id": "x"})
        try:
            return [
                consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)[1]
                for p in range(NEW)
            ]
        finally:
            consumer.close()


class Load:
    """Updates random rows (version + 1) in small transactions until stopped."""

    def __init__(self, p: Pipeline, seed: int) -> None:
        self.p = p
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.changes = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            conn = self.p.stack.mysql_root(self.p.source_db)
            try:
                with conn.cursor() as cur:
                    while not self.stop.is_set():
                        rows = sorted(self.rng.sample(range(1, ROWS + 1), self.rng.randint(1, 4)))
                        try:
                            cur.execute("BEGIN")
                            for row in rows:
                                cur.execute(
                                    "UPDATE items SET version = version + 1, name = %s "
                                    "WHERE id = %s",
                                    (f"l{self.changes}", row),
                                )
                            cur.execute("COMMIT")
                        except pymysql.err.OperationalError as exc:
                            # A lock wait or deadlock against the burst: nothing was
                            # committed, so nothing is counted; try the next one.
                            if exc.args[0] not in (1205, 1213):
                                raise
                            cur.execute("ROLLBACK")
                            continue
                        self.changes += len(rows)
                        time.sleep(0.005)
            finally:
                conn.close()
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc


def burst(p: Pipeline, rounds: int) -> None:
    """`rounds` transactions, each raising every row's version once."""
    conn = p.stack.mysql_root(p.source_db)
    try:
        with conn.cursor() as cur:
            for n in range(rounds):
                cur.execute("UPDATE items SET version = version + 1, name = %s", (f"b{n}",))
                cur.execute("COMMIT")
    finally:
        conn.close()


def reader_live(p: Pipeline) -> bool:
    """The reader stored its first checkpoint (an etcd too busy to answer: not yet)."""
    try:
        return stored_checkpoint(p.settings, "src") is not None
    except EtcdUnavailable:
        return False


# Both read stages of the reader (`cdc.pipeline`): each is built again with the new count.
@pytest.fixture(params=["one-process", "two-process"])
def pipeline(
    request: pytest.FixtureRequest,
    stack: StackHandle,
    settings: Settings,
    mysql_db: str,
    tmp_path: Path,
) -> Iterator[ReshardPipeline]:
    p = ReshardPipeline(stack, settings, mysql_db, tmp_path)
    p.env["SHARDCTL_CDC_PIPELINE"] = request.param
    try:
        p.prepare()
        p.start_cdc()
        p.start_coordinator()
        yield p
    finally:
        p.close()


def test_growing_8_to_12_under_load_keeps_every_rows_order(pipeline: ReshardPipeline) -> None:
    p = pipeline
    for name in ("w1", "w2", "w3"):
        p.start_worker(name)
    wait_for("the reader live", lambda: reader_live(p), timeout=60)
    wait_for("8 shards owned", lambda: p.shardctl("status", "--json").stdout.count('"w') >= 3, 60)
    p.sql(
        p.source_db,
        "INSERT INTO items VALUES " + ", ".join(f"({i}, 1, 'n{i}')" for i in range(1, ROWS + 1)),
    )
    wait_for("the rows in the sink", lambda: len(p.sql(p.sink_db, SELECT)) == ROWS, 120)

    load = Load(p, seed=7)
    load.thread.start()
    # w1 frozen (within its lease): its old shards cannot pass the switch, so the
    # gaining shards must wait for them.
    p.procs["w1"].send_signal(signal.SIGSTOP)
    try:
        burst(p, rounds=15)  # 3,600 row changes: a backlog in every old shard
        done = p.shardctl("shards", "set", str(NEW))
        assert done.returncode == 0, done.stderr
        assert "requested" in done.stdout
        record = wait_for(
            "the reader's switch",
            lambda: (r := p.reshard()) is not None and r.state != "requested" and r,
            60,
        )
        assert record.position is not None
        assert len(record.barrier[p.topic]) == NEW
        assert record.barrier[p.topic][OLD:] == [0] * (NEW - OLD)
        at_switch = load.changes
        wait_for(
            "load past the switch",
            lambda: load.error is not None or load.changes >= at_switch + 400,
            120,
        )
        wait_for(
            "a gaining shard held back",
            lambda: "gains keys from the change to 12 shards" in p.log("w2") + p.log("w3"),
            60,
        )
    finally:
        p.procs["w1"].send_signal(signal.SIGCONT)
        load.stop.set()
        load.thread.join(30)
    assert load.error is None, load.error
    assert load.changes > 0

    wait_for("the change to complete", lambda: (r := p.reshard()) and r.state == "complete", 120)
    assert p.config().num_shards == NEW
    source = p.sql(p.source_db, SELECT)
    try:
        wait_for("the sink to equal the source", lambda: p.sql(p.sink_db, SELECT) == source, 180)
    finally:
        # First, as it names the cause: an older change applied after a newer one
        # (with the gate disabled, this is what fails).
        regressions = p.sql(p.sink_db, "SELECT id, old_version, new_version FROM regressions")
        assert regressions == [], f"changes applied out of order: {regressions[:10]}"

    # Keys moved into the new shards, and those shards waited for the old ones.
    marks = p.high_watermarks()
    assert all(marks[s] > 0 for s in range(OLD, NEW)), marks
    key = '{{"database":"{db}","table":"items","pk.id":{id}}}'
    moved = [
        i
        for i in range(1, ROWS + 1)
        if shard_of(key.format(db=p.source_db, id=i).encode(), OLD, "jump")
        != shard_of(key.format(db=p.source_db, id=i).encode(), NEW, "jump")
    ]
    assert moved and all(
        shard_of(key.format(db=p.source_db, id=i).encode(), NEW, "jump") >= OLD for i in moved
    )
    logs = "".join(p.log(name) for name in ("w1", "w2", "w3"))
    assert "every old shard passed the switch" in logs
    # The reader never stopped: same process, no new campaign.
    assert p.procs["cdc"].poll() is None
    reader_log = p.log("cdc")
    assert "switched from 8 to 12 shards" in reader_log
    assert "campaigning again" not in reader_log and "starting over" not in reader_log
