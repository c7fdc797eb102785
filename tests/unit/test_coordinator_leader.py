"""The coordinator leader's decisions, against an in-memory etcd: the fenced write
of a generation (what refuses it, and how), the restart-grace reservations, and
the churn-budget and orphan checks. The whole coordinator against real etcd:
tests/integration/test_coordination.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from coordinator.assignment import Member
from coordinator.service import Coordinator, CoordinatorOptions, moved_shards
from coordinator.writer import Current, write_assignment
from shardctl.core.config import load_settings
from shardctl.core.etcd import Leadership, NotLeader
from shardctl.core.keyspace import Keyspace
from shardctl.core.records import Assignment, ClusterConfig
from tests.stub_etcd import MemoryEtcd, StubSession

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class Leader:
    """A coordinator that won the election in an in-memory etcd."""

    def __init__(self, max_moves: int | None = None) -> None:
        self.etcd = MemoryEtcd()
        self.session = StubSession(self.etcd.grant())
        self.coordinator = Coordinator(
            load_settings(), CoordinatorOptions("c1", max_moves=max_moves)
        )
        self.keys: Keyspace = self.coordinator.keys
        election_key = self.keys.coordinator_leader
        run(self.etcd.put(election_key, b"c1", lease=self.session.lease_id))
        token = self.etcd.keys[election_key].create_revision
        self.leadership = Leadership(
            self.etcd,  # type: ignore[arg-type]
            self.session,  # type: ignore[arg-type]
            election_key,
            "c1",
            token,
        )

    def current(self) -> Current:
        return Current.of(self.etcd.keys.get(self.keys.assignment))

    def write(self, owners: list[str | None], seen: Current | None = None) -> bool:
        seen = seen or self.current()
        generation = seen.assignment.generation + 1 if seen.assignment else 1
        new = Assignment(generation=generation, num_shards=len(owners), owners=owners)
        return run(write_assignment(self.leadership, self.keys, seen, new))

    def stored(self) -> Assignment:
        kv = self.etcd.keys[self.keys.assignment]
        return Assignment.decode(kv.key, kv.value)


def test_a_leader_writes_generation_after_generation() -> None:
    leader = Leader()
    assert leader.write(["w1", "w1", "w2"])
    assert leader.write(["w1", "w2", "w2"])
    assert leader.stored().generation == 2
    assert leader.stored().owners == ["w1", "w2", "w2"]


def test_a_write_over_a_stale_view_is_refused_without_writing() -> None:
    leader = Leader()
    assert leader.write(["w1", "w2"])
    stale = leader.current()
    assert leader.write(["w2", "w2"])  # someone (here: we) wrote since `stale`
    assert not leader.write(["w1", "w1"], seen=stale)
    assert leader.stored().owners == ["w2", "w2"]


def test_maintenance_mode_refuses_every_new_generation() -> None:
    leader = Leader()
    assert leader.write(["w1", "w2"])
    run(leader.etcd.put(leader.keys.maintenance, b'{"on": true}'))
    assert not leader.write(["w2", "w2"])
    assert leader.stored().owners == ["w1", "w2"]


def test_a_deposed_leader_gets_not_leader_and_writes_nothing() -> None:
    leader = Leader()
    assert leader.write(["w1", "w2"])
    # The election key expired and another candidate created it again.
    leader.etcd.expire(leader.session.lease_id)
    other = leader.etcd.grant()
    run(leader.etcd.put(leader.leadership.key, b"c2", lease=other))
    leader.session.valid = True  # even before its own session noticed
    with pytest.raises(NotLeader, match="no longer has create_revision"):
        leader.write(["w2", "w2"])
    assert leader.stored().owners == ["w1", "w2"]


def test_a_leader_whose_session_is_lost_writes_nothing() -> None:
    leader = Leader()
    leader.session.valid = False
    with pytest.raises(Exception, match="lost"):
        leader.write(["w1"])
    assert leader.keys.assignment not in leader.etcd.keys


def test_restart_grace_reserves_a_dead_workers_shards_until_it_returns_or_expires() -> None:
    coordinator = Leader().coordinator
    graced = Member(restart_grace_s=5.0)
    before = {"w1": Member(), "w2": graced, "w3": Member(restart_grace_s=5.0, draining=True)}
    reserved: dict[str, tuple[float, Member]] = {}
    # w2 and w3 die at t=100: w2 keeps its place; w3 was draining, so it does not.
    members = coordinator._with_reserved({"w1": Member()}, before, reserved, now=100.0)
    assert set(members) == {"w1", "w2"} and reserved == {"w2": (105.0, graced)}
    # Still within the grace at t=104 (`before` is what was registered last pass).
    members = coordinator._with_reserved({"w1": Member()}, {"w1": Member()}, reserved, 104.0)
    assert set(members) == {"w1", "w2"}
    # Expired at t=105: its shards move.
    members = coordinator._with_reserved({"w1": Member()}, {"w1": Member()}, reserved, 105.0)
    assert set(members) == {"w1"} and reserved == {}


def test_a_worker_back_within_its_grace_is_a_member_again_not_a_reservation() -> None:
    coordinator = Leader().coordinator
    graced = Member(restart_grace_s=5.0)
    reserved: dict[str, tuple[float, Member]] = {}
    coordinator._with_reserved({}, {"w2": graced}, reserved, now=10.0)
    members = coordinator._with_reserved({"w2": graced}, {}, reserved, now=12.0)
    assert members == {"w2": graced} and reserved == {}


def test_under_a_churn_budget_the_next_generation_waits_for_the_moves() -> None:
    leader = Leader(max_moves=1)
    assignment = Assignment(generation=3, num_shards=2, owners=["w1", "w2"])
    owners = {leader.keys.owner(0): "w1"}
    kvs = {}
    for key, owner in owners.items():
        run(leader.etcd.put(key, owner.encode()))
        kvs[key] = leader.etcd.keys[key]
    assert not leader.coordinator._settled(assignment, kvs)  # shard 1 not taken yet
    run(leader.etcd.put(leader.keys.owner(1), b"w2"))
    kvs[leader.keys.owner(1)] = leader.etcd.keys[leader.keys.owner(1)]
    assert leader.coordinator._settled(assignment, kvs)


def test_a_departed_member_with_shards_is_an_orphan_case() -> None:
    leader = Leader()
    assert leader.write(["w1", "w2"])
    items = {leader.keys.assignment: leader.etcd.keys[leader.keys.assignment]}
    applied = {"w1": Member(), "w2": Member()}
    assert leader.coordinator._orphaned(applied, {"w1": Member()}, items)
    assert not leader.coordinator._orphaned(applied, applied, items)


def test_moved_shards_counts_changes_of_owner_not_first_owners() -> None:
    old = Assignment(generation=1, num_shards=3, owners=["w1", None, "w2"])
    new = Assignment(generation=2, num_shards=3, owners=["w2", "w1", "w2"])
    assert moved_shards(old, new) == 1
    assert moved_shards(None, new) == 0


def test_unplaceable_shards_are_reported_as_what_they_are(
    caplog: pytest.LogCaptureFixture,
) -> None:
    leader = Leader()
    cfg = ClusterConfig(num_shards=2, affinity={1: {"zone": "b"}})
    with caplog.at_level(logging.WARNING, logger="coordinator.service"):
        # Nobody registered yet: not an affinity problem.
        assert run(leader.coordinator._write(leader.leadership, leader.current(), {}, cfg))
        assert "no active worker; 2 shard(s) stay unassigned" in caplog.text
        assert "affinity" not in caplog.text
        caplog.clear()
        # A worker whose labels the affinity of shard 1 does not match.
        members = {"w1": Member(labels=(("zone", "a"),))}
        assert run(leader.coordinator._write(leader.leadership, leader.current(), members, cfg))
        assert "no eligible worker for 1 shard(s) [1] (their affinity" in caplog.text
    assert leader.stored().owners == ["w1", None]
