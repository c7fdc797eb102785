"""Two sources into one topic, and a source whose position goes backwards: real
readers on real MariaDB servers, real Kafka, the SQL sink on real MariaDB."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shardctl.core.hashing import shard_of
from tests.e2e.test_pipeline_sql_sink import NUM_SHARDS, Pipeline
from tests.e2e.test_pipeline_sql_sink import TABLE as PIPELINE_TABLE
from tests.integration.cdc_support import (
    SHARDCTL,
    PrivateMariaDB,
    ReaderProcess,
    TopicReader,
    binlog_end,
    private_mariadb,
    reader_env,
    stored_checkpoint,
    wait_for,
)
from tests.integration.workers_support import create_topic, maxwell
from workers.events import Batch, Event, decode_message
from workers.handlers import HandlerContext, ShardHalted
from workers.sinks.sql import SqlSink

pytestmark = pytest.mark.integration

TABLE = "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(50))"


def _execute(conn: Any, *statements: str) -> None:
    with conn.cursor() as cur:
        for sql in statements:
            cur.execute(sql)


def _one_transaction(conn: Any, db: str, ids: range, name: str) -> None:
    values = ",".join(f"({i}, '{name}{i}')" for i in ids)
    _execute(conn, "BEGIN", f"INSERT INTO `{db}`.items VALUES {values}", "COMMIT")


@pytest.fixture
def private(tmp_path: Path) -> Iterator[PrivateMariaDB]:
    workdir = tmp_path / "private"
    workdir.mkdir()
    with private_mariadb(workdir) as server:
        yield server


@pytest.fixture
def sink_db(stack: Any, unique: str) -> Iterator[str]:
    name = f"{unique}_sink"
    with stack.mysql_root() as conn:
        _execute(
            conn,
            f"CREATE DATABASE `{name}`",
            f"CREATE TABLE `{name}`.items (id INT PRIMARY KEY, name VARCHAR(50))",
        )
    yield name
    with stack.mysql_root() as conn:
        _execute(conn, f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture
def sink(stack: Any, sink_db: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[SqlSink]:
    monkeypatch.setenv("SHARDCTL_SINK_SQL_HOST", stack.mysql_host)
    monkeypatch.setenv("SHARDCTL_SINK_SQL_PORT", str(stack.mysql_port))
    monkeypatch.setenv("SHARDCTL_SINK_SQL_USER", "root")
    monkeypatch.delenv("SHARDCTL_SINK_SQL_PASSWORD", raising=False)
    made = SqlSink(HandlerContext(options={"database": sink_db, "scope": "identity"}))
    made.on_assign(0, 1)
    yield made
    made.on_close()


def _reader(
    stack: Any,
    tmp_path: Path,
    unique: str,
    source: str,
    db: str,
    private: PrivateMariaDB | None = None,
) -> ReaderProcess:
    """A reader of `db` on the shared server, or on `private`, into one topic."""
    with stack.mysql_root() if private is None else private.root() as conn:
        start = binlog_end(conn)
    env = reader_env(
        stack,
        unique,
        source,
        num_shards=1,
        kafka_topic=f"{unique}_events",
        dead_letter_topic=f"{unique}_dlq",
        filter=f"exclude: *.*, include: {db}.*",
        start_position=start,
    )
    if private is not None:
        env.update(private.env())
    return ReaderProcess(env, tmp_path, f"reader-{source}")


def _events(records: list[Any], topic: str) -> tuple[Event, ...]:
    return tuple(
        Event(
            shard=0,
            topic=topic,
            position=r.offset,
            key=r.key,
            raw=r.raw,
            message=decode_message(r.raw, 0, topic, r.offset),
            token=1,
        )
        for r in records
    )


def _rows(stack: Any, db: str) -> list[tuple[Any, ...]]:
    with stack.mysql_root(db) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, name FROM items ORDER BY id")
        return list(cur.fetchall())


def test_two_sources_into_one_topic_are_both_applied(
    stack: Any,
    unique: str,
    mysql_db: str,
    private: PrivateMariaDB,
    sink: SqlSink,
    sink_db: str,
    tmp_path: Path,
) -> None:
    """The shared server and a second server both number their transactions in GTID
    domain 0; the sink keeps them apart by source identity and applies both."""
    with stack.mysql_root(mysql_db) as conn:
        _execute(conn, TABLE)
    with private.root() as conn:
        _execute(conn, f"CREATE DATABASE `{mysql_db}`", f"USE `{mysql_db}`", TABLE)
    first = _reader(stack, tmp_path, unique, "first", mysql_db)
    second = _reader(stack, tmp_path, unique, "second", mysql_db, private)
    topic = TopicReader(stack.kafka_bootstrap, f"{unique}_events", 1)
    try:
        with stack.mysql_root() as conn:
            # Enough transactions that the shared server's sequence passes the second's.
            for i in range(10):
                _one_transaction(conn, mysql_db, range(i * 5, i * 5 + 5), "first")
        topic.read_until(lambda r: len(r) >= 50)
        with private.root() as conn:
            _one_transaction(conn, mysql_db, range(1000, 1050), "second")
        records = topic.read_until(lambda r: len(r) >= 100)
    finally:
        topic.close()
        assert first.terminate() == 0, first.stderr()
        assert second.terminate() == 0, second.stderr()

    assert len(records) == 100
    sources = {r.value["source"] for r in records}
    assert len(sources) == 2 and {s.split("/")[0] for s in sources} == {"first", "second"}
    ids = {r.value["event_id"].split("#")[0].split("-")[0] for r in records}
    assert ids == {"0"}, "both servers number their transactions in GTID domain 0"

    events = _events(records, f"{unique}_events")
    sink.on_events(Batch.of(0, 1, events[:60]))
    sink.on_events(Batch.of(0, 1, events[60:]))
    rows = _rows(stack, sink_db)
    assert rows == [(i, f"first{i}") for i in range(50)] + [
        (i, f"second{i}") for i in range(1000, 1050)
    ]


def test_a_source_position_that_goes_backwards_stops_the_shard(
    stack: Any,
    unique: str,
    private: PrivateMariaDB,
    sink: SqlSink,
    sink_db: str,
    tmp_path: Path,
) -> None:
    """RESET MASTER on the source, then the reader moved to the server's new position:
    the sequence starts again below what the sink applied. The sink stops the shard
    with the error and the recovery command, and applies the new rows once the
    operator has run it."""
    db = f"{unique}_src"
    with private.root() as conn:
        _execute(conn, f"CREATE DATABASE `{db}`", f"USE `{db}`", TABLE)
    topic_name = f"{unique}_events"
    topic = TopicReader(stack.kafka_bootstrap, topic_name, 1)
    reader = _reader(stack, tmp_path, unique, "restored", db, private)
    try:
        with private.root() as conn:
            for i in range(5):
                _one_transaction(conn, db, range(i * 2, i * 2 + 2), "before")
        before = list(topic.read_until(lambda r: len(r) >= 10))
    finally:
        assert reader.terminate() == 0, reader.stderr()
    sink.on_events(Batch.of(0, 1, _events(before, topic_name)))
    assert len(_rows(stack, sink_db)) == 10

    # The source is reset; the operator moves the reader to the server's new position.
    with private.root() as conn:
        _execute(conn, "RESET MASTER")
    env = reader_env(stack, unique, "restored")
    env.update(private.env())
    moved = subprocess.run(
        [SHARDCTL, "cdc", "checkpoint", "reset", "--to", "current"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert moved.returncode == 0, moved.stderr
    reader = _reader(stack, tmp_path, unique, "restored", db, private)
    try:
        with private.root() as conn:
            _one_transaction(conn, db, range(100, 103), "after")
        records = topic.read_until(lambda r: len(r) >= 13)
    finally:
        topic.close()
        assert reader.terminate() == 0, reader.stderr()
    after = _events(records[10:], topic_name)
    assert [e.event_id for e in after] == ["0-7-1#0", "0-7-1#1", "0-7-1#2"]

    with pytest.raises(ShardHalted) as halted:
        sink.on_events(Batch.of(0, 1, after))
    message = str(halted.value)
    stream = "restored/7|gtid:0"
    last_seq = before[-1].value["event_id"].split("#")[0].split("-")[2]
    for part in (
        "shard 0",
        f"topic {topic_name}",
        f"stream {stream}",
        "went backwards",
        f"stored seq {last_seq} row 1",
        "new seq 1 row 0",
        f"shardctl worker forget-stream --handler-option scope=identity --handler-option "
        f"database={sink_db} --shard 0 --topic {topic_name} --stream '{stream}'",
    ):
        assert part in message, f"{part!r} not in {message!r}"
    assert len(_rows(stack, sink_db)) == 10, "nothing of the halted batch is applied"
    assert sink.resume_positions(0) == {topic_name: 10}

    forget = subprocess.run(
        [
            SHARDCTL,
            "worker",
            "forget-stream",
            "--handler-option",
            "scope=identity",
            "--handler-option",
            f"database={sink_db}",
            "--shard",
            "0",
            "--topic",
            topic_name,
            "--stream",
            stream,
            "--yes",
        ],
        env={**reader_env(stack, unique, "restored"), **_sink_env(stack)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert forget.returncode == 0, forget.stderr
    assert "forgot" in forget.stdout
    sink.on_events(Batch.of(0, 1, after))
    rows = _rows(stack, sink_db)
    assert rows[-3:] == [(100, "after100"), (101, "after101"), (102, "after102")]
    assert len(rows) == 13


def _sink_env(stack: Any) -> dict[str, str]:
    return {
        "SHARDCTL_SINK_SQL_HOST": stack.mysql_host,
        "SHARDCTL_SINK_SQL_PORT": str(stack.mysql_port),
        "SHARDCTL_SINK_SQL_USER": "root",
    }


def test_a_real_replay_is_skipped_not_halted(
    stack: Any, unique: str, mysql_db: str, sink: SqlSink, sink_db: str, tmp_path: Path
) -> None:
    """The reader is moved back to a position it already published from: the same
    transactions come again (same ids, same fingerprints). The sink skips them."""
    with stack.mysql_root(mysql_db) as conn:
        _execute(conn, TABLE)
        start = binlog_end(conn)
    topic_name = f"{unique}_events"
    topic = TopicReader(stack.kafka_bootstrap, topic_name, 1)
    reader = _reader(stack, tmp_path, unique, "replayed", mysql_db)
    try:
        with stack.mysql_root() as conn:
            for i in range(6):
                _one_transaction(conn, mysql_db, range(i * 3, i * 3 + 3), "v")
        first = list(topic.read_until(lambda r: len(r) >= 18))
    finally:
        assert reader.terminate() == 0, reader.stderr()
    sink.on_events(Batch.of(0, 1, _events(first, topic_name)))
    # Mark the sink's rows: a replay applied a second time would overwrite the marks.
    with stack.mysql_root(sink_db) as conn:
        _execute(conn, "UPDATE items SET name = CONCAT('marked', id)")

    env = reader_env(stack, unique, "replayed")
    moved = subprocess.run(
        [SHARDCTL, "cdc", "checkpoint", "reset", "--to", start],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert moved.returncode == 0, moved.stderr
    reader = _reader(stack, tmp_path, unique, "replayed", mysql_db)
    try:
        with stack.mysql_root() as conn:
            _one_transaction(conn, mysql_db, range(100, 102), "new")
        records = list(topic.read_until(lambda r: len(r) >= 38))
    finally:
        topic.close()
        assert reader.terminate() == 0, reader.stderr()
    again = records[18:]
    assert [r.raw for r in again[:18]] == [r.raw for r in first], "the same messages again"

    sink.on_events(Batch.of(0, 1, _events(again, topic_name)))
    rows = _rows(stack, sink_db)
    assert rows == [(i, f"marked{i}") for i in range(18)] + [(100, "new100"), (101, "new101")]


def test_a_worker_stops_the_shard_and_resumes_after_forget_stream(
    stack: Any, settings: Any, mysql_db: str, private: PrivateMariaDB, tmp_path: Path
) -> None:
    """The whole pipeline: the reader on a private server, a worker with the SQL sink.
    After RESET MASTER and the reader's move to the new position, the shard that gets
    the backward change stops with the error instead of skipping it; after
    `shardctl worker forget-stream` it applies the change."""
    unique = mysql_db  # the source database on the private server has the same name
    p = Pipeline(stack, settings, unique, tmp_path)
    p.env.update(private.env())  # the reader's source; the sink stays on the shared server
    with private.root() as conn:
        _execute(conn, f"CREATE DATABASE `{unique}`", f"USE `{unique}`", PIPELINE_TABLE)
    p.sql(unique, f"CREATE DATABASE `{p.sink_db}`")
    p.sql(p.sink_db, PIPELINE_TABLE)
    create_topic(stack.kafka_bootstrap, p.topic, NUM_SHARDS)
    try:
        assert p.shardctl("shards", "set", str(NUM_SHARDS)).returncode == 0
        p.start_cdc()
        p.start_coordinator()
        p.start_worker("w1")
        wait_for("the reader live", lambda: stored_checkpoint(settings, "src"), timeout=60)
        with private.root() as conn:
            for i in range(1, 9):
                _execute(conn, f"INSERT INTO `{unique}`.items VALUES ({i}, 'before', 1, NULL)")
        select = "SELECT id, name FROM items ORDER BY id"
        wait_for("the rows in the sink", lambda: len(p.sql(p.sink_db, select)) == 8, 120)

        reader = p.procs.pop("cdc")
        reader.terminate()
        assert reader.wait(30) == 0, p.log("cdc")
        with private.root() as conn:
            _execute(conn, "RESET MASTER")
        assert p.shardctl("cdc", "checkpoint", "reset", "--to", "current").returncode == 0
        p.start_cdc()
        with private.root() as conn:
            _execute(conn, f"UPDATE `{unique}`.items SET name = 'after' WHERE id = 3")
        stream = "src/7|gtid:0"
        key = json.dumps({"database": unique, "table": "items"}, separators=(",", ":"))
        shard = shard_of(f'{key[:-1]},"pk.id":3}}'.encode(), NUM_SHARDS, "jump")
        wait_for(
            "the worker stopping the shard",
            lambda: (
                f"shard {shard} topic {p.topic} stream {stream}: the source position "
                "went backwards" in p.log("w1")
            ),
            timeout=120,
        )
        assert p.sql(p.sink_db, "SELECT name FROM items WHERE id = 3") == [("before",)]
        assert "dead-lettered" not in p.log("w1")

        forget = p.shardctl(
            "worker",
            "forget-stream",
            "--shard",
            str(shard),
            "--topic",
            p.topic,
            "--stream",
            stream,
            "--yes",
        )
        assert forget.returncode == 0, forget.stderr
        wait_for(
            "the change applied after forget-stream",
            lambda: p.sql(p.sink_db, "SELECT name FROM items WHERE id = 3") == [("after",)],
            timeout=120,
        )
        assert len(p.sql(p.sink_db, select)) == 8
    finally:
        p.close()


def test_an_older_applied_table_is_widened_for_source_identities(
    stack: Any, sink_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with stack.mysql_root(sink_db) as conn:
        _execute(
            conn,
            "CREATE TABLE shardctl_applied (scope VARCHAR(190) NOT NULL, shard INT NOT NULL, "
            "topic VARCHAR(249) NOT NULL, stream VARCHAR(100) NOT NULL, last_key VARCHAR(100) "
            "NOT NULL, PRIMARY KEY (scope, shard, topic, stream)) ENGINE=InnoDB",
        )
    for name, value in _sink_env(stack).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SHARDCTL_SINK_SQL_PASSWORD", raising=False)
    sink = SqlSink(HandlerContext(options={"database": sink_db, "scope": "identity"}))
    try:
        sink.on_assign(0, 1)
    finally:
        sink.on_close()
    with stack.mysql_root(sink_db) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT CHARACTER_MAXIMUM_LENGTH FROM information_schema.COLUMNS WHERE "
            "TABLE_SCHEMA = %s AND TABLE_NAME = 'shardctl_applied' AND COLUMN_NAME = 'stream'",
            (sink_db,),
        )
        assert cur.fetchone() == (200,)


def test_the_remembered_transactions_are_pruned_to_the_replay_window(
    stack: Any, sink_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replay inside the window is skipped; one older than the window is not
    silently skipped: it stops the shard, naming replay_window."""
    for name, value in _sink_env(stack).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SHARDCTL_SINK_SQL_PASSWORD", raising=False)
    sink = SqlSink(
        HandlerContext(
            options={
                "database": sink_db,
                "scope": "window",
                "replay_window": "2",
                "prune_every": "1",
            }
        )
    )

    def change(offset: int, seq: int) -> Event:
        doc = json.loads(maxwell(offset, 0, data={"id": seq, "name": f"v{seq}"}, xid=seq))
        doc.update(event_id=f"0-7-{seq}#0", source="main/7")
        raw = json.dumps(doc).encode()
        return Event(0, "t", offset, None, raw, decode_message(raw, 0, "t", offset), 1)

    try:
        sink.on_assign(0, 1)
        for seq in range(1, 6):
            sink.on_events(Batch.of(0, 1, (change(seq, seq),)))
        with stack.mysql_root(sink_db) as conn, conn.cursor() as cur:
            cur.execute("SELECT first_txn FROM shardctl_applied_runs WHERE scope = 'window'")
            assert sorted(int(t) for (t,) in cur.fetchall()) == [4, 5]
        sink.on_events(Batch.of(0, 1, (change(6, 4), change(7, 5))))  # a replay: skipped
        assert len(_rows(stack, sink_db)) == 5
        with pytest.raises(ShardHalted, match="replay_window=2"):
            sink.on_events(Batch.of(0, 1, (change(8, 3),)))
    finally:
        sink.on_close()


