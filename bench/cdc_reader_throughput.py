"""Throughput of the reader's own path, stage by stage, on one binlog range.

Loads N rows (8 mixed-type columns, 1,000 rows per transaction) into a fresh
database on the local MariaDB, then reads that binlog range with the reader's
components, three times:

  source            BinlogSource: stream, transaction assembly, filter, decoding
  source+publish    + Maxwell JSON, partitioner (shard), ack tracker (no broker)
  reader → Kafka    + KafkaProducer (idempotent, acks=all), until every message
                    is acknowledged and the checkpoint covers the range

and prints rows/s for each. Not a test; it asserts nothing about speed.

    .venv/bin/python bench/cdc_reader_throughput.py --rows 100000
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import pymysql

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cdc.acks import AckTracker
from cdc.decoding import BinlogDecoder, CheckConstraintJsonColumns
from cdc.filtering import Filter
from cdc.formatter import MaxwellFormatter
from cdc.partitioner import Partitioner
from cdc.producers.base import Outgoing, Producer
from cdc.publisher import Publisher
from cdc.replication.decoding import FilteredDecoding
from cdc.replication.position import BinlogPosition, Checkpoint
from cdc.replication.source import BinlogSource, SourceOptions
from cdc.replication.transaction import Transaction

TABLE = """
CREATE TABLE {db}.orders (
  id BIGINT UNSIGNED NOT NULL PRIMARY KEY, customer VARCHAR(64) NOT NULL,
  amount DECIMAL(12,2) NOT NULL, created DATETIME(6) NOT NULL,
  status ENUM('new','paid','shipped','cancelled') NOT NULL, score DOUBLE NULL,
  attrs JSON NULL, note TEXT NULL
) CHARSET utf8mb4
"""


def load(conn: Any, db: str, count: int) -> tuple[BinlogPosition, BinlogPosition]:
    rng = random.Random(7)
    base = datetime(2026, 1, 1)
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {db}")
        cur.execute(TABLE.format(db=db))
        cur.execute("SHOW MASTER STATUS")
        file, pos = cur.fetchone()[:2]
        start = BinlogPosition(str(file), int(pos))
        sql = f"INSERT INTO {db}.orders VALUES (%s,%s,%s,%s,%s,%s,%s,%s)"
        for first in range(0, count, 1000):
            cur.executemany(
                sql,
                [
                    (
                        i,
                        f"c-{rng.randrange(10**5)}",
                        Decimal(rng.randrange(10**8)) / 100,
                        base + timedelta(microseconds=rng.randrange(10**13)),
                        ("new", "paid", "shipped", "cancelled")[i % 4],
                        None if i % 7 == 0 else rng.random(),
                        f'{{"qty": {i % 9}}}',
                        "note " * (i % 5) or None,
                    )
                    for i in range(first, min(first + 1000, count))
                ],
            )
        cur.execute("SHOW MASTER STATUS")
        file, pos = cur.fetchone()[:2]
    return start, BinlogPosition(str(file), int(pos))


class NullProducer(Producer):
    """Acknowledges at once: measures everything but the broker."""

    def send(self, message: Outgoing, on_ack: Callable[[], None]) -> None:
        on_ack()

    def poll(self, timeout: float = 0.0) -> None:
        return None

    def flush(self, timeout: float) -> None:
        return None


def run_pass(
    args: argparse.Namespace,
    db: str,
    start: BinlogPosition,
    end: BinlogPosition,
    producer: Producer | None,
) -> tuple[int, float]:
    connect = {"host": args.host, "port": args.port, "user": args.user, "password": ""}
    row_filter = Filter(f"exclude: *.*, include: {db}.*")
    decoding = FilteredDecoding(
        BinlogDecoder(CheckConstraintJsonColumns(lambda: pymysql.connect(**connect))), row_filter
    )
    publisher = Publisher(MaxwellFormatter(), Partitioner(args.shards), row_filter)
    source = BinlogSource(
        SourceOptions(
            source="bench",
            connect=connect,
            server_id=random.randrange(10**5, 2**31),
            heartbeat_s=0.5,
        ),
        decoding,
        Checkpoint(start.file, start.pos, None, 0, 0),
    )
    tracker: AckTracker[Checkpoint] = AckTracker()
    rows = 0
    began = time.perf_counter()
    try:
        for item in source:
            if isinstance(item, Transaction):
                if producer is None:
                    rows += item.row_count
                else:
                    messages = list(publisher.messages(item))
                    ack = partial(tracker.ack, tracker.open(item.end, len(messages)))
                    for message in messages:
                        producer.send(message, ack)
                    rows += len(messages)
                    producer.poll(0)
            if source.boundary.position.sort_key() >= end.sort_key():
                break
        if producer is not None:
            producer.flush(120)
            safe = tracker.safe()
            assert safe is not None and safe.position.sort_key() >= end.sort_key()
    finally:
        source.close()
    return rows, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--host", default=os.environ.get("SHARDCTL_MYSQL_HOST", "127.0.0.1"))
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("SHARDCTL_MYSQL_PORT", "33306"))
    )
    parser.add_argument("--user", default="root")
    parser.add_argument(
        "--kafka", default=os.environ.get("SHARDCTL_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092")
    )
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument(
        "--kafka-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="librdkafka setting for the Kafka pass, e.g. compression.type=none",
    )
    args = parser.parse_args()

    db = f"bench_reader_{uuid.uuid4().hex[:8]}"
    conn = pymysql.connect(
        host=args.host, port=args.port, user=args.user, password="", autocommit=True
    )
    start, end = load(conn, db, args.rows)
    topic = f"{db}_orders"
    print(f"python {sys.version.split()[0]}, {args.rows} rows, 8 columns, {start} .. {end}")
    try:
        from cdc.producers.kafka import KafkaProducer
        from shardctl.config import KafkaSettings

        passes: list[tuple[str, Producer | None]] = [
            ("source", None),
            ("source+publish", NullProducer()),
            (
                "reader → Kafka",
                KafkaProducer(
                    KafkaSettings(bootstrap_servers=args.kafka),
                    args.shards,
                    topic,
                    f"{topic}_dlq",
                    options=dict(o.split("=", 1) for o in args.kafka_option),
                ),
            ),
        ]
        for name, producer in passes:
            rows, seconds = run_pass(args, db, start, end, producer)
            print(f"{name:16s} {rows:>9d} rows in {seconds:6.2f}s = {rows / seconds:>9,.0f} rows/s")
            if producer is not None:
                producer.close()
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE {db}")
        conn.close()
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": args.kafka})
        mine = [t for t in (topic,) if t in admin.list_topics(timeout=10).topics]
        for future in admin.delete_topics(mine, operation_timeout=30).values() if mine else []:
            future.result()


if __name__ == "__main__":
    main()
