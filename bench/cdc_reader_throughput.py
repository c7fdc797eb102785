"""Throughput and memory of the real `shardctl cdc run` process, end to end to Kafka.

Loads N rows (1,000,000; 200,000 with --quick) of an 8-column mixed-type table
(INT PK, BIGINT, VARCHAR, DECIMAL, DATETIME(3), DOUBLE, TEXT, ENUM) in 1,000-row
transactions into a fresh database on the stack's MariaDB, then starts
`shardctl cdc run` on exactly that binlog range (acks=all, idempotent, as always)
and counts acknowledged messages by the topic's end offsets. It prints:

  reader            rows/s over the first 10 %, the middle 80 % and in total
                    (from the process's start), CPU seconds per 100k rows and peak
                    RSS (the process and its read-stage child together)
  stock decode      python-mysql-replication alone reading the range (rows/s)
  floor             `mariadb-binlog -v` of the range to /dev/null (rows/s)
  one transaction   N rows in a single transaction: rows/s and the reader's peak RSS

Run it against the local stack (`shardctl dev up`); it loads data as the server's
root user (no password on the local stack). Not a test; it asserts nothing about
speed.

    .venv/bin/python bench/cdc_reader_throughput.py [--quick] [--pipeline two-process]
        [--decoder python]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pymysql
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cdc.decoding.native import native_available
from cdc.replication.position import BinlogPosition
from shardctl.cli.dev import load_devstack

SHARDCTL = str(Path(sys.executable).with_name("shardctl"))
SHARDS = 4
TXN_ROWS = 1000
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")

TABLE = """
CREATE TABLE {db}.orders (
  id INT NOT NULL PRIMARY KEY, customer BIGINT NOT NULL, name VARCHAR(64) NOT NULL,
  amount DECIMAL(12,2) NOT NULL, created DATETIME(3) NOT NULL, score DOUBLE NULL,
  note TEXT NULL, status ENUM('new','paid','shipped','cancelled') NOT NULL
) CHARSET utf8mb4
"""


def _rows(first: int, last: int, rng: random.Random) -> list[tuple[Any, ...]]:
    base = datetime(2026, 1, 1)
    return [
        (
            i,
            rng.randrange(10**12),
            f"c-{rng.randrange(10**5)}",
            Decimal(rng.randrange(10**8)) / 100,
            base + timedelta(milliseconds=rng.randrange(10**10)),
            None if i % 7 == 0 else rng.random(),
            "note " * (i % 5) or None,
            ("new", "paid", "shipped", "cancelled")[i % 4],
        )
        for i in range(first, last)
    ]


def _end(cur: Any) -> BinlogPosition:
    cur.execute("SHOW MASTER STATUS")
    file, pos = cur.fetchone()[:2]
    return BinlogPosition(str(file), int(pos))


def load(conn: Any, db: str, count: int, per_txn: int) -> tuple[BinlogPosition, BinlogPosition]:
    """`count` rows in transactions of `per_txn` rows; the binlog range they take."""
    rng = random.Random(7)
    sql = f"INSERT INTO {db}.orders VALUES (%s,%s,%s,%s,%s,%s,%s,%s)"
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {db}")
        cur.execute(TABLE.format(db=db))
        start = _end(cur)
        for txn_first in range(0, count, per_txn):
            cur.execute("BEGIN")
            for first in range(txn_first, min(txn_first + per_txn, count), TXN_ROWS):
                cur.executemany(sql, _rows(first, min(first + TXN_ROWS, count), rng))
            cur.execute("COMMIT")
        return start, _end(cur)


class ProcessStats:
    """CPU seconds and peak RSS of a running process and its children (the reader's
    read stage runs in a child process), from /proc. Peak RSS is the sum of each
    process's own peak: an upper bound of the peak of the two together."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.cpu_s = 0.0
        self.peak_rss = 0
        self._cpu: dict[int, float] = {}
        self._peak: dict[int, int] = {}

    def sample(self) -> None:
        for pid in self._tree(self.pid):
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                self._cpu[pid] = (int(fields[11]) + int(fields[12])) / TICKS
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self._peak[pid] = int(line.split()[1]) * 1024
        self.cpu_s = sum(self._cpu.values())
        self.peak_rss = sum(self._peak.values())

    @classmethod
    def _tree(cls, pid: int) -> list[int]:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return [pid]
        return [pid, *(p for child in children for p in cls._tree(int(child)))]


