"""The worker's lifecycle (`workers.worker.Worker`) against an in-memory etcd with
watches and stub sessions: it registers, takes what the assignment gives it and
hands it to its consumer, commits positions, stops every shard at once when its
lease is lost and serves again under a new session, and on a stop drains,
releases and exits. The same worker against real etcd: tests/integration/."""

from __future__ import annotations

import asyncio
import logging

import pytest

from shardctl.core.config import EtcdSettings, load_settings
from shardctl.core.keyspace import Keyspace
from shardctl.core.records import Assignment, OffsetRecord
from tests.polling import wait_async
from tests.stub_etcd import MemoryEtcd, StubSession
from tests.unit.test_ownership import RecordingConsumer
from workers.worker import Worker, WorkerOptions, WorkerState


class Cluster:
    """One worker, `w1`, on an in-memory etcd; the test plays the coordinator."""

    def __init__(self) -> None:
        self.etcd = MemoryEtcd()
        self.sessions: list[StubSession] = []
        self.consumer = RecordingConsumer()
        settings = load_settings()
        self.keys = Keyspace.of(settings)
        self.worker = Worker(
            settings,
            WorkerOptions("w1", commit_interval_s=0.05, drain_timeout_s=0.5),
            self.consumer,  # type: ignore[arg-type]
            connect=lambda: self.etcd,  # type: ignore[arg-type,return-value]
            open_session=self.open_session,  # type: ignore[arg-type]
        )

    async def open_session(
        self, settings: EtcdSettings, ttl: int, name: str, stop: asyncio.Event
    ) -> StubSession | None:
        if stop.is_set():
            return None
        session = StubSession(self.etcd.grant(), etcd=self.etcd)
        self.sessions.append(session)
        return session

    async def assign(self, generation: int, owners: list[str | None]) -> None:
        assignment = Assignment(generation=generation, num_shards=len(owners), owners=owners)
        await self.etcd.put(self.keys.assignment, assignment.encode())

    def owner_leases(self) -> dict[int, int]:
        """Shard -> the lease its owners/ key is bound to."""
        return {
            shard: kv.lease
            for shard in range(2)
            if (kv := self.etcd.keys.get(self.keys.owner(shard))) is not None
        }


def test_a_worker_serves_its_shards_survives_a_lost_lease_and_drains_on_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        c = Cluster()
        task = asyncio.create_task(c.worker.run())
        await wait_async("w1 registered", lambda: c.keys.worker("w1") in c.etcd.keys)
        await c.assign(1, ["w1", "w1"])

        first = c.sessions[0].lease_id
        await wait_async(
            "both owned under the first lease", lambda: c.owner_leases() == {0: first, 1: first}
        )
        assert set(c.consumer.claims) == {0, 1}
        assert c.worker.state is WorkerState.SERVING
        tokens = {shard: claim.token for shard, claim in c.consumer.claims.items()}

        # Handled positions are committed, fenced by the claim's token.
        c.consumer.positions[0] = OffsetRecord(positions={"t": 41}, token=tokens[0])
        await wait_async("shard 0's position committed", lambda: c.keys.offset(0) in c.etcd.keys)
        assert OffsetRecord.decode("", c.etcd.keys[c.keys.offset(0)].value).positions == {"t": 41}

        # The lease is lost: every shard stops at once, and a new session serves again.
        c.sessions[0].lose("lease expired (stub)")
        await wait_async("a second session", lambda: len(c.sessions) == 2)
        second = c.sessions[1].lease_id
        await wait_async(
            "both owned again under the new lease",
            lambda: c.owner_leases() == {0: second, 1: second},
        )
        assert sorted(shard for shard, _ in c.consumer.aborted) == [0, 1]
        assert all(reason == "lease expired (stub)" for _, reason in c.consumer.aborted)
        assert all(c.consumer.claims[s].token != tokens[s] for s in (0, 1)), "tokens reused"
        assert c.worker.state is WorkerState.SERVING

        # A stop with no coordinator to move the shards: drain, then release and leave.
        c.worker.stop_requested.set()
        await asyncio.wait_for(task, 60)
        assert c.worker.state is WorkerState.DONE
        assert c.owner_leases() == {}
        assert sorted(shard for shard, _ in c.consumer.stopped) == [0, 1]
        assert c.keys.worker("w1") not in c.etcd.keys

    with caplog.at_level(logging.INFO, logger="workers.worker"):
        asyncio.run(scenario())
    moves = [r.getMessage() for r in caplog.records if r.getMessage().startswith("w1: ")]
    states = [m.removeprefix("w1: ") for m in moves if m.removeprefix("w1: ").isalpha()]
    assert states == ["serving", "starting", "serving", "draining", "done"], moves


def test_a_worker_given_nothing_holds_nothing_and_stops_at_once() -> None:
    async def scenario() -> None:
        c = Cluster()
        task = asyncio.create_task(c.worker.run())
        await wait_async("w1 registered", lambda: c.keys.worker("w1") in c.etcd.keys)
        await c.assign(1, ["w2", None])
        await wait_async("serving", lambda: c.worker.state is WorkerState.SERVING)
        c.worker.stop_requested.set()
        await asyncio.wait_for(task, 60)
        assert c.worker.state is WorkerState.DONE
        assert c.consumer.claims == {} and c.owner_leases() == {}

    asyncio.run(scenario())
