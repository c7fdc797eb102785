"""Consume throughput of one real worker process: events/s and p99 apply latency per
batch, for a no-op handler, the MariaDB sink and the PostgreSQL sink.

Produces N synthetic Maxwell JSON row changes (inserts of distinct rows, GTID event
ids, P partitions) to a fresh Kafka topic of the local stack, once. Then, for each
handler and batch size, a fresh cluster (so the worker reads the topic from its
start), a fresh target database, a coordinator and ONE `shardctl worker run`
process owning all P shards, reading five batches ahead per shard (`--max-in-flight`,
at least 1000: the ratio of the worker's defaults). From the worker's /metrics it samples
shardctl_worker_events_total until every event is handled, and reads the handler's
per-batch latency histogram (shardctl_worker_handler_seconds):

  events/s   the events handled after the first sample that saw any, over the time
             from that sample to the one that saw all N, so the worker's start-up
             (and the batches handled before the span began) are left out
  p99 batch  the 99th percentile of the handler's time per batch, interpolated in
             the histogram's buckets as Prometheus' histogram_quantile does
  CPU ms/1k  the worker process's CPU time (process_cpu_seconds_total) over the same
             samples, per 1000 events: what the worker itself spends, which a loaded
             machine changes far less than events/s (the database's own work is not in it)

Handlers: `noop` (bench/consume.py:discard, a batch handler that does nothing: the
consumer framework's ceiling), `sql` (MariaDB), `postgres`. The SQL sinks' tables
are checked to hold N rows afterwards. The machine's load (`uptime`) is printed
with the figures: on a shared machine they are a lower bound.

Not a test: it asserts nothing about speed.

    .venv/bin/python bench/consume.py --events 500000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from confluent_kafka import Producer

sys.path.insert(0, str(Path(__file__).resolve().parent))

from processes import Bench

from workers.events import Batch
from workers.handlers import batch_handler

HANDLERS = {"noop": "consume:discard", "sql": "sql", "postgres": "postgres"}
TABLE = "items"
# The worker's read-ahead (--max-in-flight) in batches: its defaults' ratio (1000 events
# for batches of 200). With only two batches read ahead, a shard whose sink takes about
# 100 ms a batch waited on fetching at batch 1000 (19k events/s against 34k with five).
READ_AHEAD_BATCHES = 5


@batch_handler
def discard(batch: Batch) -> None:
    """The no-op handler: the framework's ceiling."""


def produce(bootstrap: str, topic: str, partitions: int, count: int) -> None:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 20}
    )
    for n in range(count):
        doc = {
            "database": "bench",
            "table": TABLE,
            "type": "insert",
            "ts": 1700000000,
            "xid": n,
            "commit": True,
            "source": "bench",
            "event_id": f"0-1-{n + 1}#0",
            "primary_key_columns": ["id"],
            "data": {"id": n, "name": f"name-{n}", "amount": n % 1000},
        }
        value = json.dumps(doc).encode()
        while True:
            try:
                producer.produce(topic, value, key=b"%d" % n, partition=n % partitions)
                break
            except BufferError:
                producer.poll(0.5)  # the local queue is full: wait for deliveries
        if n % 10000 == 0:
            producer.poll(0)
    producer.flush(60)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text: str = response.read().decode()
        return text


def handled(metrics: str) -> int:
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("shardctl_worker_events_total{")
        )
    )


def cpu_seconds(metrics: str) -> float:
    """The worker process's CPU time so far (user and system)."""
    for line in metrics.splitlines():
        if line.startswith("process_cpu_seconds_total "):
            return float(line.rsplit(" ", 1)[1])
    raise RuntimeError("the worker's /metrics has no process_cpu_seconds_total")


