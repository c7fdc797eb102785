"""Snapshot speed, and the stream's longest pause during a snapshot.

A table `big` (1,000,000 rows by default) and a table `other` in a fresh MariaDB
database; `shardctl cdc run` publishes both (4 shards, one topic per table).
Three phases, each a `shardctl cdc bootstrap` of `big`:

1. incremental, alone: only a light ticker on `other` (50 writes/s) to see gaps;
2. incremental, under load: 200 writes/s (updates, inserts, deletes) split
   between `big` and `other`;
3. `--blocking`, under the same load.

Before them, a baseline: the same load as phase 2 for 20 s without a snapshot,
to tell the machine's own pauses (a loaded machine deschedules the writer and
the reader) from the snapshot's.

Per phase: snapshot rows/s (rows / the wall time of the bootstrap command, which
polls every 0.5 s), and the gaps between consecutive streamed messages of
`other` while the bootstrap ran, from the messages' Kafka timestamps (set by
the reader as it sends): p50, p99, max. With writes every few milliseconds the
gap is the stream's pause. Also the latency of `other`'s inserts and updates:
Kafka timestamp minus the time the writer wrote into the row (`note`), so a
writer that stalled is not counted as a pause of the stream. Not a test: it
asserts nothing about speed.

    .venv/bin/python bench/snapshot.py                 # 1,000,000 rows
    .venv/bin/python bench/snapshot.py --rows 200000
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import subprocess
import tempfile
import threading
import time
import zlib
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

SHARDS = 4


class Writer:
    """Paced writes on some tables until stopped (one thread, autocommit)."""

    def __init__(self, port: int, database: str, tables: dict[str, int], rate: float) -> None:
        self._args = (port, database)
        self._tables = tables  # table -> key range
        self._interval = 1.0 / rate
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.count = 0

    def start(self) -> Writer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        import pymysql

        port, database = self._args
        conn = pymysql.connect(
            host="127.0.0.1",
            port=port,
            user="root",
            password="",
            database=database,
            autocommit=True,
        )
        rng = random.Random(1)
        names = list(self._tables)
        started = time.monotonic()
        with conn.cursor() as cur:
            while not self._stop.is_set():
                table = names[self.count % len(names)]
                key = rng.randint(1, self._tables[table])
                roll = rng.random()
                now = f"{time.time():.3f}"
                if roll < 0.6:
                    cur.execute(
                        f"UPDATE {table} SET v = v + 1, note = %s WHERE id = %s", (now, key)
                    )
                elif roll < 0.8:
                    cur.execute(f"DELETE FROM {table} WHERE id = %s", (key,))
                else:
                    cur.execute(
                        f"REPLACE INTO {table} (id, v, note) VALUES (%s, %s, %s)",
                        (key, self.count, now),
                    )
                self.count += 1
                wait = started + self.count * self._interval - time.monotonic()
                if wait > 0:
                    self._stop.wait(wait)
        conn.close()


def timestamps(bootstrap: str, topic: str) -> list[tuple[float, float | None]]:
    """(Kafka timestamp, write time or None) of every message of `topic`, sorted. The
    write time is what the writer put into `note` (inserts and updates)."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"bench-{topic}", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(SHARDS)])
    out: list[tuple[float, float | None]] = []
    idle = 0
    while idle < 3:
        batch = consumer.consume(10_000, timeout=1.0)
        got = [m for m in batch if m.error() is None]
        idle = 0 if got else idle + 1
        out.extend((m.timestamp()[1] / 1000, _written(m.value())) for m in got)
    consumer.close()
    return sorted(out, key=lambda pair: pair[0])


def _written(value: bytes) -> float | None:
    doc = json.loads(value)
    note = doc.get("data", {}).get("note", "")
    if doc.get("type") not in ("insert", "update"):
        return None
    try:
        return float(note)
    except ValueError:
        return None  # a row the writer has not written yet


def gaps(stamps: list[tuple[float, float | None]], start: float, end: float) -> list[float]:
    inside = [t for t, _ in stamps if start <= t <= end]
    return [b - a for a, b in itertools.pairwise(inside)]


def worst_gap_at(stamps: list[tuple[float, float | None]], start: float, end: float) -> str:
    """When the longest gap began, in seconds from the phase's start (of its length)."""
    inside = [t for t, _ in stamps if start <= t <= end]
    if len(inside) < 2:
        return "-"
    _, at = max((b - a, a) for a, b in itertools.pairwise(inside))
    return f"{at - start:.1f}/{end - start:.1f}s"


def latencies(stamps: list[tuple[float, float | None]], start: float, end: float) -> list[float]:
    return [t - w for t, w in stamps if start <= t <= end and w is not None]


