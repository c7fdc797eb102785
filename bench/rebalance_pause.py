"""Rebalance pause: the longest processing gap per shard while workers join, drain and
die, for shardctl workers and for a plain confluent-kafka consumer group.

Setup: one topic with 64 partitions (= shards) under steady load (a producer thread
sends one message to every partition every 40 ms, so a flowing shard sees a batch at
least every ~40 ms); each message carries its send time. Each consumer writes
`<shard> <receive µs> <events> <oldest send µs>` per batch.

shardctl: 3 `shardctl worker run` processes (and a coordinator), then
  join     a 4th worker starts;
  drain    worker w1 gets SIGTERM (it drains: its shards move with fenced handoff);
  kill     worker w2 gets SIGKILL (its shards move once its lease expires).
Baseline, in the same run and on the same load: 3 confluent-kafka consumers in one
group with `partition.assignment.strategy=cooperative-sticky`, then
  join     a 4th consumer subscribes;
  drain    consumer c1 closes (leaves the group cleanly);
  kill     consumer c2 gets SIGKILL (its partitions move after the session timeout).

For each step, per shard: the longest gap between consecutive batches from just
before the step until the end of its window. A shard is "moved" if the consumer that
handled it last before the step differs from the one handling it at the end. Prints
p50/p99/max of those gaps for moved and unmoved shards, and for the kill step the
time until the dead consumer's shards all flowed again. Then, per shard, the longest
delay from a message's send to its handling in the same windows: a stall of the load
itself (the producer thread or the broker starved of CPU) is a gap of every shard but
delays nothing, while a handoff delays the events that wait for the new owner.
Then, from the logs of the workers and the coordinator, where the pause of the moved
shards of the join and the drain went, phase by phase (`--breakdown DIR` prints the
same for an earlier run's directory). The lease TTL of the workers
and the session timeout of the group are both `--timeout` seconds (6 by default, the
broker's minimum session timeout). The workers commit offsets every
`--commit-interval` seconds (1 by default, the worker's default); a handoff does not
wait for that tick.

Then, unless `--skip-reshard`, an online change of the shard count under load, on the
whole pipeline: MariaDB -> `shardctl cdc run` -> Kafka -> 3 workers. A writer updates
`--reshard-keys` rows round-robin (each about every 0.5 s), each update carrying its
wall time; `shardctl shards set 12` on a cluster of 8 (jump hash). Prints the time
until the reader switched and until the change completed, per key the longest
delay from write to handling and the longest gap between two handlings (moved and
unmoved keys apart, and the same before the change for comparison), and the keys
that changed shard against the least any hash can move ((12-8)/12 of them).

Not a test: it asserts nothing about speed.

    .venv/bin/python bench/rebalance_pause.py [--skip-reshard | --only-reshard]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import IO

from workers.events import Batch
from workers.handlers import HandlerContext

SHARDS = 64
SEND_EVERY_S = 0.04


def _open_append(path: str) -> IO[str]:
    return Path(path).open("a", buffering=1 << 16)


class BatchClock:
    """Handler: appends `<shard> <receive µs> <events> <oldest sent µs>` per batch to
    the `out` file."""

    def __init__(self, context: HandlerContext) -> None:
        self._out = _open_append(context.options["out"])

    async def on_events(self, batch: Batch) -> None:
        now_us = time.time_ns() // 1000
        oldest = min(int(e.data.get("sent_us", now_us)) for e in batch.events)
        self._out.write(f"{batch.shard} {now_us} {len(batch.events)} {oldest}\n")
        self._out.flush()

    def on_close(self) -> None:
        self._out.close()


class KeyClock:
    """Handler: appends `<row id> <receive µs> <written µs>` per row change to `out`."""

    def __init__(self, context: HandlerContext) -> None:
        self._out = _open_append(context.options["out"])

    async def on_events(self, batch: Batch) -> None:
        now_us = time.time_ns() // 1000
        lines = [
            f"{e.data['id']} {now_us} {e.data['written_us']}\n"
            for e in batch.events
            if e.type in ("insert", "update") and "written_us" in e.data
        ]
        self._out.write("".join(lines))
        self._out.flush()

    def on_close(self) -> None:
        self._out.close()


def group_consumer(bootstrap: str, topic: str, group: str, timeout_s: float, out: str) -> None:
    """The baseline: one member of a cooperative-sticky consumer group."""
    from confluent_kafka import Consumer

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": str(int(timeout_s * 1000)),
            "heartbeat.interval.ms": str(int(timeout_s * 1000 / 3)),
            "auto.offset.reset": "latest",
            "enable.auto.commit": "true",
            "auto.commit.interval.ms": "200",
        }
    )
    consumer.subscribe([topic])
    with _open_append(out) as sink:
        while not stop.is_set():
            first = consumer.poll(0.1)
            if first is None:
                continue
            messages = [first, *consumer.consume(499, 0)]
            now_us = time.time_ns() // 1000
            counts: dict[int, int] = {}
            oldest: dict[int, int] = {}
            for msg in messages:
                part = msg.partition()
                if msg.error() is None and part is not None:
                    counts[part] = counts.get(part, 0) + 1
                    sent = int(json.loads(msg.value() or b"{}")["data"]["sent_us"])
                    oldest[part] = min(sent, oldest.get(part, sent))
            sink.write("".join(f"{p} {now_us} {n} {oldest[p]}\n" for p, n in counts.items()))
            sink.flush()
    consumer.close()


class Load:
    """Sends one message to every partition every SEND_EVERY_S, until stopped."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from confluent_kafka import Producer

        self.topic = topic
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": "2"})
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        started = time.monotonic()
        tick = 0
        while not self.stop.is_set():
            due = started + tick * SEND_EVERY_S
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            sent_us = time.time_ns() // 1000
            for shard in range(SHARDS):
                doc = {
                    "database": "bench",
                    "table": "t",
                    "type": "insert",
                    "data": {"n": tick, "sent_us": sent_us},
                }
                self.producer.produce(self.topic, json.dumps(doc).encode(), partition=shard)
            self.sent += SHARDS
            self.producer.poll(0)
            tick += 1
        self.producer.flush(10)


