"""Leader election on one key, with a fencing token.

A candidate holds a Session (lease). Campaigning creates the election key with the
candidate id as value, under the candidate's lease, only if the key is absent. The
candidate that creates it leads; the others wait for the key to be deleted (the
leader resigned or its lease expired) and try again.

The leadership token is the key's create_revision. It is unique and increases with
every new leader, so a write guarded by "election key's create_revision == token"
(`Fence`) succeeds only while this very leadership lasts. A deposed leader's guarded writes
fail with NotLeader, even if it has not noticed yet.

    CANDIDATE --created key--> LEADER --+--> DEPOSED (lease lost, or the key was deleted
                                        |             or re-created by someone else)
                                        +--> RESIGNED (resign(): key deleted if still ours)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from shardctl.core.backoff import Backoff
from shardctl.core.etcd.client import (
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    Guard,
    Op,
    Put,
)
from shardctl.core.etcd.fence import Fence
from shardctl.core.etcd.session import Session, SessionLost
from shardctl.core.etcd.watch import watch_key

log = logging.getLogger(__name__)


class NotLeader(EtcdError):
    """A guarded write was refused: this leadership is over."""


@dataclass(frozen=True)
class LeaderInfo:
    candidate: str
    token: int
    lease: int


class Leadership:
    """Proof of leadership, valid while the election key keeps `token` as create_revision."""

    def __init__(
        self, client: EtcdClient, session: Session, key: str, candidate: str, token: int
    ) -> None:
        self.client = client
        self.session = session
        self.key = key
        self.candidate = candidate
        self.token = token
        self.fence = Fence(key, token)

    def __repr__(self) -> str:
        return f"Leadership({self.key!r}, candidate={self.candidate!r}, token={self.token})"

    async def guarded_txn(self, ops: Sequence[Op], guards: Sequence[Guard] = ()) -> bool:
        """Apply `ops` atomically only while this leadership holds; else NotLeader.

        Extra `guards` may be given; if only they fail, nothing is written and the
        result is False (the leadership itself still held at that moment).
        """
        self.session.check()
        result = await self.fence.txn(self.client, ops, guards)
        if result.written:
            return True
        if result.holds:
            return False
        raise NotLeader(
            f"{self.candidate}: write to {', '.join(o.key for o in ops)} refused: "
            f"{self.key} no longer has create_revision {self.token}"
        )

    async def guarded_put(self, key: str, value: bytes) -> None:
        await self.guarded_txn([Put(key, value)])

    async def wait_lost(self) -> str:
        """Return a reason once leadership is over: lease lost, or the key changed hands."""
        lost = asyncio.ensure_future(self.session.wait_lost())
        gone = asyncio.ensure_future(self._wait_key_changed())
        try:
            done, _ = await asyncio.wait({lost, gone}, return_when=asyncio.FIRST_COMPLETED)
            return done.pop().result()
        finally:
            for task in (lost, gone):
                task.cancel()
            await asyncio.gather(lost, gone, return_exceptions=True)

    async def _wait_key_changed(self) -> str:
        async for kv in watch_key(self.client, self.key):
            if kv is None or kv.create_revision != self.token:
                return f"{self.key} was deleted or re-created (token {self.token} is void)"
        raise AssertionError("watch_key never ends")

    async def resign(self) -> None:
        """Give up leadership; the key is deleted only if it is still ours."""
        await self.fence.release(self.client)


class Election:
    """Campaign for, or observe, the leader of one election key."""

    def __init__(self, client: EtcdClient, key: str) -> None:
        self.client = client
        self.key = key

    async def leader(self) -> LeaderInfo | None:
        kv = await self.client.get(self.key)
        if kv is None:
            return None
        return LeaderInfo(kv.value.decode(), kv.create_revision, kv.lease)

    async def campaign(self, session: Session, candidate: str) -> Leadership:
        """Block until `candidate` leads; raises SessionLost if the session ends first.

        etcd outages are retried: the campaign resumes when etcd answers again.
        """
        backoff = Backoff()
        while True:
            session.check()
            try:
                res = await self.client.create_if_absent(
                    self.key, candidate.encode(), lease=session.lease_id
                )
                if res.created or res.kv.lease == session.lease_id:
                    # Either we just won, or an earlier attempt of ours won but its
                    # answer was lost in an outage: the key is ours either way.
                    log.info(
                        "%s leads %s with token %d", candidate, self.key, res.kv.create_revision
                    )
                    return Leadership(
                        self.client, session, self.key, candidate, res.kv.create_revision
                    )
                await self._wait_vacant(session, res.kv.create_revision)
                backoff.reset()
            except EtcdUnavailable as exc:
                log.warning("%s: campaign for %s waits for etcd: %s", candidate, self.key, exc)
                await asyncio.sleep(backoff.next())

    async def _wait_vacant(self, session: Session, seen_token: int) -> None:
        lost = asyncio.ensure_future(session.wait_lost())
        vacant = asyncio.ensure_future(self._key_changed(seen_token))
        try:
            await asyncio.wait({lost, vacant}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (lost, vacant):
                task.cancel()
            await asyncio.gather(lost, vacant, return_exceptions=True)
        if session.is_lost:
            raise SessionLost(f"{session.name}: lease lost while campaigning for {self.key}")

    async def _key_changed(self, seen_token: int) -> None:
        async for kv in watch_key(self.client, self.key):
            if kv is None or kv.create_revision != seen_token:
                return
