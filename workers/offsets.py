"""Offset commits fenced by the owner token.

`offsets/<shard>` holds the transport positions of a shard, one per topic: an
`OffsetRecord`, the one offset type from etcd to the consumer and back (the consumer
reports its position as the record to commit, with its owner token in it). Only the
current owner may write it: the write is fenced (`shardctl.core.etcd.Fence`) by
`owners/<shard>` still having the create_revision equal to the writer's token. A
worker whose ownership ended (lease expired while it was paused, or the key was
handed over) gets OffsetFenced and must stop processing the shard.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from shardctl.core.etcd import Delete, EtcdClient, EtcdError, Fence, KeyValue, Put
from shardctl.core.keyspace import Keyspace
from shardctl.core.records import OffsetRecord


class OffsetFenced(EtcdError):
    """The offset write was refused: the writer no longer owns the shard."""

    def __init__(self, message: str, shard: int, token: int) -> None:
        super().__init__(message)
        self.shard = shard
        self.token = token


class TopicRecreated(Exception):
    """A topic was deleted and re-created since the shard's offsets were stored: they
    do not apply to it. The message names the shard, the topic, both topic ids and
    the recovery command."""

    def __init__(self, shard: int, topic: str, position: int | None, stored: str, now: str) -> None:
        at = f"{topic}@{position}" if position is not None else topic
        super().__init__(
            f"shard {shard}: topic {topic} was deleted and re-created: the stored offsets "
            f"({at}) belong to topic id {stored}, the topic now has id {now}, so they "
            "would skip or repeat its events. The shard stays stopped until you choose "
            f"where it starts: `shardctl offsets reset --shard {shard} --topic {topic} "
            "--to-earliest --execute` (or --to-latest)"
        )
        self.shard = shard
        self.topic = topic


def check_topic_ids(
    shard: int, stored: OffsetRecord | None, current: Mapping[str, str], topics: Iterable[str]
) -> None:
    """Raise TopicRecreated if a stored position of one of `topics` belongs to another
    incarnation of it than `current`. Topics without a stored or a current id (an
    older record, a topic not created yet) pass."""
    if stored is None:
        return
    for topic in topics:
        was, now = stored.topic_ids.get(topic), current.get(topic)
        if was and now and was != now:
            raise TopicRecreated(shard, topic, stored.positions.get(topic), was, now)


class OffsetStore:
    def __init__(self, client: EtcdClient, keys: Keyspace) -> None:
        self.client = client
        self.keys = keys

    async def read(self, shard: int) -> OffsetRecord | None:
        return self.decode(await self.client.get(self.keys.offset(shard)))

    @staticmethod
    def decode(kv: KeyValue | None) -> OffsetRecord | None:
        """The record of an `offsets/<shard>` key as read (None if absent)."""
        if kv is None:
            return None
        decoded: OffsetRecord = OffsetRecord.decode(kv.key, kv.value)
        return decoded

    async def commit(self, shard: int, record: OffsetRecord, release: bool = False) -> None:
        """Write `record` if its token still owns the shard; else raise OffsetFenced.
        With `release`, `owners/<shard>` is deleted in the same fenced txn: the final
        commit of a handoff and the release are one etcd round trip, and the next
        owner, woken by the delete, reads this record."""
        fence = Fence(self.keys.owner(shard), record.token)
        ops: list[Put | Delete] = [Put(self.keys.offset(shard), record.encode())]
        if release:
            ops.append(Delete(fence.key))
        result = await fence.txn(self.client, ops)
        if not result.written:
            raise OffsetFenced(
                f"offset commit for shard {shard} ({record.describe()}) rejected: "
                f"token {record.token} no longer owns {fence.key} ({result.describe()})",
                shard,
                record.token,
            )