Timeline = dict[str, list[tuple[int, float]]]  # consumer -> [(shard, receive s)]


def read_timeline(files: dict[str, Path]) -> Timeline:
    from processes import read_lines

    return {
        name: [(int(f[0]), int(f[1]) / 1e6) for f in read_lines(path)]
        for name, path in files.items()
    }


def read_delays(files: dict[str, Path]) -> list[tuple[int, float, float]]:
    """(shard, receive s, receive - oldest send of the batch in s) of every batch."""
    from processes import read_lines

    return [
        (int(f[0]), int(f[1]) / 1e6, (int(f[1]) - int(f[3])) / 1e6)
        for path in files.values()
        for f in read_lines(path)
        if len(f) > 3
    ]


def step_delays(
    delays: list[tuple[int, float, float]], start: float, end: float
) -> dict[int, float]:
    """Per shard, the longest send -> handling delay of a batch handled in [start, end]."""
    out: dict[int, float] = {}
    for shard, received, delay in delays:
        if start <= received <= end:
            out[shard] = max(delay, out.get(shard, 0.0))
    return out


def step_gaps(
    timeline: Timeline, start: float, end: float
) -> tuple[dict[int, float], set[int], dict[int, float]]:
    """Per shard: longest gap in [start - 1 s, end], whether it moved, and when it
    first flowed on its new consumer (moved shards only)."""
    per_shard: dict[int, list[tuple[float, str]]] = {}
    for name, items in timeline.items():
        for shard, t in items:
            if start - 1.0 <= t <= end:
                per_shard.setdefault(shard, []).append((t, name))
    gaps: dict[int, float] = {}
    moved: set[int] = set()
    resumed: dict[int, float] = {}
    for shard in range(SHARDS):
        seen = sorted(per_shard.get(shard, []))
        before = [n for t, n in seen if t < start]
        after = [(t, n) for t, n in seen if t >= start]
        times = [t for t, _ in seen]
        edges = [start - 1.0, *times, end]
        gaps[shard] = max(b - a for a, b in pairwise(edges))
        owner_before = before[-1] if before else None
        owner_after = after[-1][1] if after else None
        if owner_before != owner_after:
            moved.add(shard)
            first_new = [t for t, n in after if n == owner_after]
            resumed[shard] = (first_new[0] if first_new else end) - start
    return gaps, moved, resumed


