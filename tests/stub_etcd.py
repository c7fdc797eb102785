"""An in-memory stand-in for `shardctl.core.etcd.EtcdClient`, for unit tests of the
state machines that keep their state in etcd (shard ownership, offset commits).

It keeps etcd's semantics where the code depends on them: one store revision that
every write raises, `create_revision`/`mod_revision`/`version` per key, keys bound to
leases (revoking a lease deletes its keys), and all-or-nothing transactions whose
guards are the real `CreateRevisionIs`/`ValueIs`/`Absent`/`ModRevisionIs`. Setting
`down` makes every call raise `EtcdUnavailable`, naming the operation and the key,
as the real client does when etcd does not answer. Watches replay the history of
every put and delete from their start revision, then follow new ones (what
`shardctl.core.etcd.watch` needs for its mirrors); all calls and writes must come
from one event loop. Integration tests use real etcd.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field

from shardctl.core.etcd import SessionLost
from shardctl.core.etcd.client import (
    Absent,
    CreateResult,
    CreateRevisionIs,
    Delete,
    EtcdUnavailable,
    Guard,
    KeyValue,
    Listing,
    ModRevisionIs,
    Op,
    Put,
    ValueIs,
    WatchEvent,
)


@dataclass
class MemoryEtcd:
    revision: int = 1
    keys: dict[str, KeyValue] = field(default_factory=dict)
    leases: set[int] = field(default_factory=set)
    down: bool = False
    history: list[WatchEvent] = field(default_factory=list)
    _next_lease: int = 0x1000
    _watchers: list[asyncio.Event] = field(default_factory=list)

    async def __aenter__(self) -> MemoryEtcd:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def close(self) -> None:
        return None

    def _reachable(self, op: str, key: str) -> None:
        if self.down:
            raise EtcdUnavailable(f"etcd {op} {key}: unavailable (stub: down)")

    # -- reads -----------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        self._reachable("get", key)
        return self.keys.get(key)

    async def get_prefix(self, prefix: str) -> Listing:
        self._reachable("get_prefix", prefix)
        items = [kv for key, kv in sorted(self.keys.items()) if key.startswith(prefix)]
        return Listing(items=items, revision=self.revision)

    async def range_of(self, key: str, *, prefix: bool) -> Listing:
        self._reachable("range", key)
        items = [kv for k, kv in sorted(self.keys.items()) if _under(k, key, prefix)]
        return Listing(items=items, revision=self.revision)

    # -- watches ---------------------------------------------------------------

    async def watch_events(
        self, key: str, *, prefix: bool, start_revision: int
    ) -> AsyncGenerator[WatchEvent, None]:
        self._reachable("watch", key)
        wake = asyncio.Event()
        self._watchers.append(wake)
        try:
            seen = 0
            while True:
                while seen < len(self.history):
                    event = self.history[seen]
                    seen += 1
                    if event.kv.mod_revision >= start_revision and _under(
                        event.kv.key, key, prefix
                    ):
                        yield event
                wake.clear()
                await wake.wait()
        finally:
            self._watchers.remove(wake)

    def _record(self, kind: str, kv: KeyValue) -> None:
        self.history.append(WatchEvent(kind, kv))
        for wake in self._watchers:
            wake.set()

    # -- writes ----------------------------------------------------------------

    def _put(self, key: str, value: bytes, lease: int) -> None:
        if lease and lease not in self.leases:
            raise AssertionError(f"put {key} with lease {lease:x}, which was not granted")
        self.revision += 1
        old = self.keys.get(key)
        self.keys[key] = KeyValue(
            key=key,
            value=value,
            create_revision=old.create_revision if old else self.revision,
            mod_revision=self.revision,
            version=old.version + 1 if old else 1,
            lease=lease,
        )
        self._record("put", self.keys[key])

    def _delete(self, key: str) -> bool:
        if key not in self.keys:
            return False
        self.revision += 1
        del self.keys[key]
        self._record("delete", KeyValue(key, b"", 0, self.revision, 0, 0))
        return True

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        self._reachable("put", key)
        self._put(key, value, lease)
        return self.revision

    async def delete(self, key: str) -> bool:
        self._reachable("delete", key)
        return self._delete(key)

    def _holds(self, guard: Guard) -> bool:
        # As etcd compares: a missing key has revisions 0, and a value compare on a
        # missing key always fails.
        kv = self.keys.get(guard.key)
        if isinstance(guard, Absent):
            return kv is None
        if isinstance(guard, ValueIs):
            return kv is not None and kv.value == guard.value
        if isinstance(guard, CreateRevisionIs):
            return (kv.create_revision if kv else 0) == guard.create_revision
        if isinstance(guard, ModRevisionIs):
            return (kv.mod_revision if kv else 0) == guard.mod_revision
        raise AssertionError(f"unknown guard {guard!r}")

    async def txn(
        self, guards: Sequence[Guard], ops: Sequence[Op], read_back: Sequence[str] = ()
    ) -> tuple[bool, dict[str, KeyValue | None]]:
        self._reachable("txn", ops[0].key if ops else (guards[0].key if guards else ""))
        ok = all(self._holds(g) for g in guards)
        if ok:
            for op in ops:
                if isinstance(op, Put):
                    self._put(op.key, op.value, op.lease)
                elif isinstance(op, Delete):
                    self._delete(op.key)
        return ok, {key: self.keys.get(key) for key in read_back}

    async def create_if_absent(self, key: str, value: bytes, lease: int = 0) -> CreateResult:
        _ok, found = await self.txn([Absent(key)], [Put(key, value, lease)], read_back=[key])
        kv = found[key]
        assert kv is not None
        return CreateResult(created=_ok, kv=kv)

    # -- leases ----------------------------------------------------------------

    def grant(self) -> int:
        self._next_lease += 1
        self.leases.add(self._next_lease)
        return self._next_lease

    async def grant_lease(self, ttl: int) -> int:
        self._reachable("lease-grant", "")
        return self.grant()

    async def revoke_lease(self, lease: int) -> None:
        self._reachable("lease-revoke", f"{lease:x}")
        self.expire(lease)

    def expire(self, lease: int) -> None:
        """The lease ends (revoked or timed out): its keys go, as in etcd."""
        self.leases.discard(lease)
        for key in [k for k, kv in self.keys.items() if kv.lease == lease]:
            self._delete(key)


def _under(key: str, watched: str, prefix: bool) -> bool:
    return key.startswith(watched) if prefix else key == watched


@dataclass
class StubSession:
    """What ownership, leadership and the worker need of `shardctl.core.etcd.Session`.
    `lose(reason)` is what the keepalive thread does when the lease is gone; `close`
    revokes the lease in `etcd` (if given), deleting its keys."""

    lease_id: int
    valid: bool = True
    etcd: MemoryEtcd | None = None
    lost_reason: str | None = None
    closed: bool = False
    _on_lost: list[Callable[[str], None]] = field(default_factory=list)

    def is_valid(self) -> bool:
        return self.valid

    def on_lost(self, callback: Callable[[str], None]) -> None:
        self._on_lost.append(callback)

    def lose(self, reason: str) -> None:
        self.valid, self.lost_reason = False, reason
        for callback in self._on_lost:
            callback(reason)

    async def close(self, revoke: bool = True) -> bool:
        self.closed, self.valid = True, False
        if revoke and self.etcd is not None:
            self.etcd.expire(self.lease_id)
        return True

    def check(self) -> None:
        if not self.valid:
            raise SessionLost(f"stub session: lease {self.lease_id:x} lost")
