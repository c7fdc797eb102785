"""The assignment of 100k shards over 1000 pod-named workers, through the real etcd.

The coordinator writes it with its fenced writer; a worker reads it with its own
reader. etcd's default request limit is 1.5 MiB: a list of 100k worker ids of 31
characters is about 3.4 MB, so the assignment has to be encoded compactly.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys

import pytest

from coordinator.assignment import Member
from coordinator.writer import Current, next_assignment, write_assignment
from shardctl.core.config import Settings
from shardctl.core.etcd import Election, EtcdClient, Session
from shardctl.core.keyspace import Keyspace
from shardctl.core.records import MAX_SHARDS, Assignment, ClusterConfig
from tests.conftest import StackHandle
from tests.polling import wait_async
from workers.worker import _Mirrors

pytestmark = pytest.mark.integration

NUM_SHARDS = 100_000
NUM_WORKERS = 1000


def pod_names(count: int, seed: int) -> list[str]:
    """Ids shaped like Kubernetes pod names: `shardctl-worker-<replicaset>-<suffix>`."""
    rng = random.Random(seed)
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    replicaset = "".join(rng.choice("0123456789abcdef") for _ in range(9))
    names: set[str] = set()
    while len(names) < count:
        names.add(f"shardctl-worker-{replicaset}-{''.join(rng.choices(alphabet, k=5))}")
    return sorted(names)


def by_worker(owners: list[str | None]) -> dict[str, set[int]]:
    held: dict[str, set[int]] = {}
    for shard, owner in enumerate(owners):
        if owner is not None:
            held.setdefault(owner, set()).add(shard)
    return held


def test_100k_shards_over_1000_workers_write_and_read_back(settings: Settings) -> None:
    workers = pod_names(NUM_WORKERS, seed=10)
    keys = Keyspace.of(settings)
    members = {w: Member() for w in workers}
    first = next_assignment(None, members, ClusterConfig(num_shards=NUM_SHARDS), None)
    assert first is not None and set(first.owners) == set(workers)
    # The most fragmented layout: neighbouring shards never share an owner, and some
    # shards have none (their owner left).
    scattered: list[str | None] = [
        None if s % 997 == 0 else workers[s % NUM_WORKERS] for s in range(NUM_SHARDS)
    ]
    second = Assignment(generation=2, num_shards=NUM_SHARDS, owners=scattered)

    async def main() -> None:
        async with EtcdClient(settings.etcd) as client:
            session = await Session.open(settings.etcd, ttl=10, name="coordinator")
            reader = _Mirrors(client, keys, workers[0])
            try:
                leadership = await Election(client, keys.coordinator_leader).campaign(
                    session, "coordinator"
                )
                await asyncio.gather(*(ready.wait() for ready in reader.ready_events()))
                for generation in (first, second):
                    kv = await client.get(keys.assignment)
                    assert await write_assignment(leadership, keys, Current.of(kv), generation)
                    expected = by_worker(generation.owners)
                    await wait_async(
                        f"the worker reader sees generation {generation.generation}",
                        lambda e=expected: reader.assigned_to(workers[0]) == e[workers[0]],
                    )
                    for worker in workers:
                        assert reader.assigned_to(worker) == expected.get(worker, set()), worker
                    kv = await client.get(keys.assignment)
                    assert kv is not None
                    assert Assignment.decode(kv.key, kv.value) == generation
            finally:
                await reader.stop()
                await session.close()
                await client.delete_prefix(keys.root)

    asyncio.run(main())


def shards_set(env: dict[str, str], count: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardctl.cli.main", "shards", "set", str(count)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_shards_set_refuses_a_count_the_assignment_cannot_hold(
    stack: StackHandle, settings: Settings
) -> None:
    env = {**os.environ, **stack.env(), "SHARDCTL_CLUSTER": settings.cluster}
    keys = Keyspace.of(settings)

    async def stored_config() -> ClusterConfig | None:
        async with EtcdClient(settings.etcd) as client:
            kv = await client.get(keys.config)
        return None if kv is None else ClusterConfig.decode(kv.key, kv.value)

    async def clean() -> None:
        async with EtcdClient(settings.etcd) as client:
            await client.delete_prefix(keys.root)

    try:
        refused = shards_set(env, MAX_SHARDS + 1)
        assert refused.returncode != 0
        assert f"at most {MAX_SHARDS} shards" in refused.stderr, refused.stderr
        assert asyncio.run(stored_config()) is None

        accepted = shards_set(env, MAX_SHARDS)
        assert accepted.returncode == 0, accepted.stderr
        stored = asyncio.run(stored_config())
        assert stored is not None and stored.num_shards == MAX_SHARDS
    finally:
        asyncio.run(clean())
