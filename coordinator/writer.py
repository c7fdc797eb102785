"""The assignment writer: turn etcd state into assign() inputs, and write its output.

The write is one txn guarded by the leadership token (the create_revision of
`coordinator/leader`) and by the mod_revision of the assignment we computed from.
A deposed leader's write fails with NotLeader; a stale view (someone else wrote in
between) writes nothing and the caller recomputes. The assignment is one value
(`Assignment.encode`: a worker table plus one index per shard), so the write stays
atomic; a value over `ASSIGNMENT_MAX_BYTES` raises AssignmentTooLarge before etcd
is asked.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from coordinator.assignment import Member
from coordinator.placement import place
from shardctl.core.etcd import Absent, KeyValue, Leadership, ModRevisionIs, Put
from shardctl.core.keyspace import Keyspace
from shardctl.core.records import Assignment, ClusterConfig, RecordError, WorkerRecord

log = logging.getLogger(__name__)


def members_from(keys: Keyspace, items: Mapping[str, KeyValue]) -> dict[str, Member]:
    """Members from the workers/ keys. A record that does not decode is left out, loudly."""
    members: dict[str, Member] = {}
    for key, kv in items.items():
        try:
            record = WorkerRecord.decode(key, kv.value)
        except RecordError as exc:
            log.error("ignoring worker record: %s", exc)
            continue
        members[keys.worker_id_of(key)] = Member(
            capacity=record.capacity,
            draining=record.state == "draining",
            labels=tuple(sorted(record.labels.items())),
            restart_grace_s=record.restart_grace,
        )
    return members


@dataclass(frozen=True)
class Current:
    """The assignment as read, with the mod_revision to guard the next write on."""

    assignment: Assignment | None
    mod_revision: int

    @classmethod
    def of(cls, kv: KeyValue | None) -> Current:
        if kv is None:
            return cls(None, 0)
        return cls(Assignment.decode(kv.key, kv.value), kv.mod_revision)


def next_assignment(
    current: Assignment | None,
    members: Mapping[str, Member],
    config: ClusterConfig,
    max_moves: int | None,
) -> Assignment | None:
    """The next generation, or None when the current assignment already is the answer."""
    return compute_assignment(current, members, config, max_moves)[0]


def compute_assignment(
    current: Assignment | None,
    members: Mapping[str, Member],
    config: ClusterConfig,
    max_moves: int | None,
) -> tuple[Assignment | None, list[int]]:
    """`next_assignment`, and the shards no eligible worker may own (they stay unowned)."""
    previous = current.owners if current is not None else []
    placed = place(previous, members, config.num_shards, config.weights, config.affinity, max_moves)
    owners = placed.owners
    if current is not None and current.num_shards == config.num_shards and current.owners == owners:
        return None, placed.unplaceable
    generation = current.generation + 1 if current is not None else 1
    new = Assignment(generation=generation, num_shards=config.num_shards, owners=owners)
    return new, placed.unplaceable


async def write_assignment(
    leadership: Leadership, keys: Keyspace, current: Current, new: Assignment
) -> bool:
    """Write `new` if we still lead, nobody wrote since `current` and maintenance mode
    is off (the `maintenance` key is absent). NotLeader if deposed."""
    return await leadership.guarded_txn(
        [Put(keys.assignment, new.encode())],
        guards=[
            ModRevisionIs(keys.assignment, current.mod_revision),
            # Once `maintenance on` has written its key, no generation computed before
            # can land after it.
            Absent(keys.maintenance),
        ],
    )
