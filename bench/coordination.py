"""Coordination figures: assignment compute time, join rebalance time, failover time.

    eval "$(shardctl dev env)"
    python bench/coordination.py [--runs 5] [--ttl 3] [--stabilization 1.0]

Prints the median of `--runs` runs of:
1. assign() for 1k/10k/100k shards over 10/100/1000 workers, from nothing ("fresh")
   and after one more worker joins a balanced assignment ("join");
2. with 64 shards and 3 workers, from starting `shardctl worker run` for a 4th worker
   until the assignment is balanced over 4 and every moved shard is owned by its
   new worker (includes process start-up and the stabilization delay);
3. with 64 shards and 4 workers, from kill -9 of one until every shard is owned again
   (bounded below by the lease TTL).
Parts 2 and 3 use real etcd (SHARDCTL_ETCD_*) and real processes, in a cluster name
of their own that is deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import time
import uuid
from pathlib import Path

from coordinator.assignment import Member, assign
from shardctl.config import Settings, load_settings
from shardctl.etcd import EtcdClient
from shardctl.keyspace import Keyspace
from shardctl.processes import ProcessGroup
from shardctl.records import Assignment


def bench_assign(runs: int) -> None:
    print("assign(): median of", runs, "runs")
    print(f"{'shards':>8} {'workers':>8} {'fresh ms':>10} {'join ms':>10}")
    for shards in (1_000, 10_000, 100_000):
        for workers in (10, 100, 1000):
            members = {f"worker-{i:05d}": Member() for i in range(workers)}
            fresh, join = [], []
            for _ in range(runs):
                t0 = time.perf_counter()
                owners = assign([], members, shards)
                fresh.append(time.perf_counter() - t0)
                grown = {**members, "worker-new": Member()}
                t0 = time.perf_counter()
                assign(owners, grown, shards)
                join.append(time.perf_counter() - t0)
            print(
                f"{shards:>8} {workers:>8} {statistics.median(fresh) * 1e3:>10.1f} "
                f"{statistics.median(join) * 1e3:>10.1f}"
            )


class Run:
    """One cluster of real processes."""

    def __init__(self, base: Settings, ttl: int, stabilization: float, logdir: Path) -> None:
        self.cluster = "bench" + uuid.uuid4().hex[:8]
        self.settings = base.model_copy(update={"cluster": self.cluster})
        self.keys = Keyspace.of(self.settings)
        self.ttl = ttl
        self.stabilization = stabilization
        self.logdir = logdir
        self.env = {**os.environ, "SHARDCTL_CLUSTER": self.cluster}
        self.processes = ProcessGroup(logdir, self.env, prefix=f"{self.cluster}-")

    def spawn(self, name: str, *args: str) -> None:
        self.processes.shardctl(name, *args)

    def worker(self, name: str) -> None:
        self.spawn(name, "worker", "run", "--handler", "noop", "--id", name, "--ttl", str(self.ttl))

    def coordinator(self) -> None:
        self.spawn(
            "c1",
            "coordinator",
            "run",
            "--id",
            "c1",
            "--ttl",
            str(self.ttl),
            "--stabilization",
            str(self.stabilization),
        )

    async def settled(self, client: EtcdClient, workers: set[str], shards: int) -> bool:
        kv = await client.get(self.keys.assignment)
        if kv is None:
            return False
        current = Assignment.decode(kv.key, kv.value)
        if current.num_shards != shards or set(current.owners) != workers:
            return False
        counts = [current.owners.count(w) for w in workers]
        if max(counts) - min(counts) > 1:
            return False
        owners = await client.get_prefix(self.keys.owners_prefix)
        held = {self.keys.shard_of_owner_key(o.key): o.value.decode() for o in owners.items}
        return all(held.get(s) == w for s, w in enumerate(current.owners))

    async def wait_settled(self, client: EtcdClient, workers: set[str], shards: int) -> None:
        deadline = time.monotonic() + 120
        while not await self.settled(client, workers, shards):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.cluster}: never settled on {sorted(workers)}")
            await asyncio.sleep(0.01)

    def close(self) -> None:
        self.processes.stop_all(grace_s=0)


async def one_run(base: Settings, args: argparse.Namespace, logdir: Path) -> tuple[float, float]:
    run = Run(base, args.ttl, args.stabilization, logdir)
    async with EtcdClient(run.settings.etcd) as client:
        try:
            await client.put(run.keys.config, b'{"num_shards": 64}')
            run.coordinator()
            for name in ("w1", "w2", "w3"):
                run.worker(name)
            await run.wait_settled(client, {"w1", "w2", "w3"}, 64)
            started = time.monotonic()
            run.worker("w4")
            await run.wait_settled(client, {"w1", "w2", "w3", "w4"}, 64)
            join = time.monotonic() - started
            killed = time.monotonic()
            run.processes.signal("w2", signal.SIGKILL)
            await run.wait_settled(client, {"w1", "w3", "w4"}, 64)
            failover = time.monotonic() - killed
            return join, failover
        finally:
            run.close()
            await client.delete_prefix(run.keys.root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--ttl", type=int, default=3)
    parser.add_argument("--stabilization", type=float, default=1.0)
    parser.add_argument("--skip-processes", action="store_true")
    parser.add_argument("--logdir", type=Path, default=Path("/tmp"))
    args = parser.parse_args()
    bench_assign(args.runs)
    if args.skip_processes:
        return
    if "SHARDCTL_ETCD_ENDPOINTS" not in os.environ:
        sys.exit('SHARDCTL_ETCD_ENDPOINTS is not set: run eval "$(shardctl dev env)" first')
    base = load_settings()
    joins, failovers = [], []
    for i in range(args.runs):
        join, failover = asyncio.run(one_run(base, args, args.logdir))
        joins.append(join)
        failovers.append(failover)
        print(f"run {i + 1}: join {join:.2f}s, kill -9 failover {failover:.2f}s", flush=True)
    print(
        f"64 shards, ttl {args.ttl}s, stabilization {args.stabilization}s, median of {args.runs}:"
    )
    print(f"  4th worker start -> balanced and owned: {statistics.median(joins):.2f}s")
    print(f"  kill -9 -> every shard owned again:     {statistics.median(failovers):.2f}s")


if __name__ == "__main__":
    main()
