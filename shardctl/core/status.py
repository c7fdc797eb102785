"""The cluster read model: one typed picture of a cluster, read from etcd.

`shardctl status` (and its --json document), `status --watch`, `doctor` and the demo
all read the cluster through `read_cluster_status`. It reads every key once per call
(workers, owners, leaders, assignment, config, maintenance, reader leaders), so one
`ClusterStatus` is one consistent-enough picture, and every view derives the same
facts (unassigned, in handoff, unowned, absent owners) the same way.

Which shards no worker may own (`unplaceable`) is the coordinator's placement rule;
this core module does not import a role, so the caller passes the rule in.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shardctl.core.etcd import EtcdClient, KeyValue
from shardctl.core.keyspace import Keyspace
from shardctl.core.records import (
    Assignment,
    ClusterConfig,
    Maintenance,
    OffsetRecord,
    Reshard,
    WorkerRecord,
)

# (keyspace, the workers/ keys by key, the cluster config) -> shards no worker may own.
UnplaceableRule = Callable[[Keyspace, Mapping[str, KeyValue], ClusterConfig], list[int]]


@dataclass(frozen=True)
class Holder:
    """Who holds a lease-bound key (the coordinator leader, a shard) and its token:
    the key's create_revision."""

    id: str
    token: int


@dataclass(frozen=True)
class WorkerStatus:
    id: str
    record: WorkerRecord
    assigned: list[int]  # shards the assignment gives it
    owned: list[int]  # shards whose owners/<shard> key it holds

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.record.state,
            "capacity": self.record.capacity,
            "labels": self.record.labels,
            "restart_grace": self.record.restart_grace,
            "host": self.record.host,
            "pid": self.record.pid,
            "assigned": self.assigned,
            "owned": self.owned,
        }


@dataclass(frozen=True)
class ClusterStatus:
    cluster: str
    leader: Holder | None
    assignment: Assignment | None
    config: ClusterConfig | None
    maintenance: Maintenance | None
    workers: list[WorkerStatus]
    owners: dict[int, Holder]  # shard -> owner
    readers: dict[str, str | None]  # CDC source -> id of the reader leading it (None: none)
    unplaceable: list[int] = field(default_factory=list)
    reshard: Reshard | None = None  # the last change of the shard count, if any

    @property
    def resharding(self) -> Reshard | None:
        """The change of shard count under way (requested or switched), else None."""
        return self.reshard if self.reshard is not None and self.reshard.in_progress else None

    @property
    def generation(self) -> int | None:
        return None if self.assignment is None else self.assignment.generation

    @property
    def num_shards(self) -> int | None:
        """The shard count of the assignment (None before the first generation)."""
        return None if self.assignment is None else self.assignment.num_shards

    @property
    def shard_count(self) -> int:
        """The shards that exist: the assignment's count, else the config's, else 0."""
        if self.assignment is not None:
            return self.assignment.num_shards
        return 0 if self.config is None else self.config.num_shards

    @property
    def unassigned(self) -> list[int]:
        if self.assignment is None:
            return []
        return [s for s, target in enumerate(self.assignment.owners) if target is None]

    @property
    def in_handoff(self) -> list[int]:
        """Assigned shards whose owner key is not (yet) held by the assigned worker."""
        if self.assignment is None:
            return []
        return [
            s
            for s, target in enumerate(self.assignment.owners)
            if target is not None and (s not in self.owners or self.owners[s].id != target)
        ]

    @property
    def unowned(self) -> list[int]:
        return [s for s in range(self.shard_count) if s not in self.owners]

    @property
    def absent_owners(self) -> dict[str, list[int]]:
        """Workers the assignment names that are not registered, with their shards."""
        registered = {w.id for w in self.workers}
        absent: dict[str, list[int]] = {}
        if self.assignment is not None:
            for shard, target in enumerate(self.assignment.owners):
                if target is not None and target not in registered:
                    absent.setdefault(target, []).append(shard)
        return absent

    @property
    def owner_of(self) -> dict[int, str]:
        return {shard: holder.id for shard, holder in self.owners.items()}

    def to_json(self) -> dict[str, Any]:
        """The `shardctl status --json` document."""
        return {
            "cluster": self.cluster,
            "leader": None
            if self.leader is None
            else {"id": self.leader.id, "token": self.leader.token},
            "generation": self.generation,
            "num_shards": self.num_shards,
            "config": None if self.config is None else self.config.model_dump(),
            "maintenance": None if self.maintenance is None else self.maintenance.model_dump(),
            "workers": [w.to_json() for w in self.workers],
            "unassigned": self.unassigned,
            "unplaceable": self.unplaceable,
            "absent_owners": self.absent_owners,
            "in_handoff": self.in_handoff,
            "readers": self.readers,
            "reshard": None if self.reshard is None else self.reshard.model_dump(),
        }


