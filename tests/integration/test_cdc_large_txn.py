"""Transactions larger than the reader's in-memory bound (set low here): their rows
are spilled to a file and published complete and in order, with the XID on every
row and `commit: true` on the last only; a kill -9 in the middle of publishing one
resumes at its start, with the same event ids, and loses nothing."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from cdc.replication.position import BinlogPosition
from tests.integration.cdc_support import (
    ReaderProcess,
    Record,
    TopicReader,
    binlog_end,
    reader_env,
    stored_checkpoint,
    wait_for,
)
from tests.integration.test_cdc_lag import free_port, kafka_paused, scrape_if

pytestmark = pytest.mark.integration

MEMORY_ROWS = 100
MAX_IN_FLIGHT = 1000


def _env(stack: Any, unique: str, db: str) -> dict[str, str]:
    with stack.mysql_root() as conn:
        start = binlog_end(conn)
    return reader_env(
        stack,
        unique,
        "main",
        num_shards=1,  # one partition: the topic's order is the publish order
        kafka_topic=f"{unique}_%{{table}}",
        dead_letter_topic=f"{unique}_dlq",
        filter=f"exclude: *.*, include: {db}.*",
        start_position=start,
        transaction_memory_rows=MEMORY_ROWS,
        max_in_flight=MAX_IN_FLIGHT,
    )


def _insert_one_transaction(stack: Any, db: str, rows: int) -> tuple[str, BinlogPosition]:
    """Commit `rows` inserts (and one update of the first) as one transaction; its
    GTID and the binlog position it starts at."""
    with stack.mysql_root(db) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE big_t (id INT PRIMARY KEY, v VARCHAR(40))")
        start = BinlogPosition.parse(binlog_end(conn))
        cur.execute("BEGIN")
        for first in range(0, rows, 1000):
            values = ",".join(f"({i},'row {i}')" for i in range(first, min(first + 1000, rows)))
            cur.execute(f"INSERT INTO big_t VALUES {values}")
        cur.execute("UPDATE big_t SET v = 'updated' WHERE id = 0")
        cur.execute("COMMIT")
        cur.execute("SELECT @@last_gtid")
        (gtid,) = cur.fetchone()
    return str(gtid), start


def _check_complete(records: list[Record], gtid: str, rows: int) -> None:
    """The transaction's `rows` + 1 messages, in order, each event id's copies alike."""
    copies: dict[str, set[bytes]] = defaultdict(set)
    for r in records:
        copies[r.value["event_id"]].add(r.raw)
    assert all(len(same) == 1 for same in copies.values()), "a replay changed a message"
    expected = [f"{gtid}#{i}" for i in range(rows + 1)]
    assert sorted(copies) == sorted(expected)
    # The last delivery of the transaction, in topic order, is the whole of it in order.
    last = records[-(rows + 1) :]
    assert [r.value["event_id"] for r in last] == expected
    assert [r.value["data"]["id"] for r in last[:-1]] == list(range(rows))
    assert (last[-1].value["type"], last[-1].value["data"]) == (
        "update",
        {"id": 0, "v": "updated"},
    )
    assert len({r.value["xid"] for r in last}) == 1 and last[0].value["xid"]
    # Maxwell's rules (RowMap.toJSON): `commit:true` on the last row only, and
    # `xoffset` (the row's index) on every row but the last.
    assert [r.value.get("commit") for r in last] == [None] * rows + [True]
    assert [r.value.get("xoffset") for r in last] == [*range(rows), None]


def test_a_transaction_past_the_memory_bound_is_published_complete_and_in_order(
    stack: Any, unique: str, mysql_db: str, settings: Any, tmp_path: Path
) -> None:
    rows = 2_500  # 25 times the bound, and more than one publish chunk
    reader = ReaderProcess(_env(stack, unique, mysql_db), tmp_path, "r0")
    topic = TopicReader(stack.kafka_bootstrap, f"{unique}_big_t", 1)
    try:
        wait_for("initial checkpoint", lambda: stored_checkpoint(settings, "main"))
        gtid, _ = _insert_one_transaction(stack, mysql_db, rows)
        records = topic.read_until(lambda r: len(r) >= rows + 1)
        assert len(records) == rows + 1
        _check_complete(records, gtid, rows)
        assert "spilling its further rows" in reader.stderr()
    finally:
        topic.close()
        assert reader.terminate() == 0, reader.stderr()


def test_kill_9_in_the_middle_of_a_large_transaction_resumes_at_its_start(
    stack: Any, unique: str, mysql_db: str, settings: Any, tmp_path: Path
) -> None:
    rows = 20_000
    env = _env(stack, unique, mysql_db)
    port = free_port()
    reader = ReaderProcess(env, tmp_path, "r0", "--metrics-port", str(port))
    topic = TopicReader(stack.kafka_bootstrap, f"{unique}_big_t", 1)
    try:
        wait_for("initial checkpoint", lambda: stored_checkpoint(settings, "main"))
        with kafka_paused():
            gtid, start = _insert_one_transaction(stack, mysql_db, rows)
            # The reader is in the middle of the transaction: it has sent messages
            # of it (no acknowledgement while the broker is paused) and waits for room.
            wait_for(
                "the reader to block in the middle of the transaction",
                lambda: scrape_if(
                    port, lambda m: m.get("shardctl_cdc_in_flight_messages", 0) >= MAX_IN_FLIGHT
                ),
            )
            reader.kill9()
            stored = stored_checkpoint(settings, "main")
            assert stored is not None
            # Not past the transaction's start: a restart reads it again from there.
            assert stored.position.sort_key() <= start.sort_key()
        reader = ReaderProcess(env, tmp_path, "r1")
        records = topic.read_until(
            lambda r: {x.value["event_id"] for x in r} >= {f"{gtid}#{i}" for i in range(rows + 1)},
            timeout=120,
        )
        _check_complete(records, gtid, rows)
        assert "spilling its further rows" in reader.stderr()
    finally:
        topic.close()
        if reader.proc.poll() is None:
            assert reader.terminate() == 0, reader.stderr()
