"""The log of every `owners/<shard>` put and delete, and the largest owner overlap.

`OwnersLog.run(client)` follows the `owners/` prefix with a watch that resumes
after etcd restarts (from the last revision seen). After a compaction the watch
lists the keys again: the log records a `reset` and then the listing as puts.
Each record is (revision, kind, shard, worker, token); token = create_revision.

`max_overlap(records)` replays the records in revision order and returns the
largest number of distinct owner tokens one shard had at the same revision, minus
one: 0 means no shard ever had two owners at the same moment. A put of a new token
while an older token still holds the key (no delete in between) is an overlap.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shardctl.core.etcd import EtcdClient, KeyValue, watch_updates
from shardctl.core.keyspace import Keyspace

RESET_SHARD = -1


@dataclass(frozen=True)
class OwnerRecord:
    revision: int
    kind: str  # "put", "delete", or "reset" (a listing follows; shard is RESET_SHARD)
    shard: int
    worker: str
    token: int


def max_overlap(records: list[OwnerRecord]) -> int:
    """Largest number of simultaneous owners of one shard, minus one (0 = none)."""
    holders: dict[int, set[int]] = {}  # shard -> live tokens
    worst = 0
    # A stable sort keeps a reset ahead of the listing recorded after it.
    for record in sorted(records, key=lambda r: r.revision):
        if record.kind == "reset":
            holders.clear()
        elif record.kind == "delete":
            holders.pop(record.shard, None)
        else:
            tokens = holders.setdefault(record.shard, set())
            tokens.add(record.token)
            worst = max(worst, len(tokens) - 1)
    return worst


def owned_shards(records: list[OwnerRecord]) -> dict[int, str]:
    """Shard -> worker at the end of the records."""
    owners: dict[int, str] = {}
    for record in sorted(records, key=lambda r: r.revision):
        if record.kind == "reset":
            owners.clear()
        elif record.kind == "delete":
            owners.pop(record.shard, None)
        else:
            owners[record.shard] = record.worker
    return owners


@dataclass
class OwnersLog:
    keys: Keyspace
    records: list[OwnerRecord] = field(default_factory=list)
    resets: int = 0

    async def run(self, client: EtcdClient) -> None:
        async for update in watch_updates(client, self.keys.owners_prefix, prefix=True):
            if update.reset:
                if self.records or self.resets:
                    self.records.append(OwnerRecord(update.revision, "reset", RESET_SHARD, "", 0))
                self.resets += 1
                # Listed keys are recorded at the listing's revision: present there.
                self.records.extend(self._record("put", kv, update.revision) for kv in update.items)
            elif update.event is not None:
                self.records.append(self._record(update.event.kind, update.event.kv))

    def _record(self, kind: str, kv: KeyValue, revision: int | None = None) -> OwnerRecord:
        shard = self.keys.shard_of_owner_key(kv.key)
        at = kv.mod_revision if revision is None else revision
        if kind == "delete":
            return OwnerRecord(at, kind, shard, "", 0)
        return OwnerRecord(at, kind, shard, kv.value.decode(), kv.create_revision)
