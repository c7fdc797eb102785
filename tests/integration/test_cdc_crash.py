"""P4 under crashes: kill -9 of the reader under load, again and again, and failover
between two readers. Nothing committed is lost; what is published twice is whole
transactions after the stored checkpoint, with the same event ids and bytes."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from cdc.replication.position import MariadbGtidState, parse_mariadb_gtid
from tests.integration.cdc_support import (
    ReaderProcess,
    Record,
    TopicReader,
    binlog_end,
    leader_of,
    reader_env,
    stored_checkpoint,
    wait_for,
)

pytestmark = pytest.mark.integration

SHARDS = 3


class Load:
    """Transactions of inserts (and an update) in a thread; remembers what committed."""

    def __init__(self, stack: Any, database: str, rows_per_txn: int = 0) -> None:
        self.rows_per_txn = rows_per_txn  # 0: 1-3 rows, varying
        self.conn = stack.mysql_root(database)
        with self.conn.cursor() as cur:
            cur.execute("CREATE TABLE load_t (id INT PRIMARY KEY, v INT)")
        self.committed: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        next_id = 0
        with self.conn.cursor() as cur:
            while not self._stop.is_set():
                size = self.rows_per_txn or 1 + next_id % 3
                ids = list(range(next_id, next_id + size))
                next_id += len(ids)
                cur.execute("BEGIN")
                cur.execute("INSERT INTO load_t VALUES " + ",".join(f"({i},0)" for i in ids))
                cur.execute(f"UPDATE load_t SET v = 1 WHERE id = {ids[0]}")
                cur.execute("COMMIT")
                self.committed.update(ids)
                time.sleep(0.002)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.conn.close()


def _seq(event_id: str) -> int:
    return parse_mariadb_gtid(event_id.split("#")[0])[2]


def _start_options(stack: Any, unique: str, db: str) -> dict[str, Any]:
    with stack.mysql_root() as conn:
        start = binlog_end(conn)
    return {
        "num_shards": SHARDS,
        "kafka_topic": f"{unique}_%{{table}}",
        "dead_letter_topic": f"{unique}_dlq",
        "filter": f"exclude: *.*, include: {db}.*",
        "start_position": start,
    }


def _inserted_ids(records: list[Record]) -> set[int]:
    return {r.value["data"]["id"] for r in records if r.value["type"] == "insert"}


def _wait_for_progress(settings: Any, past_seq: int | None, reader: str) -> int:
    """Wait until the stored checkpoint holds a transaction of the load past GTID seq
    `past_seq` (any, if None); returns its seq."""

    def progressed() -> int | None:
        checkpoint = stored_checkpoint(settings, "main")
        if checkpoint is None or not checkpoint.gtid:
            return None
        seq = MariadbGtidState(checkpoint.gtid).seq_of(0)
        return seq if seq is not None and (past_seq is None or seq > past_seq) else None

    return wait_for(
        f"{reader} to checkpoint a transaction past seq {past_seq}", progressed, timeout=90
    )


def _checkpointed_seq(settings: Any) -> int:
    """The GTID seq of the stored checkpoint."""
    checkpoint = stored_checkpoint(settings, "main")
    assert checkpoint is not None and checkpoint.gtid
    seq = MariadbGtidState(checkpoint.gtid).seq_of(0)
    assert seq is not None
    return seq


def _read_committed(
    stack: Any, unique: str, load: Load, running: list[ReaderProcess]
) -> list[Record]:
    """Every record of the load's topic, read until it holds each committed row; then
    the `running` readers are stopped, and each must have been running until then."""
    topic = TopicReader(stack.kafka_bootstrap, f"{unique}_load_t", SHARDS)
    try:
        return topic.read_until(lambda r: load.committed <= _inserted_ids(r), timeout=90)
    finally:
        for reader in running:
            assert reader.terminate() == 0, f"{reader.name}: {reader.stderr()}"
        topic.close()


def test_kill_9_under_load_loses_nothing(
    stack: Any, settings: Any, unique: str, mysql_db: str, tmp_path: Path
) -> None:
    load = Load(stack, mysql_db)
    env = reader_env(stack, unique, "main", **_start_options(stack, unique, mysql_db))
    reader = ReaderProcess(env, tmp_path, "r0")
    wait_for("initial checkpoint", lambda: stored_checkpoint(settings, "main"))
    load.start()
    kills: list[tuple[int, int | None]] = []  # (kill time ms, checkpoint gtid seq)
    try:
        for round_no in range(1, 4):
            # Each reader is killed once it has checkpointed a transaction of the load
            # (past the previous reader's checkpoint), whatever the machine's speed.
            _wait_for_progress(settings, kills[-1][1] if kills else None, f"r{round_no - 1}")
            reader.kill9()
            kills.append((int(time.time() * 1000), _checkpointed_seq(settings)))
            reader = ReaderProcess(env, tmp_path, f"r{round_no}")
        _wait_for_progress(settings, kills[-1][1], "r3")
    finally:
        load.stop()
    records = _read_committed(stack, unique, load, [reader])

    # Zero lost: every committed row is in Kafka.
    assert load.committed <= _inserted_ids(records)

    copies: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        copies[r.value["event_id"]].append(r)
    # A duplicate is the same message: same event id, same bytes.
    for same in copies.values():
        assert len({r.raw for r in same}) == 1
    # Our transactions, by GTID seq, and the event ids each one has.
    txn_events: dict[int, set[str]] = defaultdict(set)
    for event_id in copies:
        txn_events[_seq(event_id)].add(event_id)
    replayed_total = 0
    for index, (kill_ms, checkpoint_seq) in enumerate(kills):
        assert checkpoint_seq is not None
        until_ms = kills[index + 1][0] if index + 1 < len(kills) else 2**62
        earlier = {
            eid for eid, same in copies.items() if min(r.timestamp_ms for r in same) < kill_ms
        }
        after = {
            eid
            for eid, same in copies.items()
            if any(kill_ms <= r.timestamp_ms < until_ms for r in same)
        }
        replayed = earlier & after
        replayed_total += len(replayed)
        seqs = {_seq(e) for e in replayed}
        # Only transactions after the stored checkpoint are published again ...
        assert all(s > checkpoint_seq for s in seqs)
        if seqs:
            # ... and the restarted reader publishes every transaction from the
            # checkpoint on, each in full (whether it had been delivered or not).
            for s in txn_events:
                if checkpoint_seq < s <= max(seqs):
                    assert txn_events[s] <= after, f"transaction {s} not republished in full"
    assert replayed_total < len(records)


def test_failover_between_two_readers(
    stack: Any, settings: Any, unique: str, mysql_db: str, tmp_path: Path
) -> None:
    load = Load(stack, mysql_db)
    env = reader_env(stack, unique, "main", **_start_options(stack, unique, mysql_db))
    readers = {name: ReaderProcess(env, tmp_path, name) for name in ("ra", "rb")}
    try:
        first = wait_for("a leader", lambda: leader_of(settings, "main"))
        wait_for("initial checkpoint", lambda: stored_checkpoint(settings, "main"))
        load.start()
        _wait_for_progress(settings, None, first)
        readers[first].kill9()
        # What the killed reader stored last: progress past it is the standby's.
        killed_at = _checkpointed_seq(settings)
        second = wait_for(
            "the standby to lead",
            lambda: (who := leader_of(settings, "main")) not in (None, first) and who,
        )
        assert readers[second].proc.poll() is None
        _wait_for_progress(settings, killed_at, second)
    finally:
        load.stop()
    records = _read_committed(stack, unique, load, [readers[second]])
    assert load.committed <= _inserted_ids(records)
    # The standby published after the failover, under its own leadership.
    assert "leads source main" in readers[second].stderr()
