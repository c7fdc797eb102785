"""The workers' gate of an online change of the shard count, on real etcd and nsqd:
a gaining shard waits until every old shard committed its barrier, then the change
completes with `config.num_shards`; a shrink on NSQ completes only once nsqd holds
nothing more for the removed shards."""

from __future__ import annotations

import asyncio
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager

import pytest

from shardctl.core.config import Settings
from shardctl.core.etcd import EtcdClient, Put
from shardctl.core.keyspace import Keyspace
from shardctl.core.records import ClusterConfig, OffsetRecord, Reshard
from tests.conftest import StackHandle
from tests.polling import wait_async
from workers.reshard_gate import ReshardGate
from workers.transports.nsq import shard_topic

pytestmark = pytest.mark.integration


@pytest.fixture
def keys(settings: Settings) -> Iterator[Keyspace]:
    keys = Keyspace.of(settings)
    yield keys

    async def clean() -> None:
        async with EtcdClient(settings.etcd) as client:
            await client.delete_prefix(keys.root)

    asyncio.run(clean())


@asynccontextmanager
async def running_gate(settings: Settings, keys: Keyspace) -> AsyncIterator[ReshardGate]:
    gate = ReshardGate(settings, keys, poll_s=0.05)
    await gate.start()
    try:
        yield gate
    finally:
        await gate.close()


async def stored(client: EtcdClient, keys: Keyspace) -> tuple[Reshard, ClusterConfig]:
    reshard_kv = await client.get(keys.reshard)
    config_kv = await client.get(keys.config)
    assert reshard_kv is not None and config_kv is not None
    return (
        Reshard.decode(reshard_kv.key, reshard_kv.value),
        ClusterConfig.decode(config_kv.key, config_kv.value),
    )


async def until(what: str, check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    """`wait_async` for a condition read from etcd."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def reads_after(gate: ReshardGate, reads: int) -> None:
    """Until the gate has read the old shards' progress `reads` more times."""
    start = gate.progress_reads
    await wait_async("the gate's progress reads", lambda: gate.progress_reads >= start + reads)


def switched(old: int, new: int, barrier: dict[str, list[int]]) -> Reshard:
    return Reshard(
        from_shards=old,
        to_shards=new,
        shard_hash="jump",
        state="switched",
        requested_at=time.time(),
        position="binlog.000001:4",
        switched_at=time.time(),
        barrier=barrier,
    )


def test_a_gaining_shard_waits_for_every_old_shards_barrier(
    settings: Settings, keys: Keyspace
) -> None:
    async def scenario() -> None:
        async with EtcdClient(settings.etcd) as client:
            config = ClusterConfig(num_shards=3, topics=["t"], shard_hash="jump")
            await client.put(keys.config, config.encode())
            await client.put(keys.reshard, switched(2, 3, {"t": [5, 7, 0]}).encode())
            await client.put(keys.offset(0), OffsetRecord(positions={"t": 5}, token=1).encode())
            async with running_gate(settings, keys) as gate:
                await wait_async("the gate to read the record", lambda: gate.limits(2) == {"t": 0})
                assert gate.limits(0) is None and gate.limits(1) is None
                # Shard 1 is still below its barrier: nothing completes.
                await client.put(keys.offset(1), OffsetRecord(positions={"t": 6}, token=1).encode())
                await reads_after(gate, 2)  # it has seen that offset, and stays shut
                assert gate.limits(2) == {"t": 0}
                reshard, _ = await stored(client, keys)
                assert reshard.state == "switched"

                await client.put(keys.offset(1), OffsetRecord(positions={"t": 7}, token=1).encode())
                await wait_async("the gate to open", lambda: gate.limits(2) is None, 30)

                async def complete() -> bool:
                    return (await stored(client, keys))[0].state == "complete"

                await until("the change to complete", complete)
                reshard, config = await stored(client, keys)
                assert reshard.completed_at is not None and config.num_shards == 3

    asyncio.run(scenario())


def _nsq(stack: StackHandle, action: str, topic: str, body: bytes | None = None) -> None:
    url = f"http://{stack.nsqd_http}/{action}?{urllib.parse.urlencode({'topic': topic})}"
    request = urllib.request.Request(url, data=body, method="POST")
    with urllib.request.urlopen(request, timeout=10) as reply:
        reply.read()


def test_a_shrink_on_nsq_completes_once_the_removed_shards_are_empty(
    stack: StackHandle, settings: Settings, keys: Keyspace, unique: str
) -> None:
    topic = f"reshard-{unique}"
    removed = shard_topic(topic, 3)
    _nsq(stack, "pub", removed, b'{"left":"over"}')  # published before the switch

    async def scenario() -> None:
        async with EtcdClient(settings.etcd) as client:
            config = ClusterConfig(num_shards=4, topics=[topic], transport="nsq")
            await client.txn(
                [],
                [
                    Put(keys.config, config.encode()),
                    Put(keys.reshard, switched(4, 2, {}).encode()),
                ],
            )
            async with running_gate(settings, keys) as gate:
                await reads_after(gate, 3)  # the message left on shard 3 holds it back
                reshard, config = await stored(client, keys)
                assert reshard.state == "switched" and config.num_shards == 4

                await asyncio.to_thread(_nsq, stack, "topic/empty", removed)

                async def complete() -> bool:
                    return (await stored(client, keys))[0].state == "complete"

                await until("the change to complete", complete)
                _, config = await stored(client, keys)
                assert config.num_shards == 2

    try:
        asyncio.run(scenario())
    finally:
        _nsq(stack, "topic/delete", removed)
