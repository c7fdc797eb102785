"""shardctl.core.etcd against the real etcd of the local stack."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from shardctl.core.config import Settings
from shardctl.core.etcd import (
    Absent,
    Election,
    EtcdClient,
    Fence,
    Leadership,
    Mirror,
    NotLeader,
    Put,
    Session,
    SessionLost,
    watch_updates,
)
from shardctl.core.keyspace import Keyspace

pytestmark = pytest.mark.integration
T = TypeVar("T")


def run(settings: Settings, body: Callable[[EtcdClient, Keyspace], Awaitable[T]]) -> T:
    keys = Keyspace.of(settings)

    async def main() -> T:
        async with EtcdClient(settings.etcd) as client:
            try:
                return await body(client, keys)
            finally:
                await client.delete_prefix(keys.root)

    return asyncio.run(main())


async def eventually(what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def test_create_if_absent_and_create_revision_guards(settings: Settings) -> None:
    async def body(client: EtcdClient, keys: Keyspace) -> None:
        key = keys.owner(3)
        first = await client.create_if_absent(key, b"w1")
        second = await client.create_if_absent(key, b"w2")
        assert first.created and not second.created
        assert second.kv.value == b"w1"
        assert second.kv.create_revision == first.kv.create_revision
        token = first.kv.create_revision
        fence, wrong = Fence(key, token), Fence(key, token + 1)
        written = await fence.txn(client, [Put(keys.offset(3), b"1")])
        assert written.written and written.holds
        refused = await wrong.txn(client, [Put(keys.offset(3), b"2")])
        assert not refused.written and not refused.holds
        assert refused.describe() == f"held by 'w1' with token {token}"
        offset = await client.get(keys.offset(3))
        assert offset is not None and offset.value == b"1"
        # The fence holds but another guard fails: nothing written, and it says so.
        guarded = await fence.txn(client, [Put(keys.offset(3), b"x")], [Absent(keys.offset(3))])
        assert not guarded.written and guarded.holds
        assert not await wrong.release(client)
        assert await fence.release(client)
        gone = await fence.txn(client, [Put(keys.offset(3), b"y")])
        assert not gone.written and gone.describe() == "absent"
        again = await client.create_if_absent(key, b"w2")
        assert again.created and again.kv.create_revision > token
        # The old token no longer fences anything.
        assert not (await fence.txn(client, [Put(keys.offset(3), b"3")])).written

    run(settings, body)


def test_keepalive_survives_a_cpu_bound_caller_longer_than_the_ttl(settings: Settings) -> None:
    async def body(client: EtcdClient, keys: Keyspace) -> None:
        session = await Session.open(settings.etcd, ttl=2, name="busy")
        try:
            await client.put(keys.worker("busy"), b"x", lease=session.lease_id)
            spin_until = time.monotonic() + 3 * session.ttl
            total = 0
            while time.monotonic() < spin_until:  # never yields to the event loop
                total += 1
            assert total > 0
            assert not session.is_lost, session.lost_reason
            assert session.is_valid()
            assert await client.get(keys.worker("busy")) is not None
        finally:
            await session.close()
        assert await client.get(keys.worker("busy")) is None  # revoked with the session

    run(settings, body)


def test_lease_loss_is_signalled_and_final(settings: Settings) -> None:
    async def body(client: EtcdClient, keys: Keyspace) -> None:
        session = await Session.open(settings.etcd, ttl=3, name="victim")
        reasons: list[str] = []
        session.on_lost(reasons.append)
        await client.put(keys.worker("victim"), b"x", lease=session.lease_id)
        await client.revoke_lease(session.lease_id)  # as if it had expired
        reason = await asyncio.wait_for(session.wait_lost(), timeout=20)
        assert "expired" in reason
        assert reasons == [reason]
        assert session.is_lost and not session.is_valid()
        with pytest.raises(SessionLost, match="lost"):
            session.check()
        assert await client.get(keys.worker("victim")) is None
        await session.close()

    run(settings, body)


def test_election_hands_over_and_fences_the_deposed_leader(settings: Settings) -> None:
    async def body(client: EtcdClient, keys: Keyspace) -> None:
        key = keys.coordinator_leader
        election = Election(client, key)
        a_session = await Session.open(settings.etcd, ttl=3, name="a")
        b_session = await Session.open(settings.etcd, ttl=3, name="b")
        try:
            a = await election.campaign(a_session, "a")
            b_campaign = asyncio.ensure_future(election.campaign(b_session, "b"))
            await asyncio.sleep(0.5)
            assert not b_campaign.done()  # b waits while a leads
            await a.guarded_put(keys.assignment, b"from-a")

            await client.revoke_lease(a_session.lease_id)  # a's lease ends
            b = await asyncio.wait_for(b_campaign, timeout=20)
            assert b.token > a.token
            leader = await election.leader()
            assert leader is not None and (leader.candidate, leader.token) == ("b", b.token)

            # a's write is refused, whether or not a noticed its loss yet...
            with pytest.raises((NotLeader, SessionLost)):
                await a.guarded_put(keys.assignment, b"from-deposed-a")
            # ...and by etcd itself, for a deposed leader whose lease looks fine to it.
            stale = Leadership(client, b_session, key, "a", a.token)
            with pytest.raises(NotLeader, match=f"create_revision {a.token}"):
                await stale.guarded_put(keys.assignment, b"from-deposed-a")
            assignment = await client.get(keys.assignment)
            assert assignment is not None and assignment.value == b"from-a"

            lost = asyncio.ensure_future(b.wait_lost())
            await b.resign()
            assert "deleted" in await asyncio.wait_for(lost, timeout=20)
            assert await election.leader() is None
        finally:
            await a_session.close()
            await b_session.close()

    run(settings, body)


def test_watch_lists_again_after_compaction(settings: Settings) -> None:
    async def body(client: EtcdClient, keys: Keyspace) -> None:
        await client.put(keys.owner(0), b"w1")
        await client.put(keys.owner(1), b"w1")
        updates = watch_updates(client, keys.owners_prefix, prefix=True)
        first = await updates.__anext__()
        assert first.reset and [kv.value for kv in first.items] == [b"w1", b"w1"]
        # While this watcher is behind, history it needs is compacted away.
        await client.delete(keys.owner(0))
        await client.put(keys.owner(2), b"w2")
        await client.put(keys.worker("filler"), b"x")
        await client.compact()
        second = await asyncio.wait_for(updates.__anext__(), timeout=20)
        assert second.reset
        listed = {keys.shard_of_owner_key(kv.key): kv.value for kv in second.items}
        assert listed == {1: b"w1", 2: b"w2"}
        await client.put(keys.owner(3), b"w3")
        third = await asyncio.wait_for(updates.__anext__(), timeout=20)
        assert not third.reset and third.event is not None
        assert third.event.kv.key == keys.owner(3)
        await updates.aclose()

    run(settings, body)


def test_mirror_follows_puts_and_deletes(settings: Settings) -> None:
    async def body(client: EtcdClient, keys: Keyspace) -> None:
        await client.put(keys.worker("a"), b"1")
        mirror = Mirror(client, keys.workers_prefix).start()
        await mirror.ready.wait()
        assert set(mirror.items) == {keys.worker("a")}
        await client.put(keys.worker("b"), b"2")
        await client.delete(keys.worker("a"))
        await eventually("the mirror to follow", lambda: set(mirror.items) == {keys.worker("b")})
        await mirror.stop()

    run(settings, body)
