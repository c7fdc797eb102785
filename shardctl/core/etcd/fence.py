"""The one fence: a write that lands only while a key is the incarnation we hold.

A holder creates a key (the election key, `owners/<shard>`) and keeps its
create_revision as its *token*. `Fence(key, token)` is the comparison
`create_revision(key) == token`, etcd's `IsOwner()`: a txn guarded by it succeeds
only while that very incarnation of the key exists, so a holder that lost the key
(lease expired, deleted, re-created by someone else) cannot write, even before it
noticed. Leader writes (`Leadership.guarded_txn`), offset commits
(`workers.offsets.OffsetStore.commit`) and the release of an owner key all go
through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shardctl.core.etcd.client import CreateRevisionIs, Delete, EtcdClient, Guard, KeyValue, Op


@dataclass(frozen=True)
class Fenced:
    """The outcome of a fenced txn: `written`, and the key as the txn found it."""

    written: bool
    found: KeyValue | None
    token: int

    @property
    def holds(self) -> bool:
        """Whether the fence held (if not `written`, another guard failed)."""
        return self.found is not None and self.found.create_revision == self.token

    def describe(self) -> str:
        """Who holds the key instead, for an error message."""
        if self.found is None:
            return "absent"
        return f"held by {self.found.value.decode()!r} with token {self.found.create_revision}"


@dataclass(frozen=True)
class Fence:
    """Holding `key` in the incarnation created at revision `token`."""

    key: str
    token: int

    def guard(self) -> CreateRevisionIs:
        return CreateRevisionIs(self.key, self.token)

    async def txn(
        self, client: EtcdClient, ops: Sequence[Op], guards: Sequence[Guard] = ()
    ) -> Fenced:
        """Apply `ops` atomically if the fence and every extra guard hold."""
        ok, found = await client.txn([self.guard(), *guards], ops, read_back=[self.key])
        return Fenced(ok, found[self.key], self.token)

    async def release(self, client: EtcdClient) -> bool:
        """Delete the key if it still is our incarnation; False if it was not."""
        return (await self.txn(client, [Delete(self.key)])).written
