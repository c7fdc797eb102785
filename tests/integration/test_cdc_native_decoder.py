"""The native decoder on real MariaDB and Kafka: a reader with `decoder = native` and
one with `decoder = python` publish the same bytes (keys, values, shards) for the same
binlog range, over every column type the native decoder reads, NULLs, the charsets,
updates with old images and a primary key change; and the reader logs which path
each table takes (a table with a JSON column takes the Python path)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shardctl.core.config import Settings
from shardctl.core.event_ids import order_key
from tests.conftest import StackHandle
from tests.integration.cdc_support import ReaderProcess, Record, TopicReader, binlog_end, reader_env
from tests.integration.workers_support import delete_cluster, delete_topics

pytestmark = pytest.mark.integration

SHARDS = 3

KINDS = """
CREATE TABLE kinds (
  id INT NOT NULL, region CHAR(2) CHARACTER SET latin1 NOT NULL,
  ti TINYINT, usi SMALLINT UNSIGNED, mi MEDIUMINT, ubi BIGINT UNSIGNED, bi BIGINT,
  yr YEAR, bt BIT(10), dbl DOUBLE, dec1 DECIMAL(12,2), dec2 DECIMAL(40,20), dec3 DECIMAL(5,0),
  d DATE, dt DATETIME(3), dt0 DATETIME, ts TIMESTAMP(6) NULL DEFAULT NULL, tm TIME(2),
  e ENUM('new','paid','ca"fé') CHARACTER SET utf8mb4, s SET('a','b','ü') CHARACTER SET utf8mb4,
  vc VARCHAR(300) CHARACTER SET utf8mb4, txt TEXT CHARACTER SET utf8mb4,
  lat VARCHAR(20) CHARACTER SET latin1, cyr VARCHAR(20) CHARACTER SET cp1251,
  bin BINARY(4), vbin VARBINARY(20), bl BLOB,
  PRIMARY KEY (id, region)
)
"""
INSERT = (
    "INSERT INTO kinds VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
    " %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
ROWS = [
    (
        1,
        "eu",
        -128,
        65535,
        -8388608,
        18446744073709551615,
        -9223372036854775808,
        2024,
        1023,
        -0.0,
        "-1234567890.12",
        "-0.00000000000000000001",
        "99999",
        "2026-02-28",
        "2026-02-28 23:59:59.999",
        "1000-01-01 00:00:00",
        "2030-01-19 03:14:07.123456",
        "-838:59:59.00",
        'ca"fé',
        "a,ü",
        'quote " backslash \\ tab \t newline \n ctl \x01 emoji \U0001f600',
        "x" * 300,
        "café ½",
        "Привет",
        b"\x00\x01",
        b"\xff\x00\xfe",
        bytes(range(256)),
    ),
    (2, "us", *([None] * 25)),
    (
        3,
        "ap",
        127,
        0,
        8388607,
        0,
        9223372036854775807,
        1901,
        0,
        1e-7,
        "0.00",
        "12345678901234567890.12345678901234567890",
        "-5",
        "1000-01-01",
        "1000-01-01 00:00:00.000",
        "9999-12-31 23:59:59",
        "2001-02-03 04:05:06.000001",
        "00:00:00.01",
        "new",
        "",
        "",
        "",
        "",
        "",
        b"",
        b"",
        b"",
    ),
]


def _load(stack: StackHandle, db: str) -> tuple[str, int]:
    """The rows above, then updates and deletes; the binlog position before them and
    the number of row messages."""
    with stack.mysql_root() as root:
        start = binlog_end(root)
    conn = stack.mysql_root(db)
    try:
        with conn.cursor() as cur:
            cur.execute(KINDS)
            cur.execute("CREATE TABLE docs (id INT PRIMARY KEY, doc JSON)")
            cur.executemany(INSERT, ROWS)
            cur.execute("INSERT INTO docs VALUES (1, '{\"a\": [1, 2.5, null]}')")
            conn.commit()
            # Old images: a few columns, NULL to a value, then the primary key
            # (published as a delete and an insert), then a delete.
            cur.execute("UPDATE kinds SET dbl = 0.0, dec1 = 1.5, vc = 'new' WHERE id = 1")
            cur.execute("UPDATE kinds SET ti = 5, lat = 'ÿ', e = 'paid' WHERE id = 2")
            cur.execute("UPDATE kinds SET id = 30 WHERE id = 3")
            cur.execute("DELETE FROM kinds WHERE id = 2")
            cur.execute("UPDATE docs SET doc = '[true]' WHERE id = 1")
            conn.commit()
    finally:
        conn.close()
    # 3 + 1 inserts, 2 updates, 1 key change as 2 messages, 1 delete, 1 update.
    return start, 4 + 2 + 2 + 1 + 1


def _publish(
    stack: StackHandle,
    settings: Settings,
    cluster: str,
    db: str,
    start: str,
    count: int,
    tmp_path: Path,
    decoder: str,
) -> tuple[list[Record], str]:
    topic = f"{cluster}_rows"
    env = reader_env(
        stack,
        cluster,
        "main",
        num_shards=SHARDS,
        kafka_topic=topic,
        dead_letter_topic=f"{cluster}_dlq",
        filter=f"exclude: *.*, include: {db}.*",
        start_position=start,
        output_primary_keys="true",
        decoder=decoder,
    )
    reader = ReaderProcess(env, tmp_path, f"reader-{decoder}")
    rows = TopicReader(stack.kafka_bootstrap, topic, SHARDS)
    try:
        records = rows.read_until(lambda r: len(r) >= count)
    finally:
        assert reader.terminate() == 0, reader.stderr()
        asyncio.run(delete_cluster(settings.model_copy(update={"cluster": cluster})))
        rows.close()
        delete_topics(stack.kafka_bootstrap, [topic, f"{cluster}_dlq"])
    records.sort(key=lambda r: order_key(r.value["event_id"]) or ("", ()))
    return records, reader.stderr()


def test_native_and_python_decoders_publish_the_same_bytes(
    stack: StackHandle, settings: Settings, unique: str, mysql_db: str, tmp_path: Path
) -> None:
    start, count = _load(stack, mysql_db)
    native, native_log = _publish(
        stack, settings, f"{unique}n", mysql_db, start, count, tmp_path, "native"
    )
    python, python_log = _publish(
        stack, settings, f"{unique}p", mysql_db, start, count, tmp_path, "python"
    )
    assert len(native) == count
    assert [(r.partition, r.key, r.raw) for r in native] == [
        (r.partition, r.key, r.raw) for r in python
    ]
    assert [(r.value["table"], r.value["type"]) for r in native] == [
        *[("kinds", "insert")] * 3,
        ("docs", "insert"),
        ("kinds", "update"),
        ("kinds", "update"),
        ("kinds", "delete"),
        ("kinds", "insert"),
        ("kinds", "delete"),
        ("docs", "update"),
    ]
    first = native[0].value["data"]
    assert first["ubi"] == 18446744073709551615 and first["e"] == 'ca"fé'
    assert first["cyr"] == "Привет" and first["lat"] == "café ½" and first["s"] == ["a", "ü"]
    assert f"table {mysql_db}.kinds: native decoder" in native_log
    assert f"table {mysql_db}.docs: Python decoder (column 'doc': JSON values" in native_log
    assert "decoder = python" in python_log and "native decoder" not in python_log
