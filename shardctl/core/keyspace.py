"""Every etcd key name of a shardctl cluster, in one place.

All keys live under one root, `<etcd.prefix>/<cluster>/` (default `/shardctl/default/`):

    workers/<id>              worker record, bound to the worker's lease
    coordinator/leader        coordinator id, bound to the leader's lease
    assignment                {generation, num_shards, workers: [id, ...], owner_indices}
    owners/<shard>            worker id, bound to the owner's lease; create_revision = token
    offsets/<shard>           transport position, fenced by the owner token
    cdc/<source>/leader       reader id, bound to the reader's lease
    cdc/<source>/checkpoint   binlog position, fenced by the reader's leadership token
    cdc/<source>/bootstrap/<id>  a pending `shardctl cdc bootstrap` request
    cdc/<source>/snapshot/<id>   an incremental snapshot's progress, fenced by the
                              reader's leadership token
    config                    {num_shards, topics, transport}
    maintenance               {since, reason}: present while the assignment is frozen
    reshard                   the last change of the shard count (`shardctl shards set`)

Shard numbers in key names are zero-padded to six digits so that a range read lists
them in shard order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shardctl.core.config import Settings

_SHARD_DIGITS = 6
_NAME = re.compile(r"^[A-Za-z0-9_.:@-]+$")


def check_name(kind: str, name: str) -> str:
    """A worker id, coordinator id or source name must be safe to embed in a key."""
    if not _NAME.match(name):
        raise ValueError(
            f"{kind} {name!r}: use only letters, digits and _ . : @ - (it becomes part of a key)"
        )
    return name


@dataclass(frozen=True)
class Keyspace:
    """Key names under one cluster root; `root` ends with '/'."""

    root: str

    @classmethod
    def of(cls, settings: Settings) -> Keyspace:
        return cls(settings.etcd_root())

    def __post_init__(self) -> None:
        if not self.root.endswith("/"):
            raise ValueError(f"keyspace root {self.root!r} must end with '/'")

    # workers/<id>
    @property
    def workers_prefix(self) -> str:
        return f"{self.root}workers/"

    def worker(self, worker_id: str) -> str:
        return f"{self.workers_prefix}{check_name('worker id', worker_id)}"

    def worker_id_of(self, key: str) -> str:
        return _suffix(key, self.workers_prefix)

    # coordinator/leader
    @property
    def coordinator_leader(self) -> str:
        return f"{self.root}coordinator/leader"

    # assignment
    @property
    def assignment(self) -> str:
        return f"{self.root}assignment"

    # owners/<shard>
    @property
    def owners_prefix(self) -> str:
        return f"{self.root}owners/"

    def owner(self, shard: int) -> str:
        return f"{self.owners_prefix}{_shard(shard)}"

    def shard_of_owner_key(self, key: str) -> int:
        return int(_suffix(key, self.owners_prefix))

    # offsets/<shard>
    @property
    def offsets_prefix(self) -> str:
        return f"{self.root}offsets/"

    def offset(self, shard: int) -> str:
        return f"{self.offsets_prefix}{_shard(shard)}"

    def shard_of_offset_key(self, key: str) -> int:
        return int(_suffix(key, self.offsets_prefix))

    # cdc/<source>/...
    def cdc_leader(self, source: str) -> str:
        return f"{self.root}cdc/{check_name('cdc source', source)}/leader"

    def cdc_checkpoint(self, source: str) -> str:
        return f"{self.root}cdc/{check_name('cdc source', source)}/checkpoint"

    def cdc_bootstrap_prefix(self, source: str) -> str:
        """Pending bootstrap requests: `cdc/<source>/bootstrap/<request id>`."""
        return f"{self.root}cdc/{check_name('cdc source', source)}/bootstrap/"

    def cdc_filter(self, source: str) -> str:
        """The `cdc.filter` the source's reader last ran with (`snapshot_new_tables`)."""
        return f"{self.root}cdc/{check_name('cdc source', source)}/filter"

    def cdc_snapshot_prefix(self, source: str) -> str:
        """Progress of incremental snapshots: `cdc/<source>/snapshot/<request id>`."""
        return f"{self.root}cdc/{check_name('cdc source', source)}/snapshot/"

    # config
    @property
    def config(self) -> str:
        return f"{self.root}config"

    # maintenance
    @property
    def maintenance(self) -> str:
        return f"{self.root}maintenance"

    # reshard
    @property
    def reshard(self) -> str:
        return f"{self.root}reshard"


def _shard(shard: int) -> str:
    if shard < 0:
        raise ValueError(f"shard {shard} is negative")
    return f"{shard:0{_SHARD_DIGITS}d}"


def _suffix(key: str, prefix: str) -> str:
    if not key.startswith(prefix) or len(key) == len(prefix):
        raise ValueError(f"key {key!r} is not under {prefix!r}")
    return key[len(prefix) :]
