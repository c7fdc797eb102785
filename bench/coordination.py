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
   (bounded below by the lease TTL);
4. a rolling restart of 3 workers over 64 shards (each in turn: SIGTERM, wait for its
   exit, start it again under the same id, wait until balanced and owned), without
   and with `--restart-grace`: the shard moves over every generation written, and
   the time the whole restart took;
5. an etcd outage longer than the TTL (`--outage`, default TTL + 2 s; the local
   stack's etcd is stopped and started again, `--skip-outage` leaves it alone): from
   etcd's start until every one of 64 shards has committed an offset again.
Parts 2 to 5 use real etcd (SHARDCTL_ETCD_*) and real processes (`--handler noop`),
in a cluster name of their own that is deleted afterwards. The load average is
printed with the figures: the machine may be shared.
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
from itertools import pairwise
from pathlib import Path

from coordinator.assignment import Member, assign
from shardctl.core.config import Settings, load_settings
from shardctl.core.etcd import EtcdClient, EtcdUnavailable
from shardctl.core.keyspace import Keyspace
from shardctl.core.processes import ProcessGroup
from shardctl.core.records import Assignment


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

    def worker(self, name: str, *extra: str) -> None:
        self.spawn(
            name, "worker", "run", "--handler", "noop", "--id", name, "--ttl", str(self.ttl), *extra
        )

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


def owner_changes(assignments: list[Assignment]) -> int:
    """Shards given to another worker, summed over consecutive generations."""
    moves = 0
    for before, after in pairwise(assignments):
        for shard, owner in enumerate(after.owners):
            old = before.owners[shard] if shard < len(before.owners) else None
            if owner is not None and old is not None and owner != old:
                moves += 1
    return moves


async def rolling_restart(
    base: Settings, args: argparse.Namespace, logdir: Path, grace: float
) -> tuple[int, float]:
    """(shard moves, seconds) of a rolling restart of w1..w3 with `--restart-grace`."""
    from shardctl.core.etcd.watch import watch_key

    run = Run(base, args.ttl, args.stabilization, logdir)
    workers = {"w1", "w2", "w3"}
    extra = ("--restart-grace", str(grace)) if grace else ()
    seen: list[Assignment] = []

    async def follow(client: EtcdClient) -> None:
        # Runs until cancelled: a comprehension would never hand the list over.
        async for kv in watch_key(client, run.keys.assignment):
            if kv is not None:
                seen.append(Assignment.decode(kv.key, kv.value))  # noqa: PERF401

    async with EtcdClient(run.settings.etcd) as client:
        watcher = asyncio.get_running_loop().create_task(follow(client))
        try:
            await client.put(run.keys.config, b'{"num_shards": 64}')
            run.coordinator()
            for name in sorted(workers):
                run.worker(name, *extra)
            await run.wait_settled(client, workers, 64)
            first = len(seen) - 1
            started = time.monotonic()
            for name in sorted(workers):
                run.procs[name].terminate()
                await asyncio.to_thread(run.procs[name].wait, 60)
                run.worker(name, *extra)
                await run.wait_settled(client, workers, 64)
            took = time.monotonic() - started
            return owner_changes(seen[max(0, first) :]), took
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            run.close()
            await client.delete_prefix(run.keys.root)


async def etcd_outage(base: Settings, args: argparse.Namespace, logdir: Path) -> float:
    """Seconds from etcd's start, after an outage of `args.outage` s, until every
    shard committed an offset again."""
    from shardctl.cli.dev import load_devstack

    stack = load_devstack().Stack()
    run = Run(base, args.ttl, args.stabilization, logdir)
    workers = {"w1", "w2", "w3"}
    try:
        async with EtcdClient(run.settings.etcd) as client:
            await client.put(run.keys.config, b'{"num_shards": 64}')
            run.coordinator()
            for name in sorted(workers):
                run.worker(name, "--commit-interval", "0.2")
            await run.wait_settled(client, workers, 64)
        await asyncio.to_thread(stack.stop, "etcd")
        await asyncio.sleep(args.outage)
        await asyncio.to_thread(stack.start, "etcd", lambda _msg: None)
        back = time.monotonic()
        async with EtcdClient(run.settings.etcd) as client:
            since = None
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    listing = await client.get_prefix(run.keys.offsets_prefix)
                except EtcdUnavailable:
                    await asyncio.sleep(0.05)
                    continue
                if since is None:
                    since = listing.revision
                fresh = {
                    run.keys.shard_of_offset_key(kv.key)
                    for kv in listing.items
                    if kv.mod_revision > since
                }
                if len(fresh) == 64:
                    return time.monotonic() - back
                await asyncio.sleep(0.05)
            raise RuntimeError(f"{run.cluster}: shards not all committing 120 s after the outage")
    finally:
        await asyncio.to_thread(stack.start, "etcd", lambda _msg: None)
        run.close()
        async with EtcdClient(run.settings.etcd) as client:
            await client.delete_prefix(run.keys.root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--ttl", type=int, default=3)
    parser.add_argument("--stabilization", type=float, default=1.0)
    parser.add_argument("--skip-processes", action="store_true")
    parser.add_argument("--skip-outage", action="store_true", help="leave etcd running")
    parser.add_argument("--outage", type=float, default=None, help="seconds; default TTL + 2")
    parser.add_argument("--grace", type=float, default=15.0, help="--restart-grace in part 4")
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
    print(f"  load average {os.getloadavg()[0]:.2f}")

    for grace in (0.0, args.grace):
        moves, took = asyncio.run(rolling_restart(base, args, args.logdir, grace))
        what = f"--restart-grace {grace:g}" if grace else "no grace (SIGTERM drains)"
        print(
            f"rolling restart of 3 workers, 64 shards, {what}: {moves} shard moves, "
            f"{took:.2f}s; load average {os.getloadavg()[0]:.2f}",
            flush=True,
        )
    if args.skip_outage:
        return
    if args.outage is None:
        args.outage = args.ttl + 2.0
    recovery = asyncio.run(etcd_outage(base, args, args.logdir))
    print(
        f"etcd down {args.outage:g}s (TTL {args.ttl}s), 64 shards over 3 workers: every shard "
        f"committing again {recovery:.2f}s after etcd started; load average "
        f"{os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
