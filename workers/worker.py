"""The worker process: membership, ownership and a consumer, around one lease at a time.

Its lifecycle (`WorkerState`, one transition per line):

    STARTING --session open, registered--> SERVING
    STARTING --registered again while a drain is under way--> DRAINING
    STARTING --stop requested with restart_grace_s > 0--> RESTARTING
    STARTING --stop requested before etcd answered or before our id was free--> DONE
    SERVING --stop requested (SIGTERM), or `shardctl drain`--> DRAINING
    SERVING --stop requested with restart_grace_s > 0: release all, no drain--> RESTARTING
    SERVING --lease lost: every shard stopped at once; a new session--> STARTING
    SERVING --lease lost after a stop request: nothing left to hand over--> DONE
    DRAINING --`shardctl undrain` (not after a stop request)--> SERVING
    DRAINING --assignment gives us nothing and every shard is released--> DONE
    DRAINING --lease lost: a new session, still draining--> STARTING
    RESTARTING --`shardctl drain` meanwhile: drain instead--> DRAINING
    RESTARTING --every shard released, or the lease lost--> DONE

A new session is a new registration with new tokens. DRAINING releases everything
after drain_timeout_s (e.g. with no coordinator) and then is done. After RESTARTING
the coordinator keeps the shards reserved for this id (see coordinator.service).
A lost lease leads to DONE instead of STARTING when a stop was requested.

While SERVING the worker reconciles whenever the assignment, the owners/ keys or its
own record change, or a shard failed (`Claim.fail`: that shard alone is released and
retried after a backoff, see `workers.ownership`), and commits handled positions
every `commit_interval_s`, updating the lag gauges. With `metrics_port` it serves
Prometheus /metrics while it runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum

from shardctl.core import health, metrics
from shardctl.core.aio import threadsafe_event, wait_any
from shardctl.core.backoff import ETCD_RETRY, Backoff
from shardctl.core.config import EtcdSettings, Settings
from shardctl.core.etcd import (
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    KeyValue,
    Mirror,
    Session,
    open_session,
    revoke_stale_lease,
)
from shardctl.core.keyspace import Keyspace
from shardctl.core.records import Assignment, RecordError
from shardctl.core.states import Transitions
from workers.membership import Membership, WorkerIdInUse
from workers.ownership import Ownership, ShardConsumer

log = logging.getLogger(__name__)


class WorkerState(Enum):
    STARTING = "starting"  # a session is open; not registered yet
    SERVING = "serving"
    DRAINING = "draining"  # registered as draining: handing every shard over
    RESTARTING = "restarting"  # stopping with a restart grace: releasing, no drain
    DONE = "done"


WORKER_TRANSITIONS = Transitions(
    "worker",
    {
        WorkerState.STARTING: {
            WorkerState.SERVING,
            WorkerState.DRAINING,
            WorkerState.RESTARTING,
            WorkerState.DONE,
        },
        WorkerState.SERVING: {
            WorkerState.DRAINING,
            WorkerState.RESTARTING,
            WorkerState.STARTING,
            WorkerState.DONE,
        },
        WorkerState.DRAINING: {WorkerState.SERVING, WorkerState.DONE, WorkerState.STARTING},
        WorkerState.RESTARTING: {WorkerState.DRAINING, WorkerState.DONE},
    },
)


@dataclass
class WorkerOptions:
    worker_id: str
    capacity: int = 1
    labels: dict[str, str] = field(default_factory=dict)
    ttl: int = 10
    commit_interval_s: float = 1.0
    drain_timeout_s: float = 60.0
    metrics_port: int = 0  # serve Prometheus /metrics here while running; 0 = off
    restart_grace_s: float = 0.0  # in the worker record; the coordinator reserves shards


# How a worker reaches etcd; the defaults are the real client and session, unit
# tests pass an in-memory etcd (tests/stub_etcd.py).
ConnectEtcd = Callable[[], EtcdClient]
OpenSession = Callable[[EtcdSettings, int, str, asyncio.Event], Awaitable[Session | None]]


class Worker:
    def __init__(
        self,
        settings: Settings,
        options: WorkerOptions,
        consumer: ShardConsumer,
        *,
        connect: ConnectEtcd | None = None,
        open_session: OpenSession = open_session,
    ) -> None:
        self.settings = settings
        self.options = options
        self.consumer = consumer
        self._connect = connect or (lambda: EtcdClient(settings.etcd))
        self._open_session = open_session
        self.keys = Keyspace.of(settings)
        self.stop_requested = asyncio.Event()
        self.state = WorkerState.STARTING
        # The local views of etcd while running (None before and after): what this
        # worker has seen, for status and tests.
        self.mirrors: _Mirrors | None = None
        self._ownership: Ownership | None = None  # of the current session, for tests

    def _move(self, new: WorkerState) -> None:
        if new is not self.state:
            self.state = WORKER_TRANSITIONS.check(self.options.worker_id, self.state, new)
            log.info("%s: %s", self.options.worker_id, new.value)

    async def run(self) -> None:
        server = None
        if self.options.metrics_port:
            # Its own server, not shardctl.core.metrics.serve: it is shut down when the
            # worker returns, so a process can run workers one after another.
            server = metrics.start_server(self.options.metrics_port)
            log.info("%s: /metrics on port %d", self.options.worker_id, self.options.metrics_port)
        try:
            await self._run()
        finally:
            if server is not None:
                server.shutdown()
                server.server_close()

    async def _run(self) -> None:
        async with self._connect() as client:
            mirrors = _Mirrors(client, self.keys, self.options.worker_id)
            self.mirrors = mirrors
            membership = Membership(
                client,
                self.keys,
                self.options.worker_id,
                self.options.capacity,
                self.options.labels,
                restart_grace_s=self.options.restart_grace_s,
            )
            try:
                if not await self._until_ready(mirrors):
                    log.info(
                        "%s: stop requested before etcd answered; nothing held, leaving",
                        self.options.worker_id,
                    )
                else:
                    await self._sessions(client, membership, mirrors)
                self._move(WorkerState.DONE)
            finally:
                self.mirrors = None
                await mirrors.stop()

    async def _sessions(
        self, client: EtcdClient, membership: Membership, mirrors: _Mirrors
    ) -> None:
        """Serve one session after another until done or stopped."""
        name = f"worker-{self.options.worker_id}"
        stale_leases: list[int] = []  # of lost sessions whose revoke failed
        while True:
            session = await self._open_session(
                self.settings.etcd, self.options.ttl, name, self.stop_requested
            )
            if session is None:
                log.info(
                    "%s: stop requested while etcd is unavailable; nothing held, leaving",
                    self.options.worker_id,
                )
                return
            done = False
            try:
                # Before registering: their owners/ keys block our shards, and etcd
                # renewed them if it restarted meanwhile.
                for lease in list(stale_leases):
                    if await revoke_stale_lease(client, lease, session, self.stop_requested):
                        stale_leases.remove(lease)
                done = await self._serve(client, session, membership, mirrors)
            finally:
                # Done: revoke, which deletes our keys at once. Lost: the lease may
                # still exist if etcd was only unreachable; revoking it frees our old
                # owners/ keys for the next owner sooner. If that fails (etcd down), the
                # next session revokes it.
                if not await session.close(revoke=True):
                    stale_leases.append(session.lease_id)
            if done:
                return
            if self.stop_requested.is_set():
                # The lease was lost while stopping: every shard was aborted with it,
                # so there is nothing left to hand over.
                log.info("%s: stop requested and lease lost; leaving", name)
                return
            self._move(WorkerState.STARTING)

    async def _until_ready(self, mirrors: _Mirrors) -> bool:
        """Wait for the first listing of every mirror; False if a stop came first."""
        for ready in mirrors.ready_events():
            await wait_any([ready, self.stop_requested], None)
            if self.stop_requested.is_set():
                return False
        return True

    async def _serve(
        self, client: EtcdClient, session: Session, membership: Membership, mirrors: _Mirrors
    ) -> bool:
        """Serve one session. True when drained and done, False when the lease was lost."""
        ownership = Ownership(client, self.keys, self.options.worker_id, session, self.consumer)
        self._ownership = ownership
        session.on_lost(ownership.abort_all)
        lost = threadsafe_event(session.on_lost)
        run = _SessionRun(next_commit=time.monotonic() + self.options.commit_interval_s)
        while True:
            # Clear the wake-ups before reading any state, never after: a change that
            # lands while this pass runs (an owners/ delete during the reconcile's
            # awaits) then stays set and wakes the wait below at once. Clearing after
            # the pass would erase it, and the shard would wait for the commit tick.
            mirrors.clear()
            ownership.shard_failed.clear()
            if lost.is_set() or not session.is_valid():
                ownership.abort_all(session.lost_reason or "lease unconfirmed past its TTL")
                return False
            mirrors.check()
            if self._id_held_elsewhere(membership, mirrors, run):
                if self.stop_requested.is_set():
                    return True
                await wait_any(
                    [*mirrors.changed(), lost, self.stop_requested], self.options.commit_interval_s
                )
                continue
            try:
                await self._follow_requests(session, membership, mirrors, run)
                assigned = self._assigned(mirrors, run)
                await ownership.reconcile(assigned, mirrors.owners_by_shard())
                await self._commit_if_due(ownership, run)
                if self._finished(ownership, assigned):
                    return True
                run.retry.reset()
            except EtcdUnavailable as exc:
                log.warning("%s: etcd unavailable, retrying: %s", self.options.worker_id, exc)
                await asyncio.sleep(run.retry.next())
            except (EtcdError, RecordError) as exc:
                log.error("%s: %s; retrying", self.options.worker_id, exc)
                await asyncio.sleep(run.retry.next())
            wait = max(0.0, run.next_commit - time.monotonic())
            # Once draining or restarting, the stop request stays set: waiting on it
            # would spin.
            wake = [*mirrors.changed(), lost, ownership.shard_failed]
            if not membership.draining and not self._restarting(membership):
                wake.append(self.stop_requested)
            await wait_any(wake, wait)
            await asyncio.sleep(0)  # yield even when an event was already set

    def _id_held_elsewhere(
        self, membership: Membership, mirrors: _Mirrors, run: _SessionRun
    ) -> bool:
        """Whether our id is registered under a lease this process never held: an older
        process's registration, which we wait out. WorkerIdInUse once we registered and
        someone took the id over: two workers must not share an id."""
        own = mirrors.own_record()
        if own is None or own.lease in membership.leases:
            return False
        holder = membership.describe(own.value)
        if membership.leases:
            raise WorkerIdInUse(
                f"{self.options.worker_id}: {membership.key} was taken over by {holder}; "
                "two workers must not share an id"
            )
        if not run.waiting_logged:
            log.warning(
                "%s: id still registered by %s; waiting for it to expire",
                self.options.worker_id,
                holder,
            )
            run.waiting_logged = True
        return True

    def _restarting(self, membership: Membership) -> bool:
        # With a restart grace, a stop is a restart: release without draining, so the
        # shards stay assigned to this id for the next process to take back.
        return (
            self.stop_requested.is_set()
            and self.options.restart_grace_s > 0
            and not membership.draining
        )

    async def _follow_requests(
        self, session: Session, membership: Membership, mirrors: _Mirrors, run: _SessionRun
    ) -> None:
        """Apply a stop, a drain or an undrain request, register this session, and move
        to the state they call for."""
        worker_id = self.options.worker_id
        if self._restarting(membership):
            if self.state is not WorkerState.RESTARTING:
                log.info(
                    "%s: stop requested with a restart grace of %gs: releasing every "
                    "shard without draining",
                    worker_id,
                    self.options.restart_grace_s,
                )
        elif self.stop_requested.is_set() and not membership.draining:
            log.info("%s: stop requested, draining", worker_id)
            await membership.set_draining(session)
            run.registered = True
        own = mirrors.own_record()
        requested = own is not None and membership.drain_requested(own.value)
        if requested and not membership.draining:
            log.info("%s: drain requested through %s", worker_id, membership.key)
            membership.draining = True
        elif own is not None and membership.undrain_requested(own):
            if self.stop_requested.is_set():
                log.warning(
                    "%s: undrain through %s refused: the worker is stopping",
                    worker_id,
                    membership.key,
                )
                await membership.register(session)  # writes "draining" back
            else:
                log.info("%s: undrain requested through %s; serving", worker_id, membership.key)
                membership.draining = False
                run.drain_since = None
        if not run.registered or own is None or own.lease != session.lease_id:
            await membership.register(session)
            run.registered = True
            health.update("serving", session)
        if membership.draining and run.drain_since is None:
            run.drain_since = time.monotonic()
        if self._restarting(membership):
            self._move(WorkerState.RESTARTING)
        else:
            self._move(WorkerState.DRAINING if membership.draining else WorkerState.SERVING)

    def _assigned(self, mirrors: _Mirrors, run: _SessionRun) -> set[int]:
        """The shards to own now: the assignment's, none when restarting or once the
        drain timed out."""
        if self.state is WorkerState.RESTARTING:
            return set()
        timed_out = (
            run.drain_since is not None
            and time.monotonic() - run.drain_since >= self.options.drain_timeout_s
        )
        if timed_out:
            log.warning(
                "%s: drain timeout of %ss passed; releasing everything",
                self.options.worker_id,
                self.options.drain_timeout_s,
            )
            return set()
        return mirrors.assigned_to(self.options.worker_id)

    async def _commit_if_due(self, ownership: Ownership, run: _SessionRun) -> None:
        if time.monotonic() >= run.next_commit:
            await ownership.commit_positions()
            ownership.report_lag()
            run.next_commit = time.monotonic() + self.options.commit_interval_s

    def _finished(self, ownership: Ownership, assigned: set[int]) -> bool:
        if ownership.owned:
            return False
        if self.state is WorkerState.DRAINING and not assigned:
            log.info("%s: drained; leaving", self.options.worker_id)
            return True
        if self.state is WorkerState.RESTARTING:
            log.info("%s: every shard released; leaving", self.options.worker_id)
            return True
        return False


@dataclass
class _SessionRun:
    """What `Worker._serve` keeps from one pass to the next within one session."""

    next_commit: float
    registered: bool = False
    waiting_logged: bool = False  # for an older registration of our id to expire
    drain_since: float | None = None
    # A pass that etcd failed is tried again after this; a pass that ran resets it.
    retry: Backoff = field(default_factory=lambda: Backoff(ETCD_RETRY))


class _Mirrors:
    """Local views of the assignment, the owners/ keys and our own worker record."""

    def __init__(self, client: EtcdClient, keys: Keyspace, worker_id: str) -> None:
        self.keys = keys
        self.assignment = Mirror(client, keys.assignment, prefix=False).start()
        self.owners = Mirror(client, keys.owners_prefix).start()
        self.me = Mirror(client, keys.worker(worker_id), prefix=False).start()
        self._last: Assignment | None = None
        self._last_revision = 0  # decode each written value once: 100k shards take ~10 ms
        self._bad_revision = 0

    def ready_events(self) -> list[asyncio.Event]:
        return [m.ready for m in (self.assignment, self.owners, self.me)]

    def check(self) -> None:
        for m in (self.assignment, self.owners, self.me):
            m.check()

    def changed(self) -> list[asyncio.Event]:
        return [self.assignment.changed, self.owners.changed, self.me.changed]

    def clear(self) -> None:
        for event in self.changed():
            event.clear()

    def own_record(self) -> KeyValue | None:
        return self.me.items.get(self.me.key)

    def assigned_to(self, worker_id: str) -> set[int]:
        kv = self.assignment.items.get(self.keys.assignment)
        if kv is None:
            self._last = None
        elif kv.mod_revision not in (self._bad_revision, self._last_revision):
            try:
                self._last = Assignment.decode(kv.key, kv.value)
                self._last_revision = kv.mod_revision
            except RecordError as exc:
                # Keep serving the last good assignment; say so once per bad write.
                log.error(
                    "%s; keeping generation %s", exc, self._last.generation if self._last else None
                )
                self._bad_revision = kv.mod_revision
        return set() if self._last is None else self._last.shards_of(worker_id)

    def owners_by_shard(self) -> dict[int, KeyValue]:
        return {self.keys.shard_of_owner_key(k): kv for k, kv in self.owners.items.items()}

    async def stop(self) -> None:
        for m in (self.assignment, self.owners, self.me):
            await m.stop()
