"""Consume throughput of one worker: events/s with a no-op handler and with the SQL sink.

Produces N synthetic Maxwell JSON messages to a fresh Kafka topic of the local
stack (P partitions = shards), then runs the worker's consumer layer (Kafka
transport, batching, retries, position tracking; no etcd) over every partition until
each event is handled, and prints events/s for:

  noop-async    an async batch handler that does nothing (the framework's ceiling)
  noop-sync     a sync per-event handler (runs on the handler thread pool)
  sql-sink      workers.sinks.sql:SqlSink upserting into MariaDB, offsets in the
                same transaction (one transaction per batch)

Not a test: it asserts nothing about speed.

    .venv/bin/python bench/consume.py --events 50000 --sql-events 20000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path

import pymysql
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shardctl.cli.dev import load_devstack
from workers.consumer import Consumer, ConsumerConfig, StaticClaim
from workers.deadletters import KafkaDeadLetterWriter
from workers.events import Batch, Event
from workers.handlers import Handler, HandlerContext, batch_handler
from workers.sinks.sql import SqlSink
from workers.transports.kafka import KafkaTransport


def produce(bootstrap: str, topic: str, partitions: int, count: int) -> None:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 20}
    )
    for n in range(count):
        doc = {
            "database": "bench",
            "table": "items",
            "type": "insert",
            "ts": 1700000000,
            "xid": n,
            "commit": True,
            "event_id": f"bench-{n}",
            "data": {"id": n, "name": f"name-{n}", "amount": n % 1000},
        }
        producer.produce(topic, json.dumps(doc).encode(), key=b"%d" % n, partition=n % partitions)
        if n % 10000 == 0:
            producer.poll(0)
    producer.flush(60)


class Counter:
    def __init__(self) -> None:
        self.count = 0


async def run(
    bootstrap: str,
    topic: str,
    partitions: int,
    expect: int,
    handler: Handler,
    counter: Counter,
    batch_size: int,
) -> tuple[int, float]:
    transport = KafkaTransport({"bootstrap.servers": bootstrap}, [topic], group_id=f"bench.{topic}")
    consumer = Consumer(
        transport,
        handler,
        KafkaDeadLetterWriter({"bootstrap.servers": bootstrap}, "bench"),
        ConsumerConfig(batch_size=batch_size, max_in_flight=batch_size * 5),
    )
    await consumer.open()
    started = time.perf_counter()
    for shard in range(partitions):
        await consumer.start(StaticClaim(shard))
    while counter.count < expect:
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    handled = counter.count
    for shard in range(partitions):
        await consumer.stop(shard, 0)
    await consumer.close()
    return handled, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--sql-events", type=int, default=20_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args()

    stack = load_devstack().Stack()
    bootstrap = f"127.0.0.1:{stack.ports.kafka}"
    mysql_port = int(stack.ports.mariadb)
    topic = f"bench-consume-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=args.partitions, replication_factor=1)])[
        topic
    ].result(30)
    database = f"bench_{uuid.uuid4().hex[:8]}"
    root = pymysql.connect(
        host="127.0.0.1", port=mysql_port, user="root", password="", autocommit=True
    )
    results: list[tuple[str, int, float]] = []
    try:
        t0 = time.perf_counter()
        produce(bootstrap, topic, args.partitions, args.events)
        print(
            f"produced {args.events} events to {args.partitions} partitions in "
            f"{time.perf_counter() - t0:.1f}s"
        )

        counter = Counter()

        @batch_handler
        async def noop_batch(batch: Batch) -> None:
            counter.count += len(batch.events)

        handled, elapsed = asyncio.run(
            run(
                bootstrap,
                topic,
                args.partitions,
                args.events,
                Handler("noop-async", noop_batch),
                counter,
                args.batch_size,
            )
        )
        results.append(("noop-async", handled, elapsed))

        counter_sync = Counter()

        def noop_event(_event: Event) -> None:
            counter_sync.count += 1

        handled, elapsed = asyncio.run(
            run(
                bootstrap,
                topic,
                args.partitions,
                args.events,
                Handler("noop-sync", noop_event),
                counter_sync,
                args.batch_size,
            )
        )
        results.append(("noop-sync", handled, elapsed))

        with root.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{database}`")
            cur.execute(
                f"CREATE TABLE `{database}`.items (id INT PRIMARY KEY, "
                "name VARCHAR(64), amount INT)"
            )
        os.environ.update(
            {"SHARDCTL_SINK_SQL_PORT": str(mysql_port), "SHARDCTL_SINK_SQL_USER": "root"}
        )
        sink = SqlSink(HandlerContext(options={"database": database, "scope": "bench"}))
        counter_sql = Counter()
        sql_expect = min(args.sql_events, args.events)
        real_on_events = sink.on_events

        def counted(batch: Batch) -> None:
            real_on_events(batch)
            counter_sql.count += len(batch.events)

        sink.on_events = counted  # type: ignore[method-assign]
        # Only the first sql_expect events are awaited; the rest may be half consumed.
        handled, elapsed = asyncio.run(
            run(
                bootstrap,
                topic,
                args.partitions,
                sql_expect,
                Handler("sql-sink", sink),
                counter_sql,
                args.batch_size,
            )
        )
        results.append(("sql-sink", handled, elapsed))
    finally:
        with root.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{database}`")
        root.close()
        for future in admin.delete_topics([topic]).values():
            future.result(30)

    print(f"\n{'handler':<12} {'events':>8} {'seconds':>8} {'events/s':>10}")
    for name, count, elapsed in results:
        print(f"{name:<12} {count:>8} {elapsed:>8.2f} {count / elapsed:>10.0f}")


if __name__ == "__main__":
    main()