def report(
    label: str,
    timeline: Timeline,
    delays: list[tuple[int, float, float]],
    steps: list[tuple[str, float, float]],
) -> None:
    from processes import percentile

    def fmt(values: list[float]) -> str:
        if not values:
            return "-"
        return f"{percentile(values, 50):.3f}/{percentile(values, 99):.3f}/{max(values):.3f}"

    print(f"\n{label}")
    print(
        f"  {'step':<6} {'moved':>5} {'moved gap p50/p99/max s':>26}   "
        f"{'unmoved':>7} {'unmoved gap p50/p99/max s':>26}"
    )
    moved_by_step: dict[str, set[int]] = {}
    for name, start, end in steps:
        gaps, moved, resumed = step_gaps(timeline, start, end)
        moved_by_step[name] = moved
        m = [gaps[s] for s in moved]
        u = [gaps[s] for s in gaps if s not in moved]
        print(f"  {name:<6} {len(m):>5} {fmt(m):>26}   {len(u):>7} {fmt(u):>26}")
        if name == "kill" and resumed:
            print(
                f"         kill -9 -> every moved shard flowing again: "
                f"{max(resumed.values()):.2f} s (first {min(resumed.values()):.2f} s)"
            )
    # A stall of the load (its producer, the broker) shows as a gap of every shard at
    # once but delays no event: the delay counts only time events waited for a consumer.
    print(
        f"  {'step':<6} {'moved':>5} {'moved delay p50/p99/max s':>26}   "
        f"{'unmoved':>7} {'unmoved delay p50/p99/max s':>26}"
    )
    for name, start, end in steps:
        longest = step_delays(delays, start - 1.0, end)
        moved = moved_by_step[name]
        m = [d for s, d in longest.items() if s in moved]
        u = [d for s, d in longest.items() if s not in moved]
        print(f"  {name:<6} {len(m):>5} {fmt(m):>26}   {len(u):>7} {fmt(u):>26}")


