"""The reader's checkpoint in etcd: `<root>cdc/<source>/checkpoint`.

The value is a `cdc.replication.position.Checkpoint` document: a transaction
boundary (file:pos just after a transaction's end event, and the GTID state
including it). It only moves forward, to the end of the newest transaction
whose messages, and those of every transaction before it, were acknowledged
by the producer.

Writes are fenced by the reader's leadership token: the put happens in an etcd
transaction that requires `cdc/<source>/leader` to still have the
create_revision the leader got when it was elected. A deposed reader (lease
expired, paused past its TTL) therefore cannot move the checkpoint, even if it
has not noticed yet. Operators reset it only while no reader leads.
"""

from __future__ import annotations

from cdc.replication.position import Checkpoint, CheckpointFormatError
from shardctl.etcd.client import Absent, Delete, EtcdClient, Put
from shardctl.etcd.election import Leadership
from shardctl.keyspace import Keyspace


class CheckpointError(Exception):
    """The checkpoint cannot be read or changed."""


class CheckpointStore:
    def __init__(self, client: EtcdClient, keyspace: Keyspace, source: str) -> None:
        self._client = client
        self.key = keyspace.cdc_checkpoint(source)
        self.leader_key = keyspace.cdc_leader(source)
        self.source = source

    async def load(self) -> Checkpoint | None:
        kv = await self._client.get(self.key)
        if kv is None:
            return None
        try:
            return Checkpoint.from_json(kv.value)
        except CheckpointFormatError as exc:
            raise CheckpointError(f"{self.key}: {exc}") from exc

    async def save(self, leadership: Leadership, checkpoint: Checkpoint) -> None:
        """Write `checkpoint` while `leadership` holds; raises NotLeader otherwise."""
        await leadership.guarded_put(self.key, checkpoint.to_json())

    async def reset(self, checkpoint: Checkpoint | None, *, replace: bool = True) -> None:
        """Set (or, with None, delete) the checkpoint; refused while a reader leads,
        and, with `replace=False`, when the source already has one."""
        op = Delete(self.key) if checkpoint is None else Put(self.key, checkpoint.to_json())
        guards = (
            [Absent(self.leader_key)] if replace else [Absent(self.leader_key), Absent(self.key)]
        )
        ok, _ = await self._client.txn(guards, [op])
        if not ok and not replace and await self._client.get(self.key) is not None:
            raise CheckpointError(
                f"{self.key}: source {self.source!r} already has a checkpoint; "
                "replacing it needs --force"
            )
        if not ok:
            leader = await self._client.get(self.leader_key)
            who = leader.value.decode() if leader is not None else "a reader"
            raise CheckpointError(
                f"{self.key}: {who} leads source {self.source!r}; stop every reader of the "
                "source before changing its checkpoint"
            )