def acknowledged(consumer: Consumer, topic: str) -> int:
    """Messages in `topic` (every one acknowledged to the producer): sum of end offsets."""
    if topic not in consumer.list_topics(topic, timeout=5).topics:
        return 0
    total = 0
    for partition in range(SHARDS):
        with contextlib.suppress(Exception):  # the topic is being created
            total += consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=5)[1]
    return total


def run_reader(
    kafka: str, db: str, start: BinlogPosition, rows: int, pipeline: str, decoder: str
) -> tuple[list[tuple[float, int]], ProcessStats]:
    """Start `shardctl cdc run` at `start`; until `rows` messages are in the topic:
    [(seconds since start, messages)] and the process's CPU and peak RSS."""
    name = f"{db}_{uuid.uuid4().hex[:6]}"
    topic = f"{name}_orders"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDCTL_")}
    env.update(load_devstack().Stack().env())
    env.update(
        {
            "SHARDCTL_CLUSTER": name,
            "SHARDCTL_CDC_SOURCE": "bench",
            "SHARDCTL_CDC_SERVER_ID": str(random.randrange(10**5, 2**31)),
            "SHARDCTL_CDC_START_POSITION": str(start),
            "SHARDCTL_CDC_NUM_SHARDS": str(SHARDS),
            "SHARDCTL_CDC_KAFKA_TOPIC": f"{name}_%{{table}}",
            "SHARDCTL_CDC_DEAD_LETTER_TOPIC": f"{name}_dlq",
            "SHARDCTL_CDC_FILTER": f"exclude: *.*, include: {db}.*",
            "SHARDCTL_CDC_PIPELINE": pipeline,
            "SHARDCTL_CDC_DECODER": decoder,
        }
    )
    consumer = Consumer({"bootstrap.servers": kafka, "group.id": f"bench-{name}"})
    began = time.monotonic()
    proc = subprocess.Popen([SHARDCTL, "cdc", "run"], env=env, stderr=subprocess.DEVNULL)
    stats = ProcessStats(proc.pid)
    samples: list[tuple[float, int]] = [(0.0, 0)]
    try:
        while samples[-1][1] < rows:
            if proc.poll() is not None:
                raise SystemExit(f"shardctl cdc run exited with {proc.returncode}")
            stats.sample()
            samples.append((time.monotonic() - began, acknowledged(consumer, topic)))
            time.sleep(0.1)
        stats.sample()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        consumer.close()
        admin = AdminClient({"bootstrap.servers": kafka})
        mine = [t for t in (topic, f"{name}_dlq") if t in admin.list_topics(timeout=10).topics]
        for future in admin.delete_topics(mine, operation_timeout=30).values() if mine else []:
            future.result()
    return samples, stats


def time_to(samples: list[tuple[float, int]], count: float) -> float:
    """Seconds until `count` messages were acknowledged (linear between samples)."""
    previous = samples[0]
    for sample in samples[1:]:
        if sample[1] >= count:
            t0, n0 = previous
            t1, n1 = sample
            return t0 + (t1 - t0) * (count - n0) / max(n1 - n0, 1)
        previous = sample
    return samples[-1][0]


def stock_decode(connect: dict[str, Any], start: BinlogPosition, end: BinlogPosition) -> float:
    """rows/s of python-mysql-replication alone over the range."""
    from pymysqlreplication import BinLogStreamReader
    from pymysqlreplication.row_event import WriteRowsEvent

    stream = BinLogStreamReader(
        connection_settings=connect,
        server_id=random.randrange(10**5, 2**31),
        log_file=start.file,
        log_pos=start.pos,
        resume_stream=True,
        blocking=False,
        only_events=[WriteRowsEvent],
    )
    rows = 0
    began = time.perf_counter()
    try:
        for event in stream:
            rows += len(event.rows)
            if (stream.log_file, stream.log_pos) >= (end.file, end.pos):
                break
    finally:
        stream.close()
    return rows / (time.perf_counter() - began)


