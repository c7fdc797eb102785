"""Shard ownership and handoff on the worker side.

Per shard, on one worker (`OwnerState`, one transition per line):

    IDLE --assigned, owners/<s> absent (or ours): created under our lease--> OWNED
    OWNED --unassigned: consumer.stop() (stop fetching, finish in-flight work)--> RELEASING
    OWNED --fail(): the shard broke here (its consumer loop or start raised)--> FAILING
    FAILING --the next reconcile: consumer.stop()--> RELEASING
    RELEASING --offset committed and owners/<s> deleted, in one txn fenced by token--> IDLE
    RELEASING --the same, after a failure: a backoff before acquiring again--> COOLING
    RELEASING --the offset commit was fenced: nothing more to do--> IDLE
    COOLING --backoff passed (1 s, doubling up to 60 s while it keeps failing)--> IDLE
    OWNED --lease lost / fenced write refused / owners/<s> re-created--> IDLE
    FAILING --lease lost / fenced write refused / owners/<s> re-created--> COOLING

Lost (the last two) is at once, through consumer.abort(); nothing is committed. A
RELEASING shard whose commit or delete met an etcd error stays RELEASING: every
reconcile finishes it (the commit and the delete are idempotent), even when the
shard is assigned back meanwhile; then it is acquired again with a new token. An
IDLE shard whose owners/<s> is ours (an acquire cut short by an etcd error) and
that is no longer assigned has the key deleted (fenced by its revision).

A failed shard is released and retried in place rather than draining the whole
worker: the coordinator would hand it back to the same worker anyway, and a shard
that fails on every worker would otherwise drain them one after another. The other
shards of the worker keep flowing. While COOLING the shard is assigned but owned by
no one, so its events wait; the error is logged at every failure.

The token is the create_revision of `owners/<s>`. An assigned shard whose key is
still held by someone else stays IDLE until that key is deleted (released, or its
owner's lease expired); the worker never takes it over by force. So a gaining
worker starts only after the losing one committed and let go (docs/coordination.md, Handoff).

Every claim handed to the consumer layer carries `valid()`: True while the session
is surely alive, the shard was not aborted, and it is still owned. The consumer
checks it before each event, which keeps a paused-then-resumed worker (a zombie)
from processing even before its keepalive thread has run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from shardctl.core.backoff import Exponential
from shardctl.core.etcd import (
    Absent,
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    Fence,
    KeyValue,
    Put,
    Session,
)
from shardctl.core.keyspace import Keyspace
from shardctl.core.metrics import WORKER_LAG, WORKER_SHARDS_OWNED
from shardctl.core.records import OffsetRecord
from shardctl.core.states import Transitions
from workers.offsets import OffsetFenced, OffsetStore

log = logging.getLogger(__name__)


@dataclass
class Claim:
    """What the consumer layer gets for one owned shard."""

    shard: int
    token: int
    offset: OffsetRecord | None
    _ownership: Ownership = field(repr=False)

    def valid(self) -> bool:
        return self._ownership.holds(self.shard, self.token)

    def fail(self, reason: str) -> None:
        """The shard broke here by itself (not fenced): release it, committing what was
        handled, and acquire it again after a backoff (`Ownership.fail`). Event loop only."""
        self._ownership.fail(self.shard, self.token, reason)


class ShardConsumer(Protocol):
    """The consumer layer of a worker.

    `start` and `stop` run on the worker's event loop. `abort` may be called from the
    lease keepalive thread: it must be thread-safe and return at once.
    `position` returns only a position whose every earlier event is fully handled
    (it is what gets committed).
    """

    async def start(self, claim: Claim) -> None: ...

    async def stop(self, shard: int, token: int) -> OffsetRecord | None: ...

    def position(self, shard: int) -> OffsetRecord | None: ...

    def abort(self, shards: Collection[int], reason: str) -> None: ...

    def lag(self, shard: int, committed: OffsetRecord | None) -> int | None: ...


class OwnerState(Enum):
    IDLE = "idle"  # not owned here (no entry in `Ownership.owned`)
    OWNED = "owned"
    FAILING = "failing"  # broke here: released by the next reconcile, though assigned
    RELEASING = "releasing"  # stopped; the final commit or the key's delete is pending
    COOLING = "cooling"  # released after a failure, waiting out its backoff


OWNER_TRANSITIONS = Transitions(
    "shard ownership",
    {
        OwnerState.IDLE: {OwnerState.OWNED},
        OwnerState.OWNED: {OwnerState.RELEASING, OwnerState.FAILING, OwnerState.IDLE},
        OwnerState.FAILING: {OwnerState.RELEASING, OwnerState.COOLING},
        OwnerState.RELEASING: {OwnerState.IDLE, OwnerState.COOLING},
        OwnerState.COOLING: {OwnerState.IDLE},
    },
)


@dataclass
class _Owned:
    token: int
    committed: OffsetRecord | None
    since: float  # when it was acquired (Ownership's clock)
    state: OwnerState = OwnerState.OWNED
    final: OffsetRecord | None = None


@dataclass(frozen=True)
class FailureBackoff:
    """How long a failed shard waits before it is acquired again: the one backoff
    schedule, without jitter (`status` shows the wait as it is)."""

    initial_s: float = 1.0
    max_s: float = 60.0
    forget_after_s: float = 300.0  # a shard that ran this long since failing starts over

    def delay(self, failures: int) -> float:
        return Exponential(self.initial_s, self.max_s, jitter=0.0).delay(max(1, failures))


@dataclass
class _Cooling:
    failures: int
    failed_at: float
    until: float


class Ownership:
    def __init__(
        self,
        client: EtcdClient,
        keys: Keyspace,
        worker_id: str,
        session: Session,
        consumer: ShardConsumer,
        backoff: FailureBackoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backoff = backoff or FailureBackoff()
        self._clock = clock
        self._cooling: dict[int, _Cooling] = {}
        self.client = client
        self.keys = keys
        self.worker_id = worker_id
        self.session = session
        self.consumer = consumer
        self.offsets = OffsetStore(client, keys)
        self.owned: dict[int, _Owned] = {}
        self._lock = asyncio.Lock()
        self._aborted = threading.Event()
        # Set by `fail`: the worker reconciles at once to release the failed shard.
        self.shard_failed = asyncio.Event()

    # -- queries -------------------------------------------------------------

    def holds(self, shard: int, token: int) -> bool:
        if self._aborted.is_set() or not self.session.is_valid():
            return False
        owned = self.owned.get(shard)
        return owned is not None and owned.token == token and owned.state is OwnerState.OWNED

    def state(self, shard: int) -> OwnerState:
        owned = self.owned.get(shard)
        if owned is not None:
            return owned.state
        cooling = self._cooling.get(shard)
        return OwnerState.COOLING if cooling and cooling.until > self._clock() else OwnerState.IDLE

    def _move(self, shard: int, owned: _Owned, new: OwnerState) -> None:
        owned.state = OWNER_TRANSITIONS.check(f"{shard} (token {owned.token})", owned.state, new)

    def cooling(self) -> dict[int, float]:
        """Failed shards waiting to be acquired again, with the seconds left."""
        now = self._clock()
        return {s: c.until - now for s, c in self._cooling.items() if c.until > now}

    # -- lease loss (any thread) -----------------------------------------------

    def abort_all(self, reason: str) -> None:
        """Stop every shard at once. Safe to call from the keepalive thread."""
        if self._aborted.is_set():
            return
        self._aborted.set()
        shards = list(self.owned)
        log.error("%s: stopping shards %s now: %s", self.worker_id, shards, reason)
        self.consumer.abort(shards, reason)
        WORKER_SHARDS_OWNED.labels(self.worker_id).set(0)
        for shard in shards:
            self._forget_lag(shard)

    # -- reconcile -----------------------------------------------------------

    async def reconcile(self, assigned: Collection[int], owners: Mapping[int, KeyValue]) -> None:
        """Move towards owning exactly `assigned`; `owners` is the owners/ view by shard."""
        async with self._lock:
            if self._aborted.is_set():
                return
            for shard, owned in list(self.owned.items()):
                kv = owners.get(shard)
                if kv is not None and kv.create_revision > owned.token:
                    self._drop(
                        shard,
                        f"owners/{shard} was re-created with token "
                        f"{kv.create_revision} > ours {owned.token}",
                    )
            # A stopped shard is a release cut short (an etcd error after `stop`): it is
            # finished first, even if the shard was assigned back meanwhile, and then
            # acquired again below with a new token.
            leaving = sorted(
                s
                for s, o in self.owned.items()
                if s not in assigned or o.state is not OwnerState.OWNED
            )
            await self._each(self._release, leaving, "release")
            # owners/<s> created under our lease by an acquire cut short (an etcd error
            # before the shard started), and no longer assigned: undo it, or it would
            # keep the shard from its new owner until our lease ends.
            strays = sorted(
                s
                for s, kv in owners.items()
                if s not in assigned and s not in self.owned and self._may_acquire(kv)
            )
            await self._each(lambda s: self._undo_acquire(s, owners[s]), strays, "undo acquire")
            joining = sorted(
                s
                for s in assigned
                if self.state(s) is OwnerState.IDLE and self._may_acquire(owners.get(s))
            )
            await self._each(self._acquire, joining, "acquire")

    def _may_acquire(self, kv: KeyValue | None) -> bool:
        if kv is None:
            return True
        # Ours from an attempt whose answer was lost: adopt it.
        return kv.lease == self.session.lease_id and kv.value.decode() == self.worker_id

    async def _each(
        self, step: Callable[[int], Awaitable[None]], shards: list[int], what: str
    ) -> None:
        results = await asyncio.gather(*(step(s) for s in shards), return_exceptions=True)
        for shard, result in zip(shards, results, strict=True):
            if isinstance(result, EtcdUnavailable):
                log.warning(
                    "%s: %s of shard %d waits for etcd: %s", self.worker_id, what, shard, result
                )
            elif isinstance(result, BaseException):
                raise result

    async def _acquire(self, shard: int) -> None:
        if not self.session.is_valid():
            return
        key, offset_key = self.keys.owner(shard), self.keys.offset(shard)
        # One round trip: create owners/<s> if absent and read offsets/<s> as of the
        # same revision, which holds the previous owner's final commit (it was
        # written in the txn that deleted the key).
        created, found = await self.client.txn(
            [Absent(key)],
            [Put(key, self.worker_id.encode(), lease=self.session.lease_id)],
            read_back=[key, offset_key],
        )
        kv = found[key]
        if kv is None:
            # Present at the compare, or created by it: it cannot be gone in the txn.
            raise EtcdError(f"acquiring shard {shard}: {key} missing right after the txn")
        if not created and not self._may_acquire(kv):
            return  # still held by the previous owner; its delete will wake us
        token = kv.create_revision
        offset = self.offsets.decode(found[offset_key])
        if self._aborted.is_set() or not self.session.is_valid():
            return  # the key goes away with the lease
        committed = offset
        OWNER_TRANSITIONS.check(f"{shard} (token {token})", self.state(shard), OwnerState.OWNED)
        self.owned[shard] = _Owned(token=token, committed=committed, since=self._clock())
        WORKER_SHARDS_OWNED.labels(self.worker_id).set(len(self.owned))
        at = "no offset" if committed is None else committed.describe()
        log.info(
            "%s: acquired shard %d token %d at %s",
            self.worker_id,
            shard,
            token,
            at,
            extra={
                "worker": self.worker_id,
                "shard": shard,
                "token": token,
                "position": None if committed is None else committed.describe(),
            },
        )
        try:
            await self.consumer.start(Claim(shard, token, offset, self))
        except Exception as exc:
            log.exception("%s: starting shard %d as token %d failed", self.worker_id, shard, token)
            self.fail(shard, token, f"starting it failed: {type(exc).__name__}: {exc}")
            return
        if self._aborted.is_set():
            self.consumer.abort([shard], "lease lost while starting")

    async def _release(self, shard: int) -> None:
        owned = self.owned[shard]
        if owned.state is not OwnerState.RELEASING:
            owned.final = await self.consumer.stop(shard, owned.token)
            self._move(shard, owned, OwnerState.RELEASING)
        if owned.final is not None and not owned.final.same_place(owned.committed):
            # The final commit and the delete of owners/<s>, in one fenced txn.
            try:
                await self.offsets.commit(shard, owned.final, release=True)
            except OffsetFenced as exc:
                log.error("%s: %s", self.worker_id, exc)
                self._gone(shard)
                return
            owned.committed = owned.final
        else:
            await Fence(self.keys.owner(shard), owned.token).release(self.client)
        self._gone(shard)
        log.info(
            "%s: released shard %d token %d at %s",
            self.worker_id,
            shard,
            owned.token,
            "no offset" if owned.committed is None else owned.committed.describe(),
            extra={
                "worker": self.worker_id,
                "shard": shard,
                "token": owned.token,
                "position": None if owned.committed is None else owned.committed.describe(),
            },
        )

    async def _undo_acquire(self, shard: int, kv: KeyValue) -> None:
        if await Fence(self.keys.owner(shard), kv.create_revision).release(self.client):
            log.warning(
                "%s: deleted owners/%d (token %d) left by an acquire cut short",
                self.worker_id,
                shard,
                kv.create_revision,
            )

    def _drop(self, shard: int, reason: str) -> None:
        log.error(
            "%s: lost shard %d: %s",
            self.worker_id,
            shard,
            reason,
            extra={"worker": self.worker_id, "shard": shard},
        )
        self._gone(shard)
        self.consumer.abort([shard], reason)

    def fail(self, shard: int, token: int, reason: str) -> None:
        """Give up `shard` (owned as `token`) after an error of its own: the next
        reconcile releases it with a final fenced commit, and it is acquired again
        after a backoff. A report about an older token is ignored. Event loop only."""
        owned = self.owned.get(shard)
        if owned is None or owned.token != token or owned.state is not OwnerState.OWNED:
            return
        self._move(shard, owned, OwnerState.FAILING)
        now = self._clock()
        before = self._cooling.get(shard)
        failures = 1
        if before is not None and now - before.failed_at < self.backoff.forget_after_s:
            failures = before.failures + 1
        delay = self.backoff.delay(failures)
        self._cooling[shard] = _Cooling(failures, now, now + delay)
        self.shard_failed.set()
        log.error(
            "%s: shard %d failed as token %d (%d time(s) in a row): %s; releasing it and "
            "acquiring it again in %.1f s",
            self.worker_id,
            shard,
            token,
            failures,
            reason,
            delay,
        )

    def _gone(self, shard: int) -> None:
        owned = self.owned.get(shard)
        if owned is not None:
            # COOLING when it failed while owned this time (`fail`).
            cooling = self._cooling.get(shard)
            failed = cooling is not None and cooling.failed_at >= owned.since
            self._move(shard, owned, OwnerState.COOLING if failed else OwnerState.IDLE)
            del self.owned[shard]
        WORKER_SHARDS_OWNED.labels(self.worker_id).set(len(self.owned))
        self._forget_lag(shard)

    def _forget_lag(self, shard: int) -> None:
        with contextlib.suppress(KeyError):  # never reported
            WORKER_LAG.remove(self.worker_id, str(shard))

    def report_lag(self) -> None:
        """Set each owned shard's lag gauge: records past its committed offset."""
        for shard, owned in list(self.owned.items()):
            if owned.state is OwnerState.RELEASING:
                continue
            lag = self.consumer.lag(shard, owned.committed)
            if lag is not None:
                WORKER_LAG.labels(self.worker_id, str(shard)).set(lag)

    # -- offsets ---------------------------------------------------------------

    async def commit_positions(self) -> None:
        """Commit each owned shard's handled position, fenced by its token."""
        async with self._lock:
            todo = []
            for shard, owned in self.owned.items():
                if owned.state is OwnerState.RELEASING:
                    continue
                at = self.consumer.position(shard)
                if at is not None and not at.same_place(owned.committed):
                    todo.append((shard, owned, at))
            if not todo or not self.session.is_valid():
                return
            results = await asyncio.gather(
                *(self.offsets.commit(s, at) for s, _o, at in todo),
                return_exceptions=True,
            )
            for (shard, owned, at), result in zip(todo, results, strict=True):
                if result is None:
                    owned.committed = at
                elif isinstance(result, OffsetFenced):
                    self._drop(shard, str(result))
                elif isinstance(result, EtcdError):
                    log.warning(
                        "%s: offset commit of shard %d postponed: %s", self.worker_id, shard, result
                    )
                else:
                    raise result