def wait_flowing(files: dict[str, Path], since: float, timeout: float, expect: int) -> None:
    """Until every shard had a batch after `since` and `expect` consumers report."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        timeline = read_timeline(files)
        shards = {s for items in timeline.values() for s, t in items if t > since}
        active = sum(1 for items in timeline.values() if any(t > since for _, t in items))
        if len(shards) == SHARDS and active >= expect:
            return
        time.sleep(0.5)
    raise RuntimeError(f"not every shard flowed on {expect} consumers within {timeout}s")


LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT[\d:.]+)Z \[\s*\w+\s*\] (.*)$")
ACQUIRED = re.compile(r"^(\w+): acquired shard (\d+) token")
RELEASED = re.compile(r"^(\w+): released shard (\d+) token")
ASSIGNED = re.compile(r"^kafka: shard (\d+) assigned")
SERVING = re.compile(r"^(\w+): serving")
GENERATION = re.compile(r"^\w+: wrote generation (\d+)")


def read_log(path: Path) -> list[tuple[float, str]]:
    """(wall time, message) of each line of a console-format shardctl log."""
    out: list[tuple[float, str]] = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        match = LOG_LINE.match(line)
        if match:
            when = datetime.fromisoformat(match[1]).replace(tzinfo=UTC).timestamp()
            out.append((when, match[2]))
    return out


def first_after(
    lines: list[tuple[float, str]],
    pattern: re.Pattern[str],
    span: tuple[float, float],
    *groups: str,
) -> float | None:
    """The time of the first line within `span` matching `pattern` with `groups`."""
    for when, text in lines:
        match = pattern.match(text)
        if span[0] <= when <= span[1] and match and match.groups() == groups:
            return when
    return None


def breakdown(workdir: Path, step: str) -> None:
    """Where the pause of the moved shards of one step went, from the logs and the
    batch files of a run's `workdir` (the step times are in its steps.json)."""
    from processes import percentile

    steps = {
        name: (start, end) for name, start, end in json.loads((workdir / "steps.json").read_text())
    }
    if step not in steps:
        return
    start, end = steps[step]
    files = {f"w{i}": workdir / f"w{i}.txt" for i in range(1, 5)}
    timeline = read_timeline(files)
    logs = {name: read_log(workdir / f"{name}.log") for name in files}
    coordinator = read_log(workdir / "coordinator.log")
    _gaps, moved, _resumed = step_gaps(timeline, start, end)
    phases: dict[str, list[float]] = {}

    def add(phase: str, a: float | None, b: float | None) -> None:
        if a is not None and b is not None:
            phases.setdefault(phase, []).append(b - a)

    once: list[tuple[str, float | None, float | None]] = []
    trigger = start
    if step == "join":
        joined = first_after(logs["w4"], SERVING, (start, end), "w4")
        once.append(("process start -> registered (serving)", start, joined))
        trigger = joined if joined is not None else start
    generation = next(
        (when for when, text in coordinator if when >= trigger and GENERATION.match(text)), None
    )
    once.append(("trigger -> coordinator wrote the generation", trigger, generation))
    for shard in sorted(moved):
        seen = sorted(
            (t, name)
            for name, items in timeline.items()
            for s, t in items
            if s == shard and start - 1.0 <= t <= end
        )
        before = [(t, n) for t, n in seen if t < (generation or start)]
        if not before:
            continue
        last_old, old = before[-1]
        after = [(t, n) for t, n in seen if t > last_old and n != old]
        if not after:
            continue
        first_new, new = after[0]
        released = first_after(logs[old], RELEASED, (start, end), old, str(shard))
        acquired = first_after(logs[new], ACQUIRED, (start, end), new, str(shard))
        assigned = first_after(logs[new], ASSIGNED, (acquired or start, end), str(shard))
        add("generation -> old owner released (stop, commit, delete)", generation, released)
        add("old owner's last batch -> released", last_old, released)
        add("released -> new owner acquired (watch, create, read offset)", released, acquired)
        add("acquired -> partition assigned (consumer start)", acquired, assigned)
        add("assigned -> first batch handled (first fetch, poll)", assigned, first_new)
        add("gap: old owner's last batch -> new owner's first", last_old, first_new)
    print(f"\nwhere the {step} pause went ({len(moved)} moved shards), seconds")
    for label, a, b in once:
        print(f"  {label:<60} {'-' if a is None or b is None else f'{b - a:.3f}':>20}")
    for label, values in phases.items():
        figures = f"{percentile(values, 50):.3f}/{percentile(values, 99):.3f}/{max(values):.3f}"
        print(f"  {label:<60} {figures:>20}")


RESHARD_FROM, RESHARD_TO = 8, 12
RESHARD_TICK_S = 0.01


def key_of(database: str, row: int) -> bytes:
    """The Kafka message key of row `row` of `items` (the shard hash input)."""
    return f'{{"database":"{database}","table":"items","pk.id":{row}}}'.encode()


def per_key(lines: list[list[str]], since: float, until: float) -> dict[int, tuple[float, float]]:
    """Per row id: (longest write -> handling delay, longest gap between handlings) of
    the handlings in [since, until], in seconds."""
    seen: dict[int, list[tuple[float, float]]] = {}
    for fields in lines:
        received = int(fields[1]) / 1e6
        if since <= received <= until:
            seen.setdefault(int(fields[0]), []).append((received, int(fields[2]) / 1e6))
    out: dict[int, tuple[float, float]] = {}
    for row, items in seen.items():
        items.sort()
        delay = max(r - w for r, w in items)
        gap = max((b[0] - a[0] for a, b in pairwise(items)), default=0.0)
        out[row] = (delay, gap)
    return out