def _change(offset: int, seq: int, xid: int | None = None, row: int = 0) -> Event:
    doc = json.loads(
        maxwell(offset, 0, data={"id": seq * 10 + row, "name": f"v{seq}"}, xid=xid or seq)
    )
    doc.update(event_id=f"0-7-{seq}#{row}", source="main/7")
    raw = json.dumps(doc).encode()
    return Event(0, "t", offset, None, raw, decode_message(raw, 0, "t", offset), 1)


def test_a_replay_spanning_several_batches_is_skipped_and_one_batch_is_one_row(
    stack: Any, sink: SqlSink, sink_db: str
) -> None:
    """A batch's transactions are remembered in one row per stream; a replay of the
    transactions of several batches, one split across two of them, is skipped."""
    sink.on_events(Batch.of(0, 1, (_change(1, 1), _change(2, 2), _change(3, 3, row=0))))
    sink.on_events(Batch.of(0, 1, (_change(4, 3, row=1), _change(5, 4))))
    with stack.mysql_root(sink_db) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT first_txn, last_txn, txns FROM shardctl_applied_runs "
            "WHERE scope = 'identity' ORDER BY last_txn"
        )
        runs = [(int(first), int(last), n) for first, last, n in cur.fetchall()]
    assert runs == [(1, 3, 3), (3, 4, 2)]
    with stack.mysql_root(sink_db) as conn:
        _execute(conn, "UPDATE items SET name = CONCAT('marked', id)")
    replay = (_change(6, 2), _change(7, 3, row=0), _change(8, 3, row=1), _change(9, 4))
    sink.on_events(Batch.of(0, 1, (*replay, _change(10, 5))))
    assert _rows(stack, sink_db) == [
        (10, "marked10"), (20, "marked20"), (30, "marked30"), (31, "marked31"), (40, "marked40"),
        (50, "v5"),
    ]  # fmt: skip
    # A different transaction at a remembered position is no replay.
    with pytest.raises(ShardHalted, match="the transaction applied there differs"):
        sink.on_events(Batch.of(0, 1, (_change(11, 2, xid=99),)))


