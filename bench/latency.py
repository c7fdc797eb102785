"""End-to-end latency: MariaDB commit -> CDC reader -> Kafka -> worker -> handler.

A paced writer inserts rows into a fresh MariaDB table at 1k, 5k and 10k rows/s (one
transaction every 10 ms). Each row carries `written_us`, the writer's clock in
microseconds taken just before its transaction is sent; the commit follows within
the same round trip, so the figure includes the INSERT and COMMIT themselves (about
a millisecond). `shardctl cdc run`, `shardctl coordinator run` and one
`shardctl worker run` (8 shards) carry the rows to a handler (`ReceiveClock` below)
that writes, per event, its receive time minus `written_us`. All processes run on
this machine, so they share one clock.

Prints p50/p95/p99/max per rate, the achieved write rate, and how many rows arrived.
Not a test: it asserts nothing about speed.

    .venv/bin/python bench/latency.py                     # 1k, 5k, 10k rows/s, 15 s each
    .venv/bin/python bench/latency.py --rates 2000 --seconds 30
"""

from __future__ import annotations

import argparse
import tempfile
import time
import zlib
from pathlib import Path
from typing import IO

from workers.events import Batch
from workers.handlers import HandlerContext

TICK_S = 0.01


class ReceiveClock:
    """Handler: appends `<phase> <latency µs>` per event to the file named by the
    `out` handler option."""

    def __init__(self, context: HandlerContext) -> None:
        # Open for the handler's whole life; closed by on_close.
        self._out: IO[str] = Path(context.options["out"]).open("a", buffering=1 << 16)  # noqa: SIM115

    async def on_events(self, batch: Batch) -> None:
        now_us = time.time_ns() // 1000
        lines = []
        for event in batch.events:
            data = event.data
            if event.type == "insert" and "written_us" in data:
                lines.append(f"{data['phase']} {now_us - int(data['written_us'])}\n")
        self._out.write("".join(lines))
        self._out.flush()

    def on_close(self) -> None:
        self._out.close()


def main() -> None:
    import pymysql
    from processes import Bench, percentile, read_lines

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="1000,5000,10000", help="rows/s, comma-separated")
    parser.add_argument("--seconds", type=float, default=15.0, help="writing time per rate")
    parser.add_argument("--shards", type=int, default=8)
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]

    workdir = Path(tempfile.mkdtemp(prefix="shardctl-latency-"))
    bench = Bench("latency", workdir)
    database = f"bench_latency_{bench.token}"
    topic = f"bench-latency-{bench.token}"
    out = workdir / "latencies.txt"
    root = pymysql.connect(
        host="127.0.0.1", port=bench.mysql_port, user="root", password="", autocommit=True
    )
    written: dict[int, tuple[int, float]] = {}
    try:
        with root.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{database}`")
            cur.execute(
                f"CREATE TABLE `{database}`.rows_in (id BIGINT PRIMARY KEY, "
                "phase INT NOT NULL, written_us BIGINT NOT NULL)"
            )
        bench.create_topic(topic, args.shards)
        bench.run_shardctl("shards", "set", str(args.shards))
        cdc_env = {
            "SHARDCTL_CDC_KAFKA_TOPIC": topic,
            "SHARDCTL_CDC_SOURCE": f"latency-{bench.token}",
            "SHARDCTL_CDC_SERVER_ID": str(20_000 + zlib.crc32(bench.token.encode()) % 2**30),
            "SHARDCTL_CDC_FILTER": f"exclude: *.*, include: {database}.rows_in",
        }
        bench.shardctl(
            "cdc", "cdc", "run", "--reader-id", "r1", "--num-shards", str(args.shards), env=cdc_env
        )
        bench.shardctl("coordinator", "coordinator", "run", "--id", "c1", "--stabilization", "0.3")
        bench.shardctl(
            "worker",
            "worker",
            "run",
            "--id",
            "w1",
            "--topic",
            topic,
            "--handler",
            "latency:ReceiveClock",
            "--handler-option",
            f"out={out}",
        )
        next_id = 0

        def write(phase: int, rate: int, seconds: float) -> tuple[int, float]:
            nonlocal next_id
            per_tick = max(1, round(rate * TICK_S))
            conn = pymysql.connect(
                host="127.0.0.1", port=bench.mysql_port, user="root", password="", database=database
            )
            rows = 0
            started = time.monotonic()
            tick = 0
            with conn.cursor() as cur:
                while time.monotonic() - started < seconds:
                    due = started + tick * TICK_S
                    wait = due - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    now_us = time.time_ns() // 1000
                    values = [(next_id + i, phase, now_us) for i in range(per_tick)]
                    cur.executemany(
                        "INSERT INTO rows_in (id, phase, written_us) VALUES (%s, %s, %s)", values
                    )
                    conn.commit()
                    next_id += per_tick
                    rows += per_tick
                    tick += 1
            elapsed = time.monotonic() - started
            conn.close()
            return rows, elapsed

        def arrived(phase: int) -> int:
            return sum(1 for f in read_lines(out) if int(f[0]) == phase)

        # Warm-up: wait until the whole pipeline carries rows.
        deadline = time.monotonic() + 90
        while True:
            write(0, 100, 0.2)
            time.sleep(1.0)
            if arrived(0) > 0:
                break
            for name in ("cdc", "coordinator", "worker"):
                if not bench.alive(name):
                    raise RuntimeError(f"{name} exited:\n{bench.log(name)[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("the pipeline carried no row within 90 s")
        print(f"pipeline ready ({arrived(0)} warm-up rows arrived); logs in {workdir}")

        for phase, rate in enumerate(rates, start=1):
            rows, elapsed = write(phase, rate, args.seconds)
            written[phase] = (rows, elapsed)
            deadline = time.monotonic() + 60
            while arrived(phase) < rows and time.monotonic() < deadline:
                time.sleep(0.5)
            print(
                f"rate {rate}: wrote {rows} rows in {elapsed:.1f}s "
                f"({rows / elapsed:.0f} rows/s), {arrived(phase)} arrived"
            )
            time.sleep(1.0)
    finally:
        with root.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{database}`")
        root.close()
        bench.close()

    by_phase: dict[int, list[float]] = {}
    for fields in read_lines(out):
        by_phase.setdefault(int(fields[0]), []).append(int(fields[1]) / 1000.0)
    heads = ("achieved", "arrived", "p50 ms", "p95 ms", "p99 ms", "max ms")
    print(f"\n{'target rows/s':>13} " + " ".join(f"{h:>9}" for h in heads))
    for phase, rate in enumerate(rates, start=1):
        lat = by_phase.get(phase, [])
        rows, elapsed = written.get(phase, (0, 1.0))
        print(
            f"{rate:>13} {rows / elapsed:>9.0f} {len(lat):>9} {percentile(lat, 50):>9.1f} "
            f"{percentile(lat, 95):>9.1f} {percentile(lat, 99):>9.1f} "
            f"{max(lat) if lat else float('nan'):>9.1f}"
        )


if __name__ == "__main__":
    main()
