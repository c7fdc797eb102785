"""Rebalance pause: the longest processing gap per shard while workers join, drain and
die, for shardctl workers and for a plain confluent-kafka consumer group.

Setup: one topic with 64 partitions (= shards) under steady load (a producer thread
sends one message to every partition every 40 ms, so a flowing shard sees a batch at
least every ~40 ms). Each consumer writes `<shard> <receive µs> <events>` per batch.

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
time until the dead consumer's shards all flowed again. The lease TTL of the workers
and the session timeout of the group are both `--timeout` seconds (6 by default, the
broker's minimum session timeout). The workers commit offsets every
`--commit-interval` seconds (1 by default, the worker's default); a handoff does not
wait for that tick. Not a test: it asserts nothing about speed.

    .venv/bin/python bench/rebalance_pause.py
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
import time
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
    """Handler: appends `<shard> <receive µs> <events>` per batch to the `out` file."""

    def __init__(self, context: HandlerContext) -> None:
        self._out = _open_append(context.options["out"])

    async def on_events(self, batch: Batch) -> None:
        self._out.write(f"{batch.shard} {time.time_ns() // 1000} {len(batch.events)}\n")
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
            for msg in messages:
                part = msg.partition()
                if msg.error() is None and part is not None:
                    counts[part] = counts.get(part, 0) + 1
            sink.write("".join(f"{p} {now_us} {n}\n" for p, n in counts.items()))
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
            for shard in range(SHARDS):
                doc = {"database": "bench", "table": "t", "type": "insert", "data": {"n": tick}}
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


def report(label: str, timeline: Timeline, steps: list[tuple[str, float, float]]) -> None:
    from processes import percentile

    print(f"\n{label}")
    print(
        f"  {'step':<6} {'moved':>5} {'moved gap p50/p99/max s':>26}   "
        f"{'unmoved':>7} {'unmoved gap p50/p99/max s':>26}"
    )
    for name, start, end in steps:
        gaps, moved, resumed = step_gaps(timeline, start, end)
        m = [gaps[s] for s in moved]
        u = [gaps[s] for s in gaps if s not in moved]

        def fmt(values: list[float]) -> str:
            if not values:
                return "-"
            return f"{percentile(values, 50):.3f}/{percentile(values, 99):.3f}/{max(values):.3f}"

        print(f"  {name:<6} {len(m):>5} {fmt(m):>26}   {len(u):>7} {fmt(u):>26}")
        if name == "kill" and resumed:
            print(
                f"         kill -9 -> every moved shard flowing again: "
                f"{max(resumed.values()):.2f} s (first {min(resumed.values()):.2f} s)"
            )


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
    args = parser.parse_args()

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

    print(
        f"\n64 shards, {SHARDS / SEND_EVERY_S:.0f} messages/s ({1 / SEND_EVERY_S:.0f}/s per shard)"
    )
    print(
        f"lease TTL = session timeout = {args.timeout} s; workers' commit interval "
        f"{args.commit_interval} s; gaps in seconds"
    )
    report("shardctl workers (fenced handoff, assign())", read_timeline(worker_files), ours)
    report("baseline: consumer group, cooperative-sticky", read_timeline(group_files), theirs)


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--group-consumer":
        _, _, bootstrap_arg, topic_arg, group_arg, timeout_arg, out_arg = sys.argv
        group_consumer(bootstrap_arg, topic_arg, group_arg, float(timeout_arg), out_arg)
    else:
        main()