def reshard_run(args: argparse.Namespace) -> None:
    """Grow 8 -> 12 shards under load on the whole pipeline; prints the figures."""
    import asyncio
    import zlib

    import pymysql
    from processes import Bench, percentile, read_lines

    from shardctl.core.etcd import EtcdClient
    from shardctl.core.hashing import shard_of
    from shardctl.core.keyspace import Keyspace
    from shardctl.core.records import Reshard

    workdir = Path(tempfile.mkdtemp(prefix="shardctl-reshard-"))
    bench = Bench("reshard", workdir)
    database = f"bench_reshard_{bench.token}"
    topic = f"bench-reshard-{bench.token}"
    out = workdir / "keys.txt"
    keys = args.reshard_keys
    per_tick = max(1, round(keys * RESHARD_TICK_S / 0.5))  # each key about every 0.5 s
    root = pymysql.connect(
        host="127.0.0.1", port=bench.mysql_port, user="root", password="", autocommit=True
    )
    settings = bench.settings()
    reshard_key = Keyspace.of(settings).reshard

    async def read_reshard() -> Reshard | None:
        async with EtcdClient(settings.etcd) as client:
            kv = await client.get(reshard_key)
        return None if kv is None else Reshard.decode(kv.key, kv.value)

    stop = threading.Event()
    try:
        with root.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{database}`")
            cur.execute(
                f"CREATE TABLE `{database}`.items (id INT PRIMARY KEY, written_us BIGINT NOT NULL)"
            )
        bench.topics.append(topic)
        bench.run_shardctl("cluster", "init", "--shards", str(RESHARD_FROM), "--topic", topic)
        cdc_env = {
            "SHARDCTL_CDC_KAFKA_TOPIC": topic,
            "SHARDCTL_CDC_SOURCE": f"reshard-{bench.token}",
            "SHARDCTL_CDC_SERVER_ID": str(20_000 + zlib.crc32(bench.token.encode()) % 2**30),
            "SHARDCTL_CDC_FILTER": f"exclude: *.*, include: {database}.items",
        }
        bench.shardctl("cdc", "cdc", "run", "--reader-id", "r1", env=cdc_env)
        bench.shardctl("coordinator", "coordinator", "run", "--id", "c1", "--stabilization", "0.3")
        for name in ("w1", "w2", "w3"):
            bench.shardctl(
                name,
                "worker",
                "run",
                "--id",
                name,
                "--topic",
                topic,
                "--commit-interval",
                str(args.commit_interval),
                "--handler",
                "rebalance_pause:KeyClock",
                "--handler-option",
                f"out={out}",
            )

        def writer() -> None:
            conn = pymysql.connect(
                host="127.0.0.1", port=bench.mysql_port, user="root", password="", database=database
            )
            tick = 0
            started = time.monotonic()
            with conn.cursor() as cur:
                while not stop.is_set():
                    wait = started + tick * RESHARD_TICK_S - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    now_us = time.time_ns() // 1000
                    rows = [(1 + (tick * per_tick + i) % keys, now_us) for i in range(per_tick)]
                    cur.executemany(
                        "INSERT INTO items VALUES (%s, %s) "
                        "ON DUPLICATE KEY UPDATE written_us = VALUES(written_us)",
                        rows,
                    )
                    conn.commit()
                    tick += 1
            conn.close()

        load = threading.Thread(target=writer, daemon=True)
        load.start()
        deadline = time.monotonic() + 120
        while len({f[0] for f in read_lines(out)}) < keys:
            if not load.is_alive():
                raise RuntimeError("the writer stopped (its error is printed above)")
            for name in ("cdc", "coordinator", "w1", "w2", "w3"):
                if not bench.alive(name):
                    raise RuntimeError(f"{name} exited:\n{bench.log(name)[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("not every key reached a worker within 120 s")
            time.sleep(0.5)
        steady_from = time.time()
        time.sleep(args.window)
        requested = time.time()
        bench.run_shardctl("shards", "set", str(RESHARD_TO))
        switched = completed = None
        deadline = time.monotonic() + 300
        while completed is None:
            record = asyncio.run(read_reshard())
            if record is not None and record.switched_at is not None:
                switched = record.switched_at
            if record is not None and record.state == "complete":
                completed = record.completed_at
            if time.monotonic() > deadline:
                raise RuntimeError(f"the change did not complete within 300 s: {record}")
            time.sleep(0.05)
        time.sleep(args.window)
        stop.set()
        load.join(10)
        time.sleep(3.0)  # the last writes reach the handler
    finally:
        stop.set()
        with root.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{database}`")
        root.close()
        bench.close()

    assert switched is not None and completed is not None
    lines = read_lines(out)
    before = per_key(lines, steady_from, requested)
    during = per_key(lines, requested, completed + 2.0)
    moved = {
        row
        for row in range(1, keys + 1)
        if shard_of(key_of(database, row), RESHARD_FROM, "jump")
        != shard_of(key_of(database, row), RESHARD_TO, "jump")
    }
    crc_moved = sum(
        zlib.crc32(key_of(database, row)) % RESHARD_FROM
        != zlib.crc32(key_of(database, row)) % RESHARD_TO
        for row in range(1, keys + 1)
    )

    def fmt(values: list[float]) -> str:
        if not values:
            return "-"
        return f"{percentile(values, 50):.3f}/{percentile(values, 99):.3f}/{max(values):.3f}"

    print(
        f"\nresharding {RESHARD_FROM} -> {RESHARD_TO} under load: {keys} keys, each updated "
        f"every {keys / per_tick * RESHARD_TICK_S:.2f} s ({per_tick / RESHARD_TICK_S:.0f} "
        f"rows/s); commit interval "
        f"{args.commit_interval} s; load average {os.getloadavg()[0]:.2f}"
    )
    print(f"  shards set -> reader switched: {switched - requested:.2f} s")
    print(f"  shards set -> change complete: {completed - requested:.2f} s")
    print(f"  {'per key, s':<34} {'delay p50/p99/max':>20} {'gap p50/p99/max':>20}")
    for label, figures, rows in (
        ("before the change, all keys", before, set(before)),
        ("during the change, unmoved keys", during, set(during) - moved),
        ("during the change, moved keys", during, set(during) & moved),
    ):
        delays = [figures[r][0] for r in rows]
        gaps = [figures[r][1] for r in rows]
        print(f"  {label:<34} {fmt(delays):>20} {fmt(gaps):>20}")
    minimum = keys * (RESHARD_TO - RESHARD_FROM) / RESHARD_TO
    print(
        f"  keys moved: {len(moved)} of {keys} (jump); the least possible is {minimum:.0f}; "
        f"crc32 % N would move {crc_moved}"
    )


