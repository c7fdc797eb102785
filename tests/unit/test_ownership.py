"""Shard ownership (`workers.ownership.Ownership`) against an in-memory etcd: each
transition its docstring draws, and the failure paths (etcd down mid-release, a
fenced commit, a key re-created by someone else, a shard that fails, a lost lease).
The same machine against real etcd: tests/integration/test_ownership_states.py."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Coroutine
from typing import Any, TypeVar

import pytest

from shardctl.core.etcd import KeyValue
from shardctl.core.keyspace import Keyspace
from shardctl.core.records import OffsetRecord
from shardctl.core.states import IllegalTransition
from tests.stub_etcd import MemoryEtcd, StubSession
from workers.ownership import OWNER_TRANSITIONS, Claim, FailureBackoff, Ownership, OwnerState

T = TypeVar("T")
KEYS = Keyspace("/t/")


class RecordingConsumer:
    """A consumer layer that records what ownership asks of it."""

    def __init__(self) -> None:
        self.claims: dict[int, Claim] = {}
        self.stopped: list[tuple[int, int]] = []
        self.aborted: list[tuple[int, str]] = []
        self.positions: dict[int, OffsetRecord] = {}
        self.start_error: dict[int, Exception] = {}

    async def start(self, claim: Claim) -> None:
        if claim.shard in self.start_error:
            raise self.start_error[claim.shard]
        self.claims[claim.shard] = claim

    async def stop(self, shard: int, token: int) -> OffsetRecord | None:
        self.stopped.append((shard, token))
        return self.positions.get(shard)

    def position(self, shard: int) -> OffsetRecord | None:
        return self.positions.get(shard)

    def abort(self, shards: Collection[int], reason: str) -> None:
        self.aborted.extend((s, reason) for s in shards)

    def lag(self, shard: int, committed: OffsetRecord | None) -> int | None:
        return None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class World:
    def __init__(self) -> None:
        self.etcd = MemoryEtcd()
        self.session = StubSession(self.etcd.grant())
        self.consumer = RecordingConsumer()
        self.clock = Clock()
        self.ownership = Ownership(
            self.etcd,  # type: ignore[arg-type]
            KEYS,
            "w1",
            self.session,  # type: ignore[arg-type]
            self.consumer,
            backoff=FailureBackoff(initial_s=1.0, max_s=8.0),
            clock=self.clock,
        )

    def owners(self) -> dict[int, KeyValue]:
        return {
            KEYS.shard_of_owner_key(key): kv
            for key, kv in self.etcd.keys.items()
            if key.startswith(KEYS.owners_prefix)
        }

    def reconcile(self, assigned: Collection[int]) -> None:
        run(self.ownership.reconcile(assigned, self.owners()))

    def record(self, shard: int, offset: int) -> OffsetRecord:
        token = self.ownership.owned[shard].token
        return OffsetRecord(positions={"t": offset}, token=token)

    def stored_offset(self, shard: int) -> OffsetRecord | None:
        kv = self.etcd.keys.get(KEYS.offset(shard))
        return None if kv is None else OffsetRecord.decode(kv.key, kv.value)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture
def world() -> World:
    return World()


def test_assigned_shards_are_acquired_under_the_lease_with_the_key_revision_as_token(
    world: World,
) -> None:
    world.reconcile({0, 1})
    for shard in (0, 1):
        kv = world.etcd.keys[KEYS.owner(shard)]
        assert kv.lease == world.session.lease_id and kv.value == b"w1"
        assert world.ownership.state(shard) is OwnerState.OWNED
        claim = world.consumer.claims[shard]
        assert claim.token == kv.create_revision
        assert claim.valid()


def test_a_shard_held_by_another_owner_waits_until_its_key_is_deleted(world: World) -> None:
    other = world.etcd.grant()
    run(world.etcd.put(KEYS.owner(3), b"w2", lease=other))
    world.reconcile({3})
    assert world.ownership.state(3) is OwnerState.IDLE
    assert 3 not in world.consumer.claims
    world.etcd.expire(other)
    world.reconcile({3})
    assert world.ownership.state(3) is OwnerState.OWNED


def test_release_commits_the_final_offset_then_deletes_the_key(world: World) -> None:
    world.reconcile({0})
    token = world.ownership.owned[0].token
    world.consumer.positions[0] = world.record(0, 42)
    world.reconcile(set())
    assert world.consumer.stopped == [(0, token)]
    stored = world.stored_offset(0)
    assert stored is not None and stored.positions == {"t": 42} and stored.token == token
    assert KEYS.owner(0) not in world.etcd.keys
    assert world.ownership.state(0) is OwnerState.IDLE
    assert not world.consumer.claims[0].valid()


def test_a_release_cut_short_by_etcd_stays_releasing_and_is_finished_later(
    world: World,
) -> None:
    world.reconcile({0})
    world.consumer.positions[0] = world.record(0, 7)
    world.etcd.down = True
    world.reconcile(set())  # the commit meets the outage: waits for etcd, logged
    assert world.ownership.state(0) is OwnerState.RELEASING
    assert not world.consumer.claims[0].valid()  # stopped: processes nothing more
    world.etcd.down = False
    world.reconcile({0})  # assigned back meanwhile: the release is finished first
    stored = world.stored_offset(0)
    assert stored is not None and stored.positions == {"t": 7}
    new_token = world.ownership.owned[0].token
    assert new_token > stored.token  # acquired again, as a new incarnation
    assert world.ownership.state(0) is OwnerState.OWNED


def test_a_key_recreated_with_a_newer_token_drops_the_shard_at_once(world: World) -> None:
    world.reconcile({2})
    old_token = world.ownership.owned[2].token
    world.etcd.keys.pop(KEYS.owner(2))
    other = world.etcd.grant()
    run(world.etcd.put(KEYS.owner(2), b"w2", lease=other))
    world.reconcile({2})
    assert [s for s, _ in world.consumer.aborted] == [2]
    assert "re-created" in world.consumer.aborted[0][1]
    assert world.ownership.state(2) is OwnerState.IDLE  # and w2's key is left alone
    assert world.etcd.keys[KEYS.owner(2)].create_revision > old_token


def test_a_fenced_commit_stops_the_shard_without_writing(world: World) -> None:
    world.reconcile({1})
    world.consumer.positions[1] = world.record(1, 9)
    # Lost while paused: the key expired and another worker took the shard.
    world.etcd.keys.pop(KEYS.owner(1))
    other = world.etcd.grant()
    run(world.etcd.put(KEYS.owner(1), b"w2", lease=other))
    run(world.ownership.commit_positions())
    assert world.stored_offset(1) is None
    assert [s for s, _ in world.consumer.aborted] == [1]
    assert "rejected" in world.consumer.aborted[0][1]


def test_a_failed_shard_is_released_then_cools_with_a_doubling_backoff(world: World) -> None:
    world.reconcile({4})
    for failures, delay in ((1, 1.0), (2, 2.0), (3, 4.0)):
        claim = world.consumer.claims[4]
        claim.fail(f"handler broke ({failures})")
        assert world.ownership.state(4) is OwnerState.FAILING
        assert world.ownership.shard_failed.is_set()
        world.reconcile({4})  # released, and not acquired while it cools
        assert world.ownership.state(4) is OwnerState.COOLING
        assert KEYS.owner(4) not in world.etcd.keys
        assert world.ownership.cooling() == {4: pytest.approx(delay)}
        world.clock.now += delay
        world.reconcile({4})
        assert world.ownership.state(4) is OwnerState.OWNED


def test_a_shard_whose_start_fails_is_failed_not_lost(world: World) -> None:
    world.consumer.start_error[5] = RuntimeError("cannot connect to the sink")
    world.reconcile({5})
    assert world.ownership.state(5) is OwnerState.FAILING
    del world.consumer.start_error[5]
    world.reconcile({5})
    assert world.ownership.state(5) is OwnerState.COOLING


def test_a_report_about_an_older_token_is_ignored(world: World) -> None:
    world.reconcile({6})
    token = world.ownership.owned[6].token
    world.ownership.fail(6, token - 1, "a stale report")
    assert world.ownership.state(6) is OwnerState.OWNED


def test_losing_the_lease_aborts_every_shard_and_invalidates_every_claim(world: World) -> None:
    world.reconcile({0, 1, 2})
    world.ownership.abort_all("lease lost")
    assert sorted(s for s, _ in world.consumer.aborted) == [0, 1, 2]
    assert not any(c.valid() for c in world.consumer.claims.values())
    world.reconcile({0, 1, 2, 3})  # an aborted ownership does nothing more
    assert 3 not in world.consumer.claims


def test_an_invalid_session_acquires_nothing(world: World) -> None:
    world.session.valid = False
    world.reconcile({0})
    assert world.etcd.keys == {}


def test_an_acquire_cut_short_and_no_longer_assigned_has_its_key_undone(world: World) -> None:
    # owners/7 created under our lease, but the answer was lost before the start.
    run(world.etcd.put(KEYS.owner(7), b"w1", lease=world.session.lease_id))
    world.reconcile(set())
    assert KEYS.owner(7) not in world.etcd.keys


def test_an_illegal_transition_is_refused() -> None:
    with pytest.raises(IllegalTransition, match="IDLE --> RELEASING"):
        OWNER_TRANSITIONS.check("shard 0", OwnerState.IDLE, OwnerState.RELEASING)
