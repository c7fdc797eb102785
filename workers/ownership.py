"""Shard ownership and handoff on the worker side.

Per shard, on one worker:

    IDLE --assigned, owners/<s> absent: create it under our lease--> OWNED(token)
    OWNED --unassigned--> RELEASING: handler.stop() (stop fetching, finish in-flight
             work), commit the offset fenced by token, delete owners/<s> only if its
             create_revision is still token --> IDLE
    OWNED --lease lost / fenced write refused / owners/<s> re-created by another--> IDLE
             at once, through handler.abort(); nothing is committed.

The token is the create_revision of `owners/<s>`. An assigned shard whose key is
still held by someone else stays IDLE until that key is deleted (released, or its
owner's lease expired); the worker never takes it over by force. So a gaining
worker starts only after the losing one committed and let go (DESIGN.md, handoff).

Every claim handed to the consumer layer carries `valid()`: True while the session
is surely alive, the shard was not aborted, and it is still owned. The consumer
checks it before each event, which keeps a paused-then-resumed worker (a zombie)
from processing even before its keepalive thread has run.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from shardctl.etcd import EtcdClient, EtcdError, EtcdUnavailable, KeyValue, Session
from shardctl.keyspace import Keyspace
from shardctl.records import OffsetRecord
from workers.offsets import OffsetFenced, OffsetStore, Position

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


class ShardHandler(Protocol):
    """The consumer layer of a worker.

    `start` and `stop` run on the worker's event loop. `abort` may be called from the
    lease keepalive thread: it must be thread-safe and return at once.
    `position` returns only a position whose every earlier event is fully handled
    (it is what gets committed).
    """

    async def start(self, claim: Claim) -> None: ...

    async def stop(self, shard: int, token: int) -> Position | None: ...

    def position(self, shard: int) -> Position | None: ...

    def abort(self, shards: Collection[int], reason: str) -> None: ...


@dataclass
class _Owned:
    token: int
    committed: Position | None
    stopped: bool = False
    final: Position | None = None


class Ownership:
    def __init__(
        self,
        client: EtcdClient,
        keys: Keyspace,
        worker_id: str,
        session: Session,
        handler: ShardHandler,
    ) -> None:
        self.client = client
        self.keys = keys
        self.worker_id = worker_id
        self.session = session
        self.handler = handler
        self.offsets = OffsetStore(client, keys)
        self.owned: dict[int, _Owned] = {}
        self._lock = asyncio.Lock()
        self._aborted = threading.Event()

    # -- queries -------------------------------------------------------------

    def holds(self, shard: int, token: int) -> bool:
        if self._aborted.is_set() or not self.session.is_valid():
            return False
        owned = self.owned.get(shard)
        return owned is not None and owned.token == token and not owned.stopped

    @property
    def aborted(self) -> bool:
        return self._aborted.is_set()

    # -- lease loss (any thread) -----------------------------------------------

    def abort_all(self, reason: str) -> None:
        """Stop every shard at once. Safe to call from the keepalive thread."""
        if self._aborted.is_set():
            return
        self._aborted.set()
        shards = list(self.owned)
        log.error("%s: stopping shards %s now: %s", self.worker_id, shards, reason)
        self.handler.abort(shards, reason)

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
            leaving = sorted(s for s in self.owned if s not in assigned)
            await self._each(self._release, leaving, "release")
            joining = sorted(
                s for s in assigned if s not in self.owned and self._may_acquire(owners.get(s))
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
        key = self.keys.owner(shard)
        res = await self.client.create_if_absent(
            key, self.worker_id.encode(), lease=self.session.lease_id
        )
        if not res.created and not self._may_acquire(res.kv):
            return  # still held by the previous owner; its delete will wake us
        token = res.kv.create_revision
        offset = await self.offsets.read(shard)
        if self._aborted.is_set() or not self.session.is_valid():
            return  # the key goes away with the lease
        committed = None if offset is None else Position(offset.position, offset.event_id)
        self.owned[shard] = _Owned(token=token, committed=committed)
        log.info("%s: acquired shard %d token %d at %s", self.worker_id, shard, token, committed)
        await self.handler.start(Claim(shard, token, offset, self))
        if self._aborted.is_set():
            self.handler.abort([shard], "lease lost while starting")

    async def _release(self, shard: int) -> None:
        owned = self.owned[shard]
        if not owned.stopped:
            owned.final = await self.handler.stop(shard, owned.token)
            owned.stopped = True
        if owned.final is not None and owned.final != owned.committed:
            try:
                await self.offsets.commit(shard, owned.token, owned.final)
            except OffsetFenced as exc:
                log.error("%s: %s", self.worker_id, exc)
                del self.owned[shard]
                return
            owned.committed = owned.final
        await self.client.delete_if_created_at(self.keys.owner(shard), owned.token)
        del self.owned[shard]
        log.info(
            "%s: released shard %d token %d at %s",
            self.worker_id,
            shard,
            owned.token,
            owned.committed,
        )

    def _drop(self, shard: int, reason: str) -> None:
        log.error("%s: lost shard %d: %s", self.worker_id, shard, reason)
        self.owned.pop(shard, None)
        self.handler.abort([shard], reason)

    async def release_all(self) -> None:
        await self.reconcile((), {})

    # -- offsets ---------------------------------------------------------------

    async def commit_positions(self) -> None:
        """Commit each owned shard's handled position, fenced by its token."""
        async with self._lock:
            todo = []
            for shard, owned in self.owned.items():
                if owned.stopped:
                    continue
                at = self.handler.position(shard)
                if at is not None and at != owned.committed:
                    todo.append((shard, owned, at))
            if not todo or not self.session.is_valid():
                return
            results = await asyncio.gather(
                *(self.offsets.commit(s, o.token, at) for s, o, at in todo),
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