def test_transactions_an_older_release_remembered_one_row_each_still_make_a_replay(
    stack: Any, sink: SqlSink, sink_db: str
) -> None:
    """Releases before shardctl_applied_runs stored one shardctl_applied_txns row per
    transaction: a replay of those transactions after an upgrade is still skipped."""
    sink.on_events(Batch.of(0, 1, (_change(1, 1), _change(2, 2))))
    with stack.mysql_root(sink_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT fingerprints FROM shardctl_applied_runs WHERE scope = 'identity'")
        [(text,)] = cur.fetchall()
        cur.execute("DELETE FROM shardctl_applied_runs WHERE scope = 'identity'")
        for txn, fingerprint in json.loads(text).items():
            cur.execute(
                "INSERT INTO shardctl_applied_txns VALUES ('identity', 0, 't', %s, %s, %s)",
                ("main/7|gtid:0", txn, fingerprint),
            )
        cur.execute("UPDATE items SET name = CONCAT('marked', id)")
        conn.commit()
    sink.on_events(Batch.of(0, 1, (_change(3, 1), _change(4, 2), _change(5, 3))))
    assert _rows(stack, sink_db) == [(10, "marked10"), (20, "marked20"), (30, "v3")]
    with pytest.raises(ShardHalted, match="the transaction applied there differs"):
        sink.on_events(Batch.of(0, 1, (_change(6, 1, xid=99),)))
