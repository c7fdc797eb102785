"""Incremental snapshots against real MariaDB, etcd and Kafka: the end state equals
the source under writes, a kill -9 resumes at the next chunk, pause/resume/cancel,
--where with a composite key, the refusal of a table without a primary key, and
`snapshot_mode = initial`."""

from __future__ import annotations

import json
import random
import subprocess
import threading
import zlib
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from cdc.snapshot.progress import Progress
from shardctl.core.config import Settings
from shardctl.core.hashing import shard_of
from shardctl.core.keyspace import Keyspace
from tests.integration.cdc_support import (
    SHARDCTL,
    ReaderProcess,
    Record,
    TopicReader,
    binlog_end,
    etcd_get,
    leader_of,
    reader_env,
    stored_checkpoint,
    wait_for,
)

pytestmark = pytest.mark.integration

SHARDS = 3


def _execute(conn: Any, *statements: str) -> None:
    with conn.cursor() as cur:
        for sql in statements:
            cur.execute(sql)


def _cli(env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SHARDCTL, "cdc", "bootstrap", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _request_id(done: subprocess.CompletedProcess[str]) -> str:
    first = done.stdout.splitlines()[0]  # "bootstrap <id> of <table> requested ..."
    assert first.startswith("bootstrap "), done.stdout + done.stderr
    return first.split()[1]


def _progress(settings: Settings, request_id: str) -> Progress | None:
    raw = etcd_get(settings, Keyspace.of(settings).cdc_snapshot_prefix("main") + request_id)
    return None if raw is None else Progress.from_json(raw)


def _in_state(settings: Settings, request_id: str, state: str, chunks: int = 0) -> Progress | None:
    """The progress once the snapshot is in `state` with at least `chunks` released."""
    progress = _progress(settings, request_id)
    if progress is None or progress.state.value != state or progress.chunks < chunks:
        return None
    return progress


def _marker_ids(records: list[Record]) -> set[int]:
    return {r.value["data"]["id"] for r in records if r.value["data"].get("id", 0) >= 10_000_000}


def _env(stack: Any, unique: str, mysql_db: str, start: str | None, **cdc: Any) -> dict[str, str]:
    extra: dict[str, Any] = {"start_position": start} if start else {}
    return reader_env(
        stack,
        unique,
        "main",
        num_shards=SHARDS,
        kafka_topic=f"{unique}_%{{table}}",
        dead_letter_topic=f"{unique}_dlq",
        filter=f"exclude: *.*, include: {mysql_db}.*",
        **extra,
        **cdc,
    )


class Churn:
    """Inserts, updates and deletes on some tables, paced, until stopped."""

    def __init__(self, stack: Any, database: str, tables: dict[str, int]) -> None:
        self._stack = stack
        self._database = database
        self._tables = tables  # table -> highest id to touch
        self._stop = threading.Event()
        self.count = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Churn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        rng = random.Random(7)
        conn = self._stack.mysql_root(self._database)
        names = list(self._tables)
        with conn.cursor() as cur:
            while not self._stop.is_set():
                table = names[self.count % len(names)]
                key = rng.randint(1, self._tables[table])
                roll = rng.random()
                if roll < 0.6:
                    cur.execute(f"UPDATE {table} SET v = v + 1 WHERE id = {key}")
                elif roll < 0.8:
                    cur.execute(f"DELETE FROM {table} WHERE id = {key}")
                else:
                    cur.execute(f"REPLACE INTO {table} (id, v) VALUES ({key}, {self.count})")
                self.count += 1
                # Load pacing (a few hundred writes a second), not a wait for a state.
                self._stop.wait(0.003)
        conn.close()


def _markers(cur: Any, database: str, table: str) -> list[int]:
    """Insert one row per shard after everything else: once each is read, so is the rest."""
    found: dict[int, int] = {}
    candidate = 10_000_000
    while len(found) < SHARDS:
        key = json.dumps(
            {"database": database, "table": table, "pk.id": candidate}, separators=(",", ":")
        ).encode()
        found.setdefault(shard_of(key, SHARDS), candidate)
        candidate += 1
    cur.execute(
        f"INSERT INTO {table} (id, v) VALUES " + ",".join(f"({i}, 0)" for i in found.values())
    )
    return list(found.values())


def _read_table(stack: Any, unique: str, database: str, table: str) -> list[Record]:
    """Every record of the table's topic, up to its markers (inserted now)."""
    with stack.mysql_root(database) as conn, conn.cursor() as cur:
        markers = set(_markers(cur, database, table))
    topic = TopicReader(stack.kafka_bootstrap, f"{unique}_{table}", SHARDS)
    try:
        return topic.read_until(
            lambda r: markers <= {x.value["data"].get("id") for x in r}, timeout=90
        )
    finally:
        topic.close()


def _applied(records: list[Record], drop: set[int] | None = None) -> dict[int, int]:
    """The state of a consumer that applies each shard in order."""
    state: dict[int, int] = {}
    for partition in range(SHARDS):
        ordered = sorted((r for r in records if r.partition == partition), key=lambda r: r.offset)
        for r in ordered:
            doc = r.value
            if doc["type"] in ("insert", "update", "bootstrap-insert"):
                state[doc["data"]["id"]] = doc["data"]["v"]
            elif doc["type"] == "delete":
                state.pop(doc["data"]["id"], None)
    for key in drop or set():
        state.pop(key, None)
    return state


def _truth(stack: Any, database: str, table: str) -> dict[int, int]:
    with stack.mysql_root(database) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT id, v FROM {table} WHERE id < 10000000")
        return {int(i): int(v) for i, v in cur.fetchall()}


def _checksum(state: dict[int, int]) -> int:
    return zlib.crc32(json.dumps(sorted(state.items())).encode())


def _fill(conn: Any, table: str, rows: int) -> None:
    _execute(
        conn,
        f"CREATE TABLE {table} (id INT PRIMARY KEY, v INT NOT NULL)",
        f"INSERT INTO {table} SELECT seq, seq % 97 FROM seq_1_to_{rows}",
    )


def _start_reader(
    stack: Any, settings: Settings, unique: str, mysql_db: str, tmp_path: Path, **cdc: Any
) -> tuple[dict[str, str], ReaderProcess]:
    with stack.mysql_root() as root:
        start = binlog_end(root)  # the rows above exist only in the snapshot
    env = _env(stack, unique, mysql_db, start, **cdc)
    reader = ReaderProcess(env, tmp_path, "reader-a")
    wait_for("initial checkpoint", lambda: stored_checkpoint(settings, "main"))
    return env, reader


# The snapshot's thread works beside either read stage: decoding in the reader's own
# process, or in a second process (cdc.pipeline).
@pytest.mark.parametrize("pipeline", ["one-process", "two-process"])
def test_snapshot_under_writes_ends_equal_to_the_source(
    stack: Any, settings: Settings, unique: str, mysql_db: str, tmp_path: Path, pipeline: str
) -> None:
    conn = stack.mysql_root(mysql_db)
    _fill(conn, "big", 100_000)
    _fill(conn, "other", 500)
    env, reader = _start_reader(
        stack, settings, unique, mysql_db, tmp_path, snapshot_chunk_size=1000, pipeline=pipeline
    )
    try:
        with Churn(stack, mysql_db, {"big": 110_000, "other": 600}) as churn:
            done = _cli(env, f"{mysql_db}.big", "--timeout", "200")
            assert done.returncode == 0, done.stderr + reader.stderr()
        assert churn.count > 0
        big = _read_table(stack, unique, mysql_db, "big")
        other = _read_table(stack, unique, mysql_db, "other")
    finally:
        assert reader.terminate() == 0, reader.stderr()

    progress = _progress(settings, _request_id(done))
    assert progress is not None and progress.state.value == "done"
    assert progress.chunks >= 100_000 // 1000 - 1
    truth = _truth(stack, mysql_db, "big")
    applied = _applied(big, _marker_ids(big))
    assert _checksum(applied) == _checksum(truth)
    assert applied == truth
    for partition in range(SHARDS):
        kinds = [
            r.value["type"]
            for r in sorted(big, key=lambda r: r.offset)
            if r.partition == partition and r.value["type"].startswith("bootstrap")
        ]
        assert kinds[0] == "bootstrap-start" and kinds[-1] == "bootstrap-complete"
        assert kinds.count("bootstrap-start") == kinds.count("bootstrap-complete") == 1
    # The other table streamed throughout: its changes all arrived (it was never
    # snapshotted, so the consumer holds exactly the changes streamed).
    other_changes = [r for r in other if r.value["type"] in ("insert", "update", "delete")]
    assert other_changes
    assert not [r for r in other if r.value["type"].startswith("bootstrap")]


def test_kill9_mid_snapshot_resumes_at_the_next_chunk(
    stack: Any, settings: Settings, unique: str, mysql_db: str, tmp_path: Path
) -> None:
    conn = stack.mysql_root(mysql_db)
    _fill(conn, "big", 6000)
    chunk = 200
    env, first = _start_reader(
        stack, settings, unique, mysql_db, tmp_path, snapshot_chunk_size=chunk
    )
    second = ReaderProcess(env, tmp_path, "reader-b")
    try:
        assert leader_of(settings, "main") == "reader-a"
        with Churn(stack, mysql_db, {"big": 6500}):
            started = _cli(env, f"{mysql_db}.big", "--no-wait", "--rows-per-s", "2000")
            assert started.returncode == 0, started.stderr
            request = _request_id(started)
            wait_for(
                "three chunks published",
                lambda: _in_state(settings, request, "running", chunks=3),
                timeout=60,
            )
            first.kill9()
            wait_for(
                "the standby finishes the snapshot",
                lambda: _in_state(settings, request, "done"),
                timeout=120,
            )
        assert leader_of(settings, "main") == "reader-b"
        records = _read_table(stack, unique, mysql_db, "big")
    finally:
        first.kill9()
        assert second.terminate() == 0, second.stderr()

    assert _applied(records, _marker_ids(records)) == _truth(stack, mysql_db, "big")
    inserts = Counter(
        int(r.value["event_id"].rpartition("#")[2])
        for r in records
        if r.value["type"] == "bootstrap-insert"
    )
    twice = sorted(n for n, count in inserts.items() if count > 1)
    # Only the chunk in flight at the kill is published again: its rows are
    # numbered within one chunk.
    assert not twice or twice[-1] - twice[0] < chunk, twice
    assert sum(r.value["type"] == "bootstrap-start" for r in records) == SHARDS


def test_where_composite_key_and_a_table_without_primary_key(
    stack: Any, settings: Settings, unique: str, mysql_db: str, tmp_path: Path
) -> None:
    conn = stack.mysql_root(mysql_db)
    _execute(
        conn,
        "CREATE TABLE comp (region VARCHAR(8), id INT, v INT, PRIMARY KEY (region, id))",
        "INSERT INTO comp SELECT ELT(1 + seq % 3, 'eu', 'us', 'ap'), seq, seq FROM seq_1_to_300",
        "CREATE TABLE nopk (id INT, v INT)",
        "INSERT INTO nopk VALUES (1, 1)",
    )
    env, reader = _start_reader(stack, settings, unique, mysql_db, tmp_path, snapshot_chunk_size=7)
    try:
        refused = _cli(env, f"{mysql_db}.nopk", "--timeout", "60")
        assert refused.returncode == 1
        assert f"{mysql_db}.nopk" in refused.stderr and "--blocking" in refused.stderr
        done = _cli(env, f"{mysql_db}.comp", "--where", "region <> 'ap'", "--timeout", "120")
        assert done.returncode == 0, done.stderr + reader.stderr()
        topic = TopicReader(stack.kafka_bootstrap, f"{unique}_comp", SHARDS)
        try:
            records = topic.read_until(
                lambda r: sum(x.value["type"] == "bootstrap-complete" for x in r) == SHARDS
            )
        finally:
            topic.close()
    finally:
        assert reader.terminate() == 0, reader.stderr()
    rows = [
        (r.value["data"]["region"], r.value["data"]["id"], r.value["data"]["v"])
        for r in records
        if r.value["type"] == "bootstrap-insert"
    ]
    with conn.cursor() as cur:
        cur.execute("SELECT region, id, v FROM comp WHERE region <> 'ap'")
        truth = sorted((str(a), int(b), int(c)) for a, b, c in cur.fetchall())
    assert sorted(rows) == truth and len(rows) == len(truth) == 200


def test_pause_resume_and_cancel(
    stack: Any, settings: Settings, unique: str, mysql_db: str, tmp_path: Path
) -> None:
    conn = stack.mysql_root(mysql_db)
    _fill(conn, "slow", 3000)
    env, reader = _start_reader(stack, settings, unique, mysql_db, tmp_path, snapshot_chunk_size=50)
    try:
        started = _cli(env, f"{mysql_db}.slow", "--no-wait", "--rows-per-s", "300")
        request = _request_id(started)
        wait_for("a chunk", lambda: _in_state(settings, request, "running", chunks=1))
        assert _cli(env, "pause", request).returncode == 0
        paused = wait_for("paused", lambda: _in_state(settings, request, "paused"))
        status = json.loads(_cli(env, "status", request).stdout)
        assert status["state"] == "paused" and status["rows_done"] == paused.rows_done
        assert status["rows_estimated"] > 0
        listed = _cli(env, "list").stdout
        assert request in listed and "paused" in listed
        # A request queued behind the paused one, cancelled before it starts.
        queued = _request_id(_cli(env, f"{mysql_db}.slow", "--no-wait"))
        assert _cli(env, "cancel", queued).returncode == 0
        # A column added while paused: the rows read after it carry it.
        _execute(conn, "ALTER TABLE slow ADD COLUMN w INT NOT NULL DEFAULT 5")
        assert _cli(env, "resume", request).returncode == 0
        wait_for("done after resume", lambda: _in_state(settings, request, "done"), timeout=120)

        again = _cli(env, f"{mysql_db}.slow", "--no-wait", "--rows-per-s", "100")
        cancelled_id = _request_id(again)
        wait_for("a chunk", lambda: _in_state(settings, cancelled_id, "running", chunks=1))
        assert _cli(env, "cancel", cancelled_id).returncode == 0
        wait_for("cancelled", lambda: _in_state(settings, cancelled_id, "cancelled"))
        gone = _cli(env, "pause", cancelled_id)
        assert gone.returncode == 1 and "no such pending request" in gone.stderr
        assert _in_state(settings, queued, "cancelled")
        records = _read_table(stack, unique, mysql_db, "slow")
    finally:
        assert reader.terminate() == 0, reader.stderr()
    assert not [r for r in records if r.value.get("event_id", "").startswith(f"bootstrap:{queued}")]
    completes = {r.value["event_id"] for r in records if r.value["type"] == "bootstrap-complete"}
    assert completes == {f"bootstrap:{request}#complete"}
    ids = Counter(r.value["event_id"] for r in records if r.value["type"] == "bootstrap-insert")
    finished = [i for i in ids if i.startswith(f"bootstrap:{request}#")]
    assert len(finished) == 3000 and set(ids.values()) == {1}
    by_number = {
        int(r.value["event_id"].rpartition("#")[2]): r.value["data"]
        for r in records
        if r.value["event_id"].startswith(f"bootstrap:{request}#")
        and r.value["type"] == "bootstrap-insert"
    }
    assert "w" not in by_number[1] and by_number[3000]["w"] == 5


def test_initial_mode_snapshots_every_included_table(
    stack: Any, settings: Settings, unique: str, mysql_db: str, tmp_path: Path
) -> None:
    conn = stack.mysql_root(mysql_db)
    for name, rows in (("t1", 10), ("t2", 1500), ("t3", 1)):
        _fill(conn, name, rows)
    env = _env(stack, unique, mysql_db, None, snapshot_mode="initial", snapshot_chunk_size=400)
    reader = ReaderProcess(env, tmp_path, "reader-a")
    try:
        for name in ("t1", "t2", "t3"):
            request = f"initial-{mysql_db}.{name}"
            wait_for(
                f"initial snapshot of {name}",
                partial(_in_state, settings, request, "done"),
                timeout=120,
            )
        tables = {name: _read_table(stack, unique, mysql_db, name) for name in ("t1", "t2", "t3")}
    finally:
        assert reader.terminate() == 0, reader.stderr()
    for name, records in tables.items():
        markers = _marker_ids(records)
        assert _applied(records, markers) == _truth(stack, mysql_db, name)
