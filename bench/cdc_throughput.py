"""Binlog decoding throughput: stock mysql-replication rows vs the compiled decoder.

Writes N rows into an 8-column mixed-type table of a fresh database on the
local MariaDB, then reads the same binlog range several times in one run:

  stream only   events parsed, rows not decoded (the floor)
  stock         the library's own `.rows`
  ours          cdc.decoding (rows read from the raw event body)
  ours+format   decoding plus Maxwell JSON (key and value)
  end-to-end    decoding, JSON, shard, Kafka (idempotent, acks=all) until every
                delivery is acknowledged

and prints rows/s for each. Not a test: it asserts nothing about speed.

    .venv/bin/python bench/cdc_throughput.py --rows 200000
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pymysql
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.event import MariadbGtidEvent, XidEvent
from pymysqlreplication.row_event import TableMapEvent, WriteRowsEvent

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cdc.decoding import BinlogDecoder, CheckConstraintJsonColumns
from cdc.formatter import MaxwellFormatter
from cdc.rows import Message, RowImage, TxnContext
from cdc.schema import TableDef
from shardctl.core.hashing import shard_of

TABLE_SQL = """
CREATE TABLE {db}.orders (
  id BIGINT UNSIGNED NOT NULL PRIMARY KEY,
  customer VARCHAR(64) NOT NULL,
  amount DECIMAL(12,2) NOT NULL,
  created DATETIME(6) NOT NULL,
  status ENUM('new','paid','shipped','cancelled') NOT NULL,
  score DOUBLE NULL,
  attrs JSON NULL,
  note TEXT NULL
) CHARSET utf8mb4
"""


def _rows(count: int) -> Iterator[tuple[Any, ...]]:
    rng = random.Random(42)
    base = datetime(2026, 1, 1)
    statuses = ["new", "paid", "shipped", "cancelled"]
    for i in range(1, count + 1):
        yield (
            i,
            f"customer-{rng.randrange(100000)}",
            Decimal(rng.randrange(10**9)) / 100,
            base + timedelta(microseconds=rng.randrange(10**13)),
            statuses[i % 4],
            None if i % 7 == 0 else rng.random() * 1000,
            f'{{"sku": "S{rng.randrange(1000)}", "qty": {rng.randrange(1, 9)}, "gift": false}}',
            "note " * rng.randrange(0, 6) or None,
        )


def _connect(args: argparse.Namespace) -> pymysql.connections.Connection[Any]:
    return pymysql.connect(
        host=args.host, port=args.port, user=args.user, password="", autocommit=True
    )


def _load(args: argparse.Namespace, db: str) -> tuple[str, int, str, int]:
    conn = _connect(args)
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {db}")
        cur.execute(TABLE_SQL.format(db=db))
        cur.execute("SHOW MASTER STATUS")
        start_file, start_pos = cur.fetchone()[:2]
        batch: list[tuple[Any, ...]] = []
        began = time.perf_counter()
        insert = f"INSERT INTO {db}.orders VALUES (%s,%s,%s,%s,%s,%s,%s,%s)"
        for row in _rows(args.rows):
            batch.append(row)
            if len(batch) == 1000:
                cur.executemany(insert, batch)
                batch.clear()
        if batch:
            cur.executemany(insert, batch)
        loaded = time.perf_counter() - began
        cur.execute("SHOW MASTER STATUS")
        end_file, end_pos = cur.fetchone()[:2]
    conn.close()
    print(f"loaded {args.rows} rows in {loaded:.1f}s ({start_file}:{start_pos} .. {end_pos})")
    return start_file, int(start_pos), end_file, int(end_pos)


def _stream(args: argparse.Namespace, db: str, start: tuple[str, int]) -> BinLogStreamReader:
    return BinLogStreamReader(
        connection_settings={
            "host": args.host,
            "port": args.port,
            "user": args.user,
            "password": "",
        },
        server_id=random.randrange(100000, 2**31),
        log_file=start[0],
        log_pos=start[1],
        resume_stream=True,
        blocking=False,
        # File/pos mode on MariaDB: is_mariadb=True would ignore log_file/log_pos.
        is_mariadb=False,
        only_events=[MariadbGtidEvent, TableMapEvent, WriteRowsEvent, XidEvent],
        only_schemas=[db],
    )


def _pass(
    args: argparse.Namespace,
    db: str,
    start: tuple[str, int],
    end: tuple[str, int],
    on_event: Callable[[BinLogStreamReader, Any], int],
) -> tuple[int, float]:
    stream = _stream(args, db, start)
    rows = 0
    began = time.perf_counter()
    try:
        for event in stream:
            rows += on_event(stream, event)
            if stream.log_file == end[0] and stream.log_pos >= end[1]:
                break
    finally:
        stream.close()
    return rows, time.perf_counter() - began


def _report(name: str, rows: int, seconds: float, expected: int) -> float:
    rate = rows / seconds if seconds else 0.0
    flag = "" if rows == expected else f"  (!! saw {rows} rows, expected {expected})"
    print(f"{name:<14} {rows:>8} rows  {seconds:7.2f}s  {rate:>10,.0f} rows/s{flag}")
    return rate


class _Pipeline:
    """Decoding, formatting and (optionally) producing, the way the reader does it:
    rows are held until the transaction's XID so each carries xid and commit."""

    def __init__(
        self,
        args: argparse.Namespace,
        format_rows: bool,
        sink: Callable[[Message], None] | None,
    ) -> None:
        # MariaDB's JSON column is found from its json_valid() CHECK, as the reader does.
        self.decoder = BinlogDecoder(CheckConstraintJsonColumns(lambda: _connect(args)))
        self.formatter = MaxwellFormatter()
        self.format_rows = format_rows
        self.sink = sink
        self.pending: list[tuple[TableDef, RowImage]] = []
        self.gtid: str | None = None
        self.txn_pos = 0

    def __call__(self, stream: BinLogStreamReader, event: Any) -> int:
        if isinstance(event, WriteRowsEvent):
            where = f"{stream.log_file}:{event.packet.log_pos - event.packet.event_size}"
            table, rows = self.decoder.decode(event, where)
            if self.format_rows:
                self.pending.extend((table, row) for row in rows)
            return len(rows)
        if isinstance(event, TableMapEvent):
            self.decoder.on_table_map(event, stream.log_file)
        elif isinstance(event, MariadbGtidEvent):
            self.gtid = event.gtid
            self.txn_pos = event.packet.log_pos - event.packet.event_size
        elif isinstance(event, XidEvent) and self.pending:
            ctx = TxnContext(
                server_id=event.packet.server_id,
                thread_id=None,
                gtid=self.gtid,
                file=stream.log_file,
                pos=self.txn_pos,
                ts=event.timestamp,
                xid=event.xid,
            )
            last = len(self.pending) - 1
            for index, (table, row) in enumerate(self.pending):
                message = self.formatter.format(ctx, table, row, index, index == last)
                if self.sink is not None:
                    self.sink(message)
            self.pending.clear()
        return 0


