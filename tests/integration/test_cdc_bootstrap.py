"""Bootstrap: consistent with the live stream, and values equal to the binlog's."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from shardctl.core.hashing import shard_of
from tests.integration.cdc_support import (
    SHARDCTL,
    ReaderProcess,
    TopicReader,
    binlog_end,
    reader_env,
    stored_checkpoint,
    wait_for,
)

pytestmark = pytest.mark.integration

SHARDS = 3

TYPES_TABLE = """
CREATE TABLE typed (
  id INT UNSIGNED PRIMARY KEY,
  i8 TINYINT, u64 BIGINT UNSIGNED, dec_v DECIMAL(20,6), f FLOAT, d DOUBLE,
  s VARCHAR(40) CHARACTER SET utf8mb4, l1 TEXT CHARACTER SET latin1,
  bin BINARY(4), vb VARBINARY(10), bl BLOB,
  dt DATE, tm TIME(3), dtm DATETIME(6), ts TIMESTAMP(2) NULL, y YEAR,
  b BIT(5), e ENUM('a','b','c'), st SET('x','y','z'), j JSON, n INT NULL
)
"""
TYPES_ROW = (
    "INSERT INTO typed VALUES (1, -5, 18446744073709551615, -12345.678901, 1.5, 2.25,"
    " 'héllo 🐍', 'café', 'ab', 'xyz', x'00ff10', '2024-02-29', '-12:34:56.789',"
    " '2024-01-02 03:04:05.123456', '2024-05-06 07:08:09.12', 2024, b'10101', 'b', 'x,z',"
    ' \'{"k": [1, 2.5, "v", null, true]}\', NULL)'
)


def _execute(conn: Any, *statements: str) -> None:
    with conn.cursor() as cur:
        for sql in statements:
            cur.execute(sql)


def test_bootstrap_is_consistent_with_concurrent_changes(
    stack: Any, settings: Any, unique: str, mysql_db: str, tmp_path: Path
) -> None:
    conn = stack.mysql_root(mysql_db)
    _execute(
        conn,
        "CREATE TABLE acct (id INT PRIMARY KEY, balance INT)",
        "INSERT INTO acct VALUES " + ",".join(f"({i},100)" for i in range(300)),
        TYPES_TABLE,
    )
    with stack.mysql_root() as root:
        start = binlog_end(root)  # rows above exist only in the snapshot, not the stream
    env = reader_env(
        stack,
        unique,
        "main",
        num_shards=SHARDS,
        kafka_topic=f"{unique}_%{{table}}",
        dead_letter_topic=f"{unique}_dlq",
        filter=f"exclude: *.*, include: {mysql_db}.*",
        start_position=start,
    )
    reader = ReaderProcess(env, tmp_path, "reader")
    wait_for("initial checkpoint", lambda: stored_checkpoint(settings, "main"))
    _execute(conn, TYPES_ROW)

    stop = threading.Event()

    def churn() -> None:
        writer = stack.mysql_root(mysql_db)
        n = 0
        with writer.cursor() as cur:
            while not stop.is_set():
                cur.execute(f"UPDATE acct SET balance = balance + 1 WHERE id = {n % 300}")
                if n % 50 == 0:
                    cur.execute(f"DELETE FROM acct WHERE id = {n % 300}")
                    cur.execute(f"INSERT INTO acct VALUES ({1000 + n}, 7)")
                n += 1
        writer.close()

    worker = threading.Thread(target=churn, daemon=True)
    worker.start()
    try:
        for table in ("acct", "typed"):
            done = subprocess.run(
                [SHARDCTL, "cdc", "bootstrap", f"{mysql_db}.{table}", "--timeout", "120"],
                env=env,
                capture_output=True,
                text=True,
                timeout=180,
            )
            assert done.returncode == 0, done.stderr + reader.stderr()
    finally:
        stop.set()
        worker.join(10)
    with conn.cursor() as cur:
        cur.execute("SELECT id, balance FROM acct")
        truth = {int(r[0]): int(r[1]) for r in cur.fetchall()}
        # A marker row after the churn in every shard: once all are read, so is the rest.
        markers: dict[int, int] = {}
        candidate = 100_000
        while len(markers) < SHARDS:
            key = json.dumps(
                {"database": mysql_db, "table": "acct", "pk.id": candidate}, separators=(",", ":")
            ).encode()
            markers.setdefault(shard_of(key, SHARDS), candidate)
            candidate += 1
        cur.execute("INSERT INTO acct VALUES " + ",".join(f"({i}, 1)" for i in markers.values()))
    acct = TopicReader(stack.kafka_bootstrap, f"{unique}_acct", SHARDS)
    typed = TopicReader(stack.kafka_bootstrap, f"{unique}_typed", SHARDS)
    try:
        records = acct.read_until(
            lambda r: set(markers.values()) <= {x.value["data"].get("id") for x in r}, timeout=90
        )
        typed_records = typed.read_until(
            lambda r: sum(x.value["type"] == "bootstrap-complete" for x in r) == SHARDS
        )
    finally:
        assert reader.terminate() == 0, reader.stderr()
        acct.close()
        typed.close()

    # A consumer applying each shard in order ends with the table's true state.
    state: dict[int, int] = {}
    for partition in range(SHARDS):
        ordered = sorted((r for r in records if r.partition == partition), key=lambda r: r.offset)
        kinds = [r.value["type"] for r in ordered if r.value["type"].startswith("bootstrap")]
        assert kinds[0] == "bootstrap-start" and kinds[-1] == "bootstrap-complete"
        assert kinds.count("bootstrap-start") == kinds.count("bootstrap-complete") == 1
        for r in ordered:
            doc = r.value
            if doc["type"] in ("insert", "update", "bootstrap-insert"):
                state[doc["data"]["id"]] = doc["data"]["balance"]
            elif doc["type"] == "delete":
                state.pop(doc["data"]["id"], None)
    for marker in markers.values():
        state.pop(marker)
    assert state == truth

    # Snapshot values have exactly the form the binlog decoder gives the same row.
    inserted = next(r.value for r in typed_records if r.value["type"] == "insert")
    boot = next(r.value for r in typed_records if r.value["type"] == "bootstrap-insert")
    assert boot["data"] == inserted["data"]
    raw_insert = next(r.raw for r in typed_records if r.value["type"] == "insert")
    raw_boot = next(r.raw for r in typed_records if r.value["type"] == "bootstrap-insert")
    assert raw_boot.split(b'"data":')[1] == raw_insert.split(b'"data":')[1]


def test_bootstrap_of_an_excluded_table_fails_clearly(
    stack: Any, settings: Any, unique: str, mysql_db: str, tmp_path: Path
) -> None:
    _execute(stack.mysql_root(mysql_db), "CREATE TABLE hidden (id INT PRIMARY KEY)")
    with stack.mysql_root() as root:
        start = binlog_end(root)
    env = reader_env(
        stack,
        unique,
        "main",
        num_shards=SHARDS,
        kafka_topic=f"{unique}_%{{table}}",
        filter=f"exclude: *.*, include: {mysql_db}.other",
        start_position=start,
        producer="stdout",
    )
    reader = ReaderProcess(env, tmp_path, "reader")
    try:
        wait_for("initial checkpoint", lambda: stored_checkpoint(settings, "main"))
        done = subprocess.run(
            [SHARDCTL, "cdc", "bootstrap", f"{mysql_db}.hidden", "--timeout", "60"],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )
    finally:
        assert reader.terminate() == 0, reader.stderr()
    assert done.returncode == 1
    assert "excluded by cdc.filter" in done.stderr