def p99_seconds(metrics: str) -> float:
    """The 99th percentile of the handler's per-batch time, from its histogram."""
    buckets: list[tuple[float, float]] = []
    for line in metrics.splitlines():
        if line.startswith("shardctl_worker_handler_seconds_bucket{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float(bound), float(line.rsplit(" ", 1)[1])))
    buckets.sort()
    if not buckets or buckets[-1][1] == 0:
        return float("nan")
    rank = 0.99 * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = bound, count
    return lower


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def prepare_target(bench: Bench, handler: str) -> dict[str, str]:
    """A fresh target database for the SQL sinks; the worker's environment for it."""
    database = f"bench_{bench.token}"
    if handler == "sql":
        import pymysql

        conn = pymysql.connect(
            host="127.0.0.1", port=bench.mysql_port, user="root", password="", autocommit=True
        )
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{database}`")
            cur.execute(
                f"CREATE TABLE `{database}`.{TABLE} (id INT PRIMARY KEY, "
                "name VARCHAR(64), amount INT)"
            )
        conn.close()
        return {
            "SHARDCTL_SINK_SQL_PORT": str(bench.mysql_port),
            "SHARDCTL_SINK_SQL_USER": "root",
            "SHARDCTL_SINK_SQL_DATABASE": database,
        }
    if handler == "postgres":
        import psycopg

        admin = postgres_args(bench)
        with psycopg.connect(**admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        with psycopg.connect(**{**admin, "dbname": database}, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE {TABLE} (id INT PRIMARY KEY, name VARCHAR(64), amount INT)")
        return {
            "SHARDCTL_SINK_POSTGRES_DATABASE": database,
            "SHARDCTL_SINK_POSTGRES_TARGET_SCHEMA": "public",
        }
    return {}


def postgres_args(bench: Bench) -> dict[str, object]:
    from shardctl.cli.dev import load_devstack

    args: dict[str, object] = load_devstack().Postgres(bench.stack).connect_args()
    return args


def target_rows(bench: Bench, handler: str) -> int | None:
    database = f"bench_{bench.token}"
    if handler == "sql":
        import pymysql

        conn = pymysql.connect(host="127.0.0.1", port=bench.mysql_port, user="root", password="")
        with conn.cursor() as cur:
            cur.execute(f"SELECT COUNT(*) FROM `{database}`.{TABLE}")
            row = cur.fetchone()
        conn.close()
        return int(row[0]) if row else 0
    if handler == "postgres":
        import psycopg

        with psycopg.connect(**{**postgres_args(bench), "dbname": database}) as conn:
            found = conn.execute(f"SELECT COUNT(*) FROM {TABLE}").fetchone()
        return int(found[0]) if found else 0
    return None


def drop_target(bench: Bench, handler: str) -> None:
    database = f"bench_{bench.token}"
    if handler == "sql":
        import pymysql

        conn = pymysql.connect(
            host="127.0.0.1", port=bench.mysql_port, user="root", password="", autocommit=True
        )
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{database}`")
        conn.close()
    elif handler == "postgres":
        import psycopg

        with psycopg.connect(**postgres_args(bench), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def measure(
    topic: str, partitions: int, count: int, handler: str, batch_size: int, timeout: float
) -> tuple[float, float, float, int | None]:
    """(events/s, p99 seconds per batch, worker CPU seconds per 1000 events, rows in
    the target) of one worker process."""
    workdir = Path(tempfile.mkdtemp(prefix=f"consume-{handler}-{batch_size}-"))
    bench = Bench(f"consume-{handler}", workdir)
    port = free_port()
    try:
        env = prepare_target(bench, handler)
        bench.run_shardctl("shards", "set", str(partitions))
        bench.shardctl("c1", "coordinator", "run", "--id", "c1", "--stabilization", "0.3")
        bench.shardctl(
            "w1",
            "worker",
            "run",
            "--id",
            "w1",
            "--topic",
            topic,
            "--handler",
            HANDLERS[handler],
            "--batch-size",
            str(batch_size),
            "--max-in-flight",
            str(max(1000, READ_AHEAD_BATCHES * batch_size)),
            "--metrics-port",
            str(port),
            env=env,
        )
        first: float | None = None
        first_cpu = 0.0
        first_done = 0
        deadline = time.monotonic() + timeout
        done = 0
        while done < count:
            if time.monotonic() > deadline or not bench.alive("w1"):
                raise RuntimeError(
                    f"{handler} batch {batch_size}: {done} of {count} events handled; "
                    f"worker log:\n{bench.log('w1')[-3000:]}"
                )
            try:
                metrics = scrape(port)
            except OSError:
                time.sleep(0.2)  # the worker's metrics port is not up yet
                continue
            now = time.monotonic()
            done = handled(metrics)
            if done > 0 and first is None:
                first, first_cpu, first_done = now, cpu_seconds(metrics), done
            if done < count:
                # Each scrape costs the worker some CPU: a few per second is enough.
                time.sleep(0.05)
        assert first is not None
        elapsed = time.monotonic() - first
        metrics = scrape(port)
        # The events the first sample saw were handled before the span began.
        counted = max(count - first_done, 1)
        cpu_per_1k = (cpu_seconds(metrics) - first_cpu) * 1000 / counted
        p99 = p99_seconds(metrics)
        rows = target_rows(bench, handler)
        return counted / max(elapsed, 1e-9), p99, cpu_per_1k, rows
    finally:
        bench.close()
        drop_target(bench, handler)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batch-sizes", default="100,1000,5000")
    parser.add_argument("--handlers", default="noop,sql,postgres")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    args = parser.parse_args()
    handlers = [h for h in args.handlers.split(",") if h]
    unknown = [h for h in handlers if h not in HANDLERS]
    if unknown:
        parser.error(f"unknown handler(s) {unknown}; choose from {', '.join(HANDLERS)}")
    sizes = [int(b) for b in args.batch_sizes.split(",") if b]

    setup = Bench("consume-topic", Path(tempfile.mkdtemp(prefix="consume-")))
    if "postgres" in handlers:
        setup.stack.up(["postgres"], echo=lambda _m: None)
    topic = f"bench-consume-{setup.token}"
    setup.create_topic(topic, args.partitions)
    results: list[tuple[str, int, float, float, float, int | None]] = []
    try:
        started = time.perf_counter()
        produce(setup.bootstrap, topic, args.partitions, args.events)
        print(
            f"produced {args.events} events to {args.partitions} partitions in "
            f"{time.perf_counter() - started:.1f}s"
        )
        for handler in handlers:
            for size in sizes:
                rate, p99, cpu, rows = measure(
                    topic, args.partitions, args.events, handler, size, args.timeout
                )
                results.append((handler, size, rate, p99, cpu, rows))
                print(
                    f"  {handler} batch {size}: {rate:.0f} events/s, p99 {p99 * 1000:.0f} ms, "
                    f"worker CPU {cpu * 1000:.0f} ms per 1k events"
                )
    finally:
        setup.close()

    load = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    print(f"\none worker, {args.partitions} shards, {args.events} events; uptime: {load}")
    print(
        f"{'handler':<10} {'batch':>6} {'events/s':>10} {'p99 batch ms':>13} "
        f"{'CPU ms/1k':>10} {'rows':>8}"
    )
    for handler, size, rate, p99, cpu, rows in results:
        shown = "-" if rows is None else str(rows)
        print(
            f"{handler:<10} {size:>6} {rate:>10.0f} {p99 * 1000:>13.1f} "
            f"{cpu * 1000:>10.0f} {shown:>8}"
        )


if __name__ == "__main__":
    main()
