"""A released shard is taken by its new owner as soon as the old key is deleted, not at
the next commit tick (real etcd, two in-process workers)."""

from __future__ import annotations

import asyncio

import pytest

from shardctl.core.config import Settings
from shardctl.core.etcd import EtcdClient
from shardctl.core.keyspace import Keyspace
from shardctl.core.records import OffsetRecord
from tests.integration.workers_support import delete_cluster, wait_async, write_assignment
from workers.noop_handler import NoopHandler
from workers.ownership import Claim
from workers.worker import Worker, WorkerOptions

pytestmark = pytest.mark.integration

# Far beyond the test's waits: a handoff that needs the commit tick never completes.
COMMIT_INTERVAL_S = 60.0


class GatedHandler(NoopHandler):
    """A no-op handler whose `start` (or `stop`) of one shard waits for a gate."""

    def __init__(self, worker_id: str, gated_start: int | None, gated_stop: int | None) -> None:
        super().__init__(worker_id, tick_s=0.05)
        self.gated_start = gated_start
        self.gated_stop = gated_stop
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def start(self, claim: Claim) -> None:
        if claim.shard == self.gated_start:
            self.entered.set()
            await self.gate.wait()
        await super().start(claim)

    async def stop(self, shard: int, token: int) -> OffsetRecord | None:
        if shard == self.gated_stop:
            self.entered.set()
            await self.gate.wait()
        return await super().stop(shard, token)


def test_a_shard_released_while_the_new_owner_reconciles_is_taken_without_the_commit_tick(
    settings: Settings,
) -> None:
    keys = Keyspace.of(settings)

    def options(worker_id: str) -> WorkerOptions:
        return WorkerOptions(
            worker_id=worker_id, ttl=3, commit_interval_s=COMMIT_INTERVAL_S, drain_timeout_s=5.0
        )

    async def scenario() -> None:
        # w1 holds shard 0 and, when told to release it, waits until w2 is busy.
        old = GatedHandler("w1", gated_start=None, gated_stop=0)
        # w2 gains shards 0 and 1; starting shard 1 keeps its reconcile running.
        new = GatedHandler("w2", gated_start=1, gated_stop=None)
        w1 = Worker(settings, options("w1"), old)
        w2 = Worker(settings, options("w2"), new)
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(w1.run()), loop.create_task(w2.run())]
        async with EtcdClient(settings.etcd) as client:
            try:
                await write_assignment(settings, ["w1", None], generation=1)
                await wait_owner(client, keys, 0, "w1")
                await wait_async(
                    "w2 watching", lambda: w2.mirrors is not None and w2.mirrors.me.items
                )

                await write_assignment(settings, ["w2", "w2"], generation=2)
                # w2 created owners/1 and is inside its reconcile, starting shard 1;
                # only now may w1 go on releasing shard 0.
                await asyncio.wait_for(new.entered.wait(), 30)
                await asyncio.wait_for(old.entered.wait(), 30)
                old.gate.set()
                # w2's own view sees owners/0 deleted while its reconcile still runs.
                await wait_async(
                    "w2 to see owners/0 deleted",
                    lambda: w2.mirrors is not None and keys.owner(0) not in w2.mirrors.owners.items,
                )
                assert not new.gate.is_set()
                new.gate.set()

                # The delete arrived during the reconcile: it must still wake w2,
                # long before its next commit tick (60 s away).
                await wait_owner(client, keys, 0, "w2")
                assert await owner(client, keys, 1) == "w2"
            finally:
                old.gate.set()
                new.gate.set()
                for worker in (w1, w2):
                    worker.stop_requested.set()
                await write_assignment(settings, [None, None], generation=3)
                await asyncio.wait_for(asyncio.gather(*tasks), 30)
        await delete_cluster(settings)

    asyncio.run(scenario())


async def owner(client: EtcdClient, keys: Keyspace, shard: int) -> str | None:
    kv = await client.get(keys.owner(shard))
    return None if kv is None else kv.value.decode()


async def wait_owner(client: EtcdClient, keys: Keyspace, shard: int, expected: str) -> None:
    """Wait until owners/<shard> in etcd names `expected`; the bound is liveness only."""
    deadline = asyncio.get_running_loop().time() + 30.0
    while (found := await owner(client, keys, shard)) != expected:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"owners/{shard} is {found}, never {expected}, after 30s")
        await asyncio.sleep(0.05)