async def read_cluster_status(
    client: EtcdClient,
    keys: Keyspace,
    cluster: str,
    unplaceable: UnplaceableRule | None = None,
) -> ClusterStatus:
    """Read the cluster's keys once and decode them (RecordError names a bad key)."""
    workers = await client.get_prefix(keys.workers_prefix)
    owner_keys = await client.get_prefix(keys.owners_prefix)
    leader = await client.get(keys.coordinator_leader)
    assignment_kv = await client.get(keys.assignment)
    config_kv = await client.get(keys.config)
    maintenance_kv = await client.get(keys.maintenance)
    cdc = await client.get_prefix(f"{keys.root}cdc/")
    reshard_kv = await client.get(keys.reshard)

    assignment = (
        Assignment.decode(assignment_kv.key, assignment_kv.value) if assignment_kv else None
    )
    config = ClusterConfig.decode(config_kv.key, config_kv.value) if config_kv else None
    maintenance = (
        Maintenance.decode(maintenance_kv.key, maintenance_kv.value) if maintenance_kv else None
    )
    owners = {
        keys.shard_of_owner_key(kv.key): Holder(kv.value.decode(), kv.create_revision)
        for kv in owner_keys.items
    }
    owned: dict[str, list[int]] = {}
    for shard, holder in sorted(owners.items()):
        owned.setdefault(holder.id, []).append(shard)
    assigned: dict[str, list[int]] = {}  # one pass: a cluster can have 100k shards
    for shard, target in enumerate(assignment.owners if assignment else []):
        if target is not None:
            assigned.setdefault(target, []).append(shard)
    rows = []
    for kv in workers.items:
        wid = keys.worker_id_of(kv.key)
        rows.append(
            WorkerStatus(
                id=wid,
                record=WorkerRecord.decode(kv.key, kv.value),
                assigned=assigned.get(wid, []),
                owned=owned.get(wid, []),
            )
        )
    readers: dict[str, str | None] = {}
    prefix = f"{keys.root}cdc/"
    for kv in cdc.items:
        source, _, rest = kv.key[len(prefix) :].partition("/")
        if rest == "leader":
            readers[source] = kv.value.decode()
        elif rest == "checkpoint":
            readers.setdefault(source, None)
    return ClusterStatus(
        cluster=cluster,
        leader=None if leader is None else Holder(leader.value.decode(), leader.create_revision),
        assignment=assignment,
        config=config,
        maintenance=maintenance,
        workers=rows,
        owners=owners,
        readers=dict(sorted(readers.items())),
        reshard=Reshard.decode(reshard_kv.key, reshard_kv.value) if reshard_kv else None,
        unplaceable=(
            unplaceable(keys, {kv.key: kv for kv in workers.items}, config)
            if unplaceable is not None and config is not None and config.affinity
            else []
        ),
    )


async def committed_offsets(
    client: EtcdClient, keys: Keyspace, topic: str | None
) -> dict[int, int]:
    """The committed offset of every shard that has one: of `topic`, or the sum over
    every topic when no topic is named."""
    listing = await client.get_prefix(keys.offsets_prefix)
    positions: dict[int, int] = {}
    for kv in listing.items:
        record = OffsetRecord.decode(kv.key, kv.value)
        if topic is None:
            positions[keys.shard_of_offset_key(kv.key)] = sum(record.positions.values())
        elif topic in record.positions:
            positions[keys.shard_of_offset_key(kv.key)] = record.positions[topic]
    return positions


def shard_ranges(shards: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8' ('-' when empty)."""
    if not shards:
        return "-"
    parts: list[str] = []
    start = prev = shards[0]
    for s in [*shards[1:], None]:
        if s is not None and s == prev + 1:
            prev = s
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if s is not None:
            start = prev = s
    return ",".join(parts)


def maintenance_banner(record: Maintenance) -> str:
    """The loud line `status` and `doctor` show while maintenance mode is on."""
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(record.since))
    reason = f" ({record.reason})" if record.reason else ""
    return (
        f"MAINTENANCE MODE ON since {since}{reason}: the assignment is frozen, no shard "
        "moves, not even away from dead workers. `shardctl maintenance off` to resume"
    )


def reshard_line(record: Reshard) -> str:
    """What `status` says of a change of shard count that is under way."""
    head = f"RESHARDING {record.from_shards} -> {record.to_shards} shards ({record.shard_hash}): "
    if record.state == "requested":
        return head + (
            "requested; the leading reader switches at its next transaction boundary, "
            "publishing with the old count until then"
        )
    gaining = record.gaining
    return head + (
        f"the reader switched at {record.position}; shards {gaining.start}-{gaining.stop - 1} "
        "handle nothing past their barrier until every old shard has passed it"
    )