def floor(connect: dict[str, Any], start: BinlogPosition, end: BinlogPosition, rows: int) -> float:
    """rows/s of `mariadb-binlog -v` over the range, to /dev/null."""
    with pymysql.connect(**connect) as conn, conn.cursor() as cur:
        cur.execute("SHOW BINARY LOGS")
        files = [str(r[0]) for r in cur if start.file <= str(r[0]) <= end.file]
    began = time.perf_counter()
    subprocess.run(
        [
            "mariadb-binlog",
            "-v",
            "--read-from-remote-server",
            f"--host={connect['host']}",
            f"--port={connect['port']}",
            f"--user={connect['user']}",
            f"--start-position={start.pos}",
            f"--stop-position={end.pos}",
            *files,
        ],
        stdout=subprocess.DEVNULL,
        check=True,
    )
    return rows / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200,000 rows instead of 1,000,000")
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument(
        "--pipeline",
        choices=("one-process", "two-process"),
        default="one-process",
        help="cdc.pipeline of the reader",
    )
    parser.add_argument(
        "--decoder",
        choices=("native", "python"),
        default="native",
        help="cdc.decoder of the reader",
    )
    args = parser.parse_args()
    rows = args.rows or (200_000 if args.quick else 1_000_000)

    stack = load_devstack().Stack()
    kafka = f"127.0.0.1:{stack.ports.kafka}"
    connect: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": int(stack.ports.mariadb),
        "user": "root",
        "password": "",
    }
    conn = pymysql.connect(**connect, autocommit=True)
    dbs: list[str] = []
    try:
        db = f"bench_reader_{uuid.uuid4().hex[:8]}"
        dbs.append(db)
        start, end = load(conn, db, rows, TXN_ROWS)
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, {rows:,} rows, ", end="")
        print(
            f"{TXN_ROWS}-row transactions, cdc.pipeline={args.pipeline}, "
            f"cdc.decoder={args.decoder}, binlog {start} .. {end}"
        )
        shardctl_native = "installed" if native_available() else "NOT installed"
        print(f"native decoder module: {shardctl_native}")
        load1, load5, _ = os.getloadavg()
        print(f"load average before the run: {load1:.2f} (1 min), {load5:.2f} (5 min)")

        samples, stats = run_reader(kafka, db, start, rows, args.pipeline, args.decoder)
        t10, t90, total = time_to(samples, rows * 0.1), time_to(samples, rows * 0.9), samples[-1][0]
        print(
            f"shardctl cdc run   first 10%: {rows * 0.1 / t10:>9,.0f} rows/s   "
            f"middle 80%: {rows * 0.8 / (t90 - t10):>9,.0f} rows/s   "
            f"total: {rows / total:>9,.0f} rows/s"
        )
        print(
            f"                   CPU {stats.cpu_s * 100_000 / rows:.2f} s per 100k rows, "
            f"peak RSS {stats.peak_rss / 2**20:.0f} MiB"
        )
        print(f"stock decode       {stock_decode(connect, start, end):>9,.0f} rows/s")
        print(f"mariadb-binlog -v  {floor(connect, start, end, rows):>9,.0f} rows/s (floor)")

        big = f"bench_reader_{uuid.uuid4().hex[:8]}"
        dbs.append(big)
        start, end = load(conn, big, rows, rows)
        samples, stats = run_reader(kafka, big, start, rows, args.pipeline, args.decoder)
        print(
            f"one {rows:,}-row transaction: {rows / samples[-1][0]:>9,.0f} rows/s, "
            f"peak RSS {stats.peak_rss / 2**20:.0f} MiB"
        )
    finally:
        with conn.cursor() as cur:
            for name in dbs:
                cur.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.close()


if __name__ == "__main__":
    main()