def _stock(stream: BinLogStreamReader, event: Any) -> int:
    return len(event.rows) if isinstance(event, WriteRowsEvent) else 0


def _stream_only(stream: BinLogStreamReader, event: Any) -> int:
    return 0


def _end_to_end(
    args: argparse.Namespace, db: str, start: tuple[str, int], end: tuple[str, int], attempt: int
) -> tuple[int, float] | None:
    try:
        from cdc.producers.base import Outgoing
        from cdc.producers.kafka import KafkaProducer
        from shardctl.core.config import KafkaSettings
    except ImportError as exc:
        print(f"end-to-end: not measured (producer missing: {exc})")
        return None
    topic = f"{db}_orders_{attempt}"
    producer = KafkaProducer(
        KafkaSettings(bootstrap_servers=args.kafka),
        num_shards=args.shards,
        topic_template=topic,
        dead_letter_topic=f"{topic}_dlq",
        replication_factor=1,
    )
    acked = [0]

    def ack() -> None:
        acked[0] += 1

    sent = [0]

    def sink(message: Message) -> None:
        shard = shard_of(message.key, args.shards)
        producer.send(
            Outgoing(
                message.key,
                message.value,
                shard,
                message.event_id,
                message.database,
                message.table,
            ),
            ack,
        )
        sent[0] += 1
        if sent[0] % 2000 == 0:
            producer.poll(0)

    try:
        pipeline = _Pipeline(args, format_rows=True, sink=sink)
        began = time.perf_counter()
        rows, _ = _pass(args, db, start, end, pipeline)
        queued = time.perf_counter() - began
        producer.flush(120.0)
        seconds = time.perf_counter() - began
        flushed = seconds - queued
        print(f"  end-to-end run {attempt + 1}: {queued:.2f}s to queue, {flushed:.2f}s to flush")
    finally:
        producer.close()
        _delete_topics(args, [topic, f"{topic}_dlq"])
    if acked[0] != rows:
        print(f"end-to-end: {acked[0]} acknowledged of {rows} rows")
    return acked[0], seconds


def _delete_topics(args: argparse.Namespace, topics: list[str]) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": args.kafka})
    existing = admin.list_topics(timeout=10).topics
    mine = [t for t in topics if t in existing]
    if mine:
        for future in admin.delete_topics(mine, operation_timeout=30).values():
            future.result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--host", default=os.environ.get("SHARDCTL_MYSQL_HOST", "127.0.0.1"))
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("SHARDCTL_MYSQL_PORT", "13306"))
    )
    parser.add_argument("--user", default="root", help="a user that may create a database")
    parser.add_argument(
        "--kafka", default=os.environ.get("SHARDCTL_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092")
    )
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--no-kafka", action="store_true", help="skip the end-to-end pass")
    parser.add_argument("--repeat", type=int, default=1, help="passes per decoder (best kept)")
    args = parser.parse_args()

    db = f"bench_cdc_{uuid.uuid4().hex[:8]}"
    start_file, start_pos, end_file, end_pos = _load(args, db)
    start, end = (start_file, start_pos), (end_file, end_pos)
    try:
        expected = args.rows
        print(f"python {sys.version.split()[0]}, {args.rows} rows, 8 columns, same binlog range")

        def best(make: Callable[[], Callable[[BinLogStreamReader, Any], int]]) -> tuple[int, float]:
            runs = [_pass(args, db, start, end, make()) for _ in range(args.repeat)]
            return min(runs, key=lambda r: r[1])

        _, floor_s = best(lambda: _stream_only)
        print(f"{'stream only':<14} {'':>8}       {floor_s:7.2f}s  (events parsed, rows untouched)")
        stock = _report("stock", *best(lambda: _stock), expected)
        decode_only = best(lambda: _Pipeline(args, format_rows=False, sink=None))
        ours = _report("ours", *decode_only, expected)
        with_format = best(lambda: _Pipeline(args, format_rows=True, sink=None))
        _report("ours+format", *with_format, expected)
        print(f"decoding speed-up (ours/stock): {ours / stock:.1f}x")
        if args.no_kafka:
            print("end-to-end: not measured (--no-kafka)")
        else:
            results = []
            for attempt in range(args.repeat):
                result = _end_to_end(args, db, start, end, attempt)
                if result is None:
                    break
                results.append(result)
            if results:
                _report("end-to-end", *min(results, key=lambda r: r[1]), expected)
    finally:
        conn = _connect(args)
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {db}")
        conn.close()


if __name__ == "__main__":
    main()