def main() -> None:
    import pymysql
    from processes import Bench, percentile

    from shardctl.core.processes import SHARDCTL

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=200.0, help="writes/s under load")
    parser.add_argument("--chunk", type=int, default=1024, help="snapshot_chunk_size")
    args = parser.parse_args()

    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="shardctl-snapshot-"))
    bench = Bench("snapshot", workdir)
    database = f"bench_snapshot_{bench.token}"
    topic = f"bench-snapshot-{bench.token}"
    source = f"snapshot-{bench.token}"
    root = pymysql.connect(
        host="127.0.0.1", port=bench.mysql_port, user="root", password="", autocommit=True
    )
    try:
        with root.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{database}`")
            cur.execute(f"USE `{database}`")  # the seq_ tables resolve in it
            for table in ("big", "other"):
                cur.execute(
                    f"CREATE TABLE `{database}`.{table} (id INT PRIMARY KEY, v INT NOT NULL,"
                    " note VARCHAR(40) NOT NULL DEFAULT 'some text of a usual row')"
                )
            step = 100_000
            for first in range(1, args.rows + 1, step):
                last = min(args.rows, first + step - 1)
                cur.execute(
                    f"INSERT INTO `{database}`.big (id, v) SELECT seq, seq % 1000"
                    f" FROM seq_{first}_to_{last}"
                )
            cur.execute(f"INSERT INTO `{database}`.other (id, v) SELECT seq, 0 FROM seq_1_to_1000")
        for table in ("big", "other"):
            bench.create_topic(f"{topic}-{table}", SHARDS)
        cdc_env = {
            "SHARDCTL_CDC_KAFKA_TOPIC": f"{topic}-%{{table}}",
            "SHARDCTL_CDC_SOURCE": source,
            "SHARDCTL_CDC_SERVER_ID": str(30_000 + zlib.crc32(bench.token.encode()) % 2**30),
            "SHARDCTL_CDC_FILTER": f"exclude: *.*, include: {database}.*",
            "SHARDCTL_CDC_SNAPSHOT_CHUNK_SIZE": str(args.chunk),
            "SHARDCTL_CDC_BOOTSTRAP_POLL_S": "0.2",
        }
        bench.shardctl(
            "cdc", "cdc", "run", "--reader-id", "r1", "--num-shards", str(SHARDS), env=cdc_env
        )
        results: list[tuple[str, float, float]] = []
        writer = Writer(bench.mysql_port, database, {"big": args.rows, "other": 1000}, args.rate)
        writer.start()
        time.sleep(2)
        started = time.time()
        time.sleep(20)
        results.append(("no snapshot, under load", started, time.time()))
        writer.stop()
        phases = [
            ("incremental, alone", [], {"other": 1000}, 50.0),
            ("incremental, under load", [], {"big": args.rows, "other": 1000}, args.rate),
            ("blocking, under load", ["--blocking"], {"big": args.rows, "other": 1000}, args.rate),
        ]
        for name, flags, tables, rate in phases:
            writer = Writer(bench.mysql_port, database, tables, rate).start()
            time.sleep(2)  # the load is steady before the snapshot starts
            started = time.time()
            done = subprocess.run(
                [
                    *SHARDCTL,
                    "cdc",
                    "bootstrap",
                    f"{database}.big",
                    *flags,
                    "--source",
                    source,
                    "--timeout",
                    "3600",
                ],
                env={**bench.env, **cdc_env},
                capture_output=True,
                text=True,
                check=False,
            )
            ended = time.time()
            writer.stop()
            if done.returncode != 0:
                raise RuntimeError(f"{name}: bootstrap failed: {done.stderr}\n{bench.log('cdc')}")
            results.append((name, started, ended))
        stamps = timestamps(bench.bootstrap, f"{topic}-other")
        load_after = os.getloadavg()
        print(f"snapshot of {args.rows} rows, chunks of {args.chunk}, {SHARDS} shards")
        print(
            "load average (1, 5, 15 min) before: "
            + ", ".join(f"{x:.2f}" for x in load_before)
            + "; after: "
            + ", ".join(f"{x:.2f}" for x in load_after)
        )
        print(
            f"{'phase':<26}{'rows/s':>10}{'gap p50 ms':>12}{'p99 ms':>9}{'max ms':>9}"
            f"{'latency p50 ms':>16}{'p99 ms':>9}{'max ms':>9}{'longest gap at':>16}"
        )
        for name, started, ended in results:
            seen = gaps(stamps, started, ended)
            late = latencies(stamps, started, ended)
            rate = "-" if name.startswith("no snapshot") else f"{args.rows / (ended - started):.0f}"
            print(
                f"{name:<26}{rate:>10}"
                f"{percentile(seen, 50) * 1000:>12.1f}{percentile(seen, 99) * 1000:>9.1f}"
                f"{(max(seen) if seen else float('nan')) * 1000:>9.1f}"
                f"{percentile(late, 50) * 1000:>16.1f}{percentile(late, 99) * 1000:>9.1f}"
                f"{(max(late) if late else float('nan')) * 1000:>9.1f}"
                f"{worst_gap_at(stamps, started, ended):>16}"
            )
    finally:
        with root.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{database}`")
        root.close()
        bench.close()


if __name__ == "__main__":
    main()