def main() -> None:
    from processes import Bench

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--timeout", type=int, default=6, help="lease TTL / session timeout, s")
    parser.add_argument("--window", type=float, default=10.0, help="seconds measured per step")
    parser.add_argument(
        "--commit-interval",
        type=float,
        default=1.0,
        help="workers' --commit-interval, s (default: the worker's own default; a "
        "handoff does not wait for it)",
    )
    parser.add_argument("--skip-reshard", action="store_true", help="no resharding run")
    parser.add_argument(
        "--only-reshard", action="store_true", help="only the resharding run (no join/drain/kill)"
    )
    parser.add_argument(
        "--reshard-keys", type=int, default=120, help="rows updated during the resharding run"
    )
    parser.add_argument(
        "--breakdown",
        type=Path,
        metavar="DIR",
        help="only print where the join and drain pauses went in an earlier run's logs",
    )
    args = parser.parse_args()
    if args.breakdown is not None:
        for step in ("join", "drain"):
            breakdown(args.breakdown, step)
        return
    if args.only_reshard:
        reshard_run(args)
        return

    workdir = Path(tempfile.mkdtemp(prefix="shardctl-rebalance-"))
    bench = Bench("rebalance", workdir)
    topic = f"bench-rebalance-{bench.token}"
    kill_window = args.timeout + args.window
    ours: list[tuple[str, float, float]] = []
    theirs: list[tuple[str, float, float]] = []
    worker_files = {f"w{i}": workdir / f"w{i}.txt" for i in range(1, 5)}
    group_files = {f"c{i}": workdir / f"c{i}.txt" for i in range(1, 5)}
    load = None
    try:
        bench.create_topic(topic, SHARDS)
        bench.run_shardctl("shards", "set", str(SHARDS))
        bench.shardctl("coordinator", "coordinator", "run", "--id", "c1", "--stabilization", "0.3")

        def worker(name: str) -> None:
            bench.shardctl(
                name,
                "worker",
                "run",
                "--id",
                name,
                "--topic",
                topic,
                "--ttl",
                str(args.timeout),
                "--commit-interval",
                str(args.commit_interval),
                "--handler",
                "rebalance_pause:BatchClock",
                "--handler-option",
                f"out={worker_files[name]}",
            )

        def member(name: str) -> None:
            bench.python(
                name,
                str(Path(__file__)),
                "--group-consumer",
                bench.bootstrap,
                topic,
                f"bench-group-{bench.token}",
                str(args.timeout),
                str(group_files[name]),
            )

        for name in ("w1", "w2", "w3"):
            worker(name)
        load = Load(bench.bootstrap, topic)
        load.thread.start()
        started = time.time()
        wait_flowing({k: worker_files[k] for k in ("w1", "w2", "w3")}, started, 90, 3)
        time.sleep(3.0)
        print(f"shardctl: 3 workers flowing; logs in {workdir}")

        t = time.time()
        worker("w4")
        time.sleep(args.window)
        ours.append(("join", t, t + args.window))
        t = time.time()
        bench.signal("w1", signal.SIGTERM)
        time.sleep(args.window)
        ours.append(("drain", t, t + args.window))
        t = time.time()
        bench.signal("w2", signal.SIGKILL)
        time.sleep(kill_window)
        ours.append(("kill", t, t + kill_window))
        for name in ("w3", "w4"):
            bench.signal(name, signal.SIGKILL)

        for name in ("c1", "c2", "c3"):
            member(name)
        started = time.time()
        wait_flowing({k: group_files[k] for k in ("c1", "c2", "c3")}, started, 90, 3)
        time.sleep(3.0)
        print("consumer group: 3 members flowing")
        t = time.time()
        member("c4")
        time.sleep(args.window)
        theirs.append(("join", t, t + args.window))
        t = time.time()
        bench.signal("c1", signal.SIGTERM)
        time.sleep(args.window)
        theirs.append(("drain", t, t + args.window))
        t = time.time()
        bench.signal("c2", signal.SIGKILL)
        time.sleep(kill_window)
        theirs.append(("kill", t, t + kill_window))
    finally:
        if load is not None:
            load.stop.set()
            load.thread.join(15)
        bench.close()
        (workdir / "steps.json").write_text(json.dumps(ours))

    print(
        f"\n64 shards, {SHARDS / SEND_EVERY_S:.0f} messages/s ({1 / SEND_EVERY_S:.0f}/s per shard)"
    )
    print(
        f"lease TTL = session timeout = {args.timeout} s; workers' commit interval "
        f"{args.commit_interval} s; gaps in seconds"
    )
    report(
        "shardctl workers (fenced handoff, assign())",
        read_timeline(worker_files),
        read_delays(worker_files),
        ours,
    )
    report(
        "baseline: consumer group, cooperative-sticky",
        read_timeline(group_files),
        read_delays(group_files),
        theirs,
    )
    for step in ("join", "drain"):
        breakdown(workdir, step)
    if not args.skip_reshard:
        reshard_run(args)


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--group-consumer":
        _, _, bootstrap_arg, topic_arg, group_arg, timeout_arg, out_arg = sys.argv
        group_consumer(bootstrap_arg, topic_arg, group_arg, float(timeout_arg), out_arg)
    else:
        main()
