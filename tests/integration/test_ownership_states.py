"""Ownership's per-shard states on a real etcd, step by step: acquire, fenced commits,
release, a failure's release and cooling, a lost key, and a lease loss. The consumer
layer is a recorder; the clock of the failure backoff is the test's."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field

import pytest

from shardctl.core.config import Settings
from shardctl.core.etcd import EtcdClient, KeyValue, Session
from shardctl.core.keyspace import Keyspace
from shardctl.core.records import OffsetRecord
from tests.integration.workers_support import delete_cluster
from workers.ownership import Claim, FailureBackoff, Ownership, OwnerState

pytestmark = pytest.mark.integration


@dataclass
class RecordingConsumer:
    """Consumes nothing; reports `handled` as each shard's position."""

    handled: int = 0
    claims: dict[int, Claim] = field(default_factory=dict)
    stops: list[tuple[int, int]] = field(default_factory=list)
    aborts: list[tuple[int, str]] = field(default_factory=list)
    start_error: BaseException | None = None

    async def start(self, claim: Claim) -> None:
        if self.start_error is not None:
            raise self.start_error
        self.claims[claim.shard] = claim

    async def stop(self, shard: int, token: int) -> OffsetRecord | None:
        self.stops.append((shard, token))
        self.claims.pop(shard, None)
        return self._at(token)

    def position(self, shard: int) -> OffsetRecord | None:
        claim = self.claims.get(shard)
        return None if claim is None else self._at(claim.token)

    def _at(self, token: int) -> OffsetRecord:
        return OffsetRecord(positions={"orders": self.handled}, token=token)

    def abort(self, shards: Collection[int], reason: str) -> None:
        for shard in shards:
            self.aborts.append((shard, reason))
            self.claims.pop(shard, None)

    def lag(self, shard: int, committed: OffsetRecord | None) -> int | None:
        return None


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Scene:
    client: EtcdClient
    keys: Keyspace
    session: Session
    consumer: RecordingConsumer
    clock: Clock
    ownership: Ownership

    async def owners(self) -> dict[int, KeyValue]:
        listing = await self.client.get_prefix(self.keys.owners_prefix)
        return {self.keys.shard_of_owner_key(kv.key): kv for kv in listing.items}

    async def reconcile(self, assigned: set[int]) -> None:
        await self.ownership.reconcile(assigned, await self.owners())

    async def offset(self, shard: int) -> OffsetRecord | None:
        kv = await self.client.get(self.keys.offset(shard))
        return None if kv is None else OffsetRecord.decode(kv.key, kv.value)


def run(settings: Settings, body: Callable[[Scene], Awaitable[None]]) -> None:
    async def main() -> None:
        keys = Keyspace.of(settings)
        session = await Session.open(settings.etcd, ttl=5, name="ownership-test")
        try:
            async with EtcdClient(settings.etcd) as client:
                consumer = RecordingConsumer()
                clock = Clock()
                ownership = Ownership(
                    client, keys, "w1", session, consumer, FailureBackoff(initial_s=1.0), clock
                )
                await body(Scene(client, keys, session, consumer, clock, ownership))
        finally:
            await session.close(revoke=True)
            await delete_cluster(settings)

    asyncio.run(main())


def test_acquire_commit_and_release_move_owned_then_idle(settings: Settings) -> None:
    async def body(scene: Scene) -> None:
        ownership, consumer = scene.ownership, scene.consumer
        assert ownership.state(0) is OwnerState.IDLE
        await scene.reconcile({0})
        assert ownership.state(0) is OwnerState.OWNED
        owner = (await scene.owners())[0]
        token = owner.create_revision
        assert owner.lease == scene.session.lease_id and consumer.claims[0].valid()

        consumer.handled = 5
        await ownership.commit_positions()
        committed = await scene.offset(0)
        assert committed is not None and committed.token == token
        assert dict(committed.positions) == {"orders": 5}

        consumer.handled = 8
        await scene.reconcile(set())
        assert consumer.stops == [(0, token)]
        assert ownership.state(0) is OwnerState.IDLE
        assert await scene.owners() == {}
        final = await scene.offset(0)
        assert final is not None and dict(final.positions) == {"orders": 8}

    run(settings, body)


