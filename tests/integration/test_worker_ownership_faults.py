"""Ownership steps that fail halfway on a real etcd fault are finished or undone until
the worker's state and etcd's agree: a release cut by an etcd outage, with the shard
assigned back meanwhile, ends with the shard consumed again, not owned and stopped."""

from __future__ import annotations

import asyncio
from collections.abc import Collection

import pytest

from shardctl.core.config import Settings
from shardctl.core.etcd import EtcdClient
from shardctl.core.keyspace import Keyspace
from shardctl.core.records import OffsetRecord
from tests.conftest import StackHandle
from tests.integration.workers_support import delete_cluster, wait_async, write_assignment
from workers.ownership import Claim
from workers.worker import Worker, WorkerOptions

pytestmark = pytest.mark.integration


class GatedHandler:
    """A consumer layer whose `stop` waits for the test, so a fault can be put into the
    middle of a release."""

    def __init__(self) -> None:
        self.starts: list[tuple[int, int, OffsetRecord | None]] = []
        self.running: dict[int, int] = {}
        self.stopping = asyncio.Event()
        self.proceed = asyncio.Event()

    async def start(self, claim: Claim) -> None:
        self.starts.append((claim.shard, claim.token, claim.offset))
        self.running[claim.shard] = claim.token

    async def stop(self, shard: int, token: int) -> OffsetRecord | None:
        self.stopping.set()
        await self.proceed.wait()
        self.running.pop(shard, None)
        return OffsetRecord(positions={"orders": 7}, event_id="ev-7", token=token)

    def position(self, shard: int) -> OffsetRecord | None:
        return None

    def abort(self, shards: Collection[int], reason: str) -> None:
        for shard in shards:
            self.running.pop(shard, None)

    def lag(self, shard: int, committed: OffsetRecord | None) -> int | None:
        return None


async def _get(settings: Settings, key: str) -> bytes | None:
    async with EtcdClient(settings.etcd) as client:
        kv = await client.get(key)
    return None if kv is None else kv.value


def test_a_release_cut_by_an_etcd_outage_then_assigned_back_is_consumed_again(
    stack: StackHandle, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    keys = Keyspace.of(settings)

    async def scenario() -> None:
        handler = GatedHandler()
        worker = Worker(
            settings,
            WorkerOptions(worker_id="w1", ttl=30, commit_interval_s=0.2, drain_timeout_s=5),
            handler,
        )
        task = asyncio.get_running_loop().create_task(worker.run())
        etcd_down = False
        try:
            await write_assignment(settings, ["w1"], generation=1)
            await wait_async("shard 0 started", lambda: handler.running.get(0))
            first_token = handler.starts[0][1]

            # Shard 0 moves away: the release is held inside `stop` ...
            await write_assignment(settings, [None], generation=2)
            await wait_async("the release of shard 0 began", handler.stopping.is_set)
            # ... the shard is assigned back meanwhile, and etcd goes away before the
            # release commits its final offset.
            await write_assignment(settings, ["w1"], generation=3)
            await asyncio.to_thread(stack.stop, "etcd")
            etcd_down = True
            handler.proceed.set()
            await wait_async(
                "the release to fail on etcd",
                lambda: any(
                    "release of shard 0 waits for etcd" in r.message for r in caplog.records
                ),
                timeout=60,
            )
            await asyncio.to_thread(stack.start, "etcd")
            etcd_down = False

            await wait_async(
                "shard 0 consumed again with a new token",
                lambda: len(handler.starts) == 2 and handler.running.get(0),
                timeout=60,
            )
            shard, token, offset = handler.starts[1]
            assert shard == 0 and token > first_token
            # The final offset of the cut release was committed before the new start.
            assert offset is not None and offset.positions == {"orders": 7}
            assert offset.event_id == "ev-7" and offset.token == first_token
            owner = await _get(settings, keys.owner(0))
            assert owner == b"w1"
        finally:
            handler.proceed.set()
            if etcd_down:
                await asyncio.to_thread(stack.start, "etcd")
            worker.stop_requested.set()
            await asyncio.wait_for(task, 60)
        await delete_cluster(settings)

    caplog.set_level("WARNING", logger="workers.ownership")
    asyncio.run(scenario())


def test_an_owner_key_left_by_an_acquire_cut_short_is_deleted_once_unassigned(
    stack: StackHandle, settings: Settings
) -> None:
    """An acquire that created owners/<s> under the worker's lease and then failed on
    etcd leaves the key without a running shard. Once the shard is assigned elsewhere
    the worker deletes it, so the new owner need not wait for the lease to end."""
    keys = Keyspace.of(settings)

    async def scenario() -> None:
        handler = GatedHandler()
        worker = Worker(
            settings,
            WorkerOptions(worker_id="w1", ttl=30, commit_interval_s=0.2, drain_timeout_s=5),
            handler,
        )
        task = asyncio.get_running_loop().create_task(worker.run())
        try:
            await write_assignment(settings, ["w1", None], generation=1)
            await wait_async("shard 0 started", lambda: handler.running.get(0))
            ownership = worker._ownership
            assert ownership is not None
            # What the cut acquire left: owners/1 under our lease, shard 1 not running.
            async with EtcdClient(settings.etcd) as client:
                await client.put(keys.owner(1), b"w1", lease=ownership.session.lease_id)
            await write_assignment(settings, ["w1", "w2"], generation=2)
            await _wait_absent(settings, keys.owner(1))
            assert 1 not in handler.running and 1 not in ownership.owned
        finally:
            handler.proceed.set()
            worker.stop_requested.set()
            await asyncio.wait_for(task, 60)
        await delete_cluster(settings)

    asyncio.run(scenario())


async def _wait_absent(settings: Settings, key: str, timeout: float = 30.0) -> None:
    """Until `key` is absent."""
    deadline = asyncio.get_running_loop().time() + timeout
    while await _get(settings, key) is not None:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {key} to go")
        await asyncio.sleep(0.1)
