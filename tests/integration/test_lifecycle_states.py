"""The worker's and the coordinator's lifecycle states on a real etcd: the moves they
make through a drain, a restart and a leader's stop."""

from __future__ import annotations

import asyncio

import pytest

from coordinator.service import Coordinator, CoordinatorOptions, CoordinatorState
from shardctl.core.config import Settings
from tests.integration.workers_support import delete_cluster, wait_async, write_assignment
from workers.noop_handler import NoopHandler
from workers.worker import Worker, WorkerOptions, WorkerState

pytestmark = pytest.mark.integration


class WatchedWorker(Worker):
    """A worker that keeps the states it moved to."""

    def __init__(self, settings: Settings, options: WorkerOptions, noop: NoopHandler) -> None:
        super().__init__(settings, options, noop)
        self.moves: list[WorkerState] = []

    def _move(self, new: WorkerState) -> None:
        before = self.state
        super()._move(new)
        if self.state is not before:
            self.moves.append(self.state)


def run_worker(settings: Settings, options: WorkerOptions) -> list[WorkerState]:
    async def main() -> list[WorkerState]:
        noop = NoopHandler(options.worker_id, tick_s=0.05)
        worker = WatchedWorker(settings, options, noop)
        task = asyncio.get_running_loop().create_task(worker.run())
        try:
            await wait_async("the worker serving", lambda: worker.state is WorkerState.SERVING)
            await write_assignment(settings, [options.worker_id, options.worker_id], 1)
            await wait_async("both shards owned", lambda: noop.position(1) is not None)
            worker.stop_requested.set()
            await asyncio.wait_for(task, 30)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            noop.close()
            await delete_cluster(settings)
        assert noop.position(0) is None and noop.position(1) is None
        return worker.moves

    return asyncio.run(main())


def test_a_stopped_worker_drains_then_is_done(settings: Settings) -> None:
    # No coordinator moves the shards away: the drain ends by its timeout.
    options = WorkerOptions(worker_id="w1", ttl=3, commit_interval_s=0.1, drain_timeout_s=0.5)
    moves = run_worker(settings, options)
    assert moves == [WorkerState.SERVING, WorkerState.DRAINING, WorkerState.DONE]


def test_a_stopped_worker_with_a_restart_grace_releases_without_draining(
    settings: Settings,
) -> None:
    options = WorkerOptions(
        worker_id="w1", ttl=3, commit_interval_s=0.1, drain_timeout_s=60, restart_grace_s=30
    )
    moves = run_worker(settings, options)
    assert moves == [WorkerState.SERVING, WorkerState.RESTARTING, WorkerState.DONE]


def test_a_stopped_leader_is_done_and_the_standby_leads(settings: Settings) -> None:
    async def main() -> None:
        replicas = {
            name: Coordinator(settings, CoordinatorOptions(name, ttl=3, stabilization_s=0.1))
            for name in ("c1", "c2")
        }
        tasks = {
            name: asyncio.get_running_loop().create_task(c.run()) for name, c in replicas.items()
        }

        def leaders() -> list[str]:
            return [n for n, c in replicas.items() if c.state is CoordinatorState.LEADING]

        try:
            first = (await wait_async("a leader", leaders))[0]
            other = next(n for n in replicas if n != first)
            assert replicas[other].state is CoordinatorState.CANDIDATE
            replicas[first].stop_requested.set()
            await asyncio.wait_for(tasks[first], 30)
            assert replicas[first].state is CoordinatorState.DONE
            assert await wait_async("the standby leading", leaders) == [other]
            replicas[other].stop_requested.set()
            await asyncio.wait_for(tasks[other], 30)
            assert replicas[other].state is CoordinatorState.DONE
        finally:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
            await delete_cluster(settings)

    asyncio.run(main())