def test_a_failed_shard_is_released_cools_down_and_is_acquired_again(settings: Settings) -> None:
    async def body(scene: Scene) -> None:
        ownership, consumer = scene.ownership, scene.consumer
        await scene.reconcile({0, 1})
        first = consumer.claims[0]
        consumer.handled = 3
        first.fail("the sink's table is gone")
        assert ownership.state(0) is OwnerState.FAILING
        assert ownership.shard_failed.is_set() and not first.valid()
        first.fail("reported twice")  # ignored: it is not OWNED any more

        await scene.reconcile({0, 1})  # still assigned: released all the same
        assert ownership.state(0) is OwnerState.COOLING
        assert consumer.stops == [(0, first.token)]
        assert 0 not in await scene.owners()
        committed = await scene.offset(0)
        assert committed is not None and dict(committed.positions) == {"orders": 3}
        assert ownership.state(1) is OwnerState.OWNED  # the other shard keeps flowing

        await scene.reconcile({0, 1})
        assert ownership.state(0) is OwnerState.COOLING and 0 not in consumer.claims
        scene.clock.now += 1.0  # the first backoff
        assert ownership.state(0) is OwnerState.IDLE
        await scene.reconcile({0, 1})
        assert ownership.state(0) is OwnerState.OWNED
        assert consumer.claims[0].token > first.token

    run(settings, body)


def test_a_shard_whose_start_fails_is_released_and_cools_down(settings: Settings) -> None:
    async def body(scene: Scene) -> None:
        scene.consumer.start_error = ConnectionError("on_assign: target unreachable")
        await scene.reconcile({4})
        assert scene.ownership.state(4) is OwnerState.FAILING
        scene.consumer.start_error = None
        await scene.reconcile({4})
        assert scene.ownership.state(4) is OwnerState.COOLING
        assert await scene.owners() == {}
        scene.clock.now += 1.0
        await scene.reconcile({4})
        assert scene.ownership.state(4) is OwnerState.OWNED

    run(settings, body)


def test_a_key_re_created_by_another_owner_drops_the_shard_without_commit(
    settings: Settings,
) -> None:
    async def body(scene: Scene) -> None:
        ownership, consumer = scene.ownership, scene.consumer
        await scene.reconcile({2})
        claim = consumer.claims[2]
        # The key vanished (say, an operator deleted it) and another worker took it.
        await scene.client.delete(scene.keys.owner(2))
        taken = await scene.client.create_if_absent(scene.keys.owner(2), b"w2")
        consumer.handled = 9
        await scene.reconcile({2})
        assert ownership.state(2) is OwnerState.IDLE
        assert consumer.aborts and consumer.aborts[0][0] == 2
        assert "re-created" in consumer.aborts[0][1]
        assert not claim.valid()
        assert await scene.offset(2) is None  # nothing committed under the old token
        # Held by someone else: not acquired back, not deleted.
        await scene.reconcile({2})
        assert ownership.state(2) is OwnerState.IDLE
        assert (await scene.owners())[2].create_revision == taken.kv.create_revision

    run(settings, body)


def test_a_commit_refused_by_the_fence_drops_the_shard(settings: Settings) -> None:
    async def body(scene: Scene) -> None:
        await scene.reconcile({3})
        await scene.client.delete(scene.keys.owner(3))
        scene.consumer.handled = 2
        await scene.ownership.commit_positions()
        assert scene.ownership.state(3) is OwnerState.IDLE
        assert scene.consumer.aborts and "no longer owns" in scene.consumer.aborts[0][1]
        assert await scene.offset(3) is None

    run(settings, body)


def test_a_lease_loss_aborts_every_shard_and_reconciles_nothing_more(settings: Settings) -> None:
    async def body(scene: Scene) -> None:
        await scene.reconcile({0, 1})
        claims = dict(scene.consumer.claims)
        scene.ownership.abort_all("lease lost")
        assert sorted(s for s, _r in scene.consumer.aborts) == [0, 1]
        assert not any(c.valid() for c in claims.values())
        await scene.reconcile({0, 1, 2})
        assert 2 not in scene.consumer.claims

    run(settings, body)
