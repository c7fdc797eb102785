"""The JSON documents stored at the keys of `shardctl.core.keyspace`.

    workers/<id>     WorkerRecord   {host, pid, capacity, labels, state, version, session,
                                     restart_grace}
    assignment       Assignment     {generation, num_shards, workers: [id, ...],
                                     owner_indices: base64 of one u16 per shard}
    offsets/<shard>  OffsetRecord   {positions: {topic: offset}, event_id, token,
                                     topic_ids: {topic: id}, stalled: {since, error} | null}
    config           ClusterConfig  {num_shards, topics, transport, weights, affinity, shard_hash}
    maintenance      Maintenance    {since, reason}
    reshard          Reshard        {from_shards, to_shards, state, requested_at, position,
                                     switched_at, barrier: {topic: [offset, ...]}, completed_at}

Decoding is strict: a malformed document raises RecordError naming the key, never
yields a guess.
"""

from __future__ import annotations

import base64
import binascii
import json
import sys
from array import array
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shardctl.core.hashing import ShardHash, gaining_shards

SCHEMA_VERSION = 1


class RecordError(ValueError):
    """A stored document does not decode; the message names the key."""


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    def encode(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def decode(cls, key: str, raw: bytes) -> Self:
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(document)'}: {e['msg']}"
                for e in exc.errors()
            )
            raise RecordError(f"{key}: not a valid {cls.__name__}: {problems}") from None


class WorkerRecord(_Record):
    host: str
    pid: int
    capacity: int = Field(default=1, ge=1)
    labels: dict[str, str] = Field(default_factory=dict)
    state: Literal["active", "draining"] = "active"
    version: int = SCHEMA_VERSION
    # Lease id of the registration, in hex: a new session is a new registration.
    session: str = ""
    # Seconds the coordinator keeps the shards of this worker reserved after its lease
    # ends while active (it died); 0 = off.
    restart_grace: float = Field(default=0.0, ge=0)


# The assignment is one etcd value, written in one fenced txn. etcd refuses a request
# over 1.5 MiB by default (--max-request-bytes); the value stays within 1 MiB, which
# leaves the rest for the key, the txn's guards and a margin.
ASSIGNMENT_MAX_BYTES = 1024 * 1024
# Room kept for the worker table when deciding how many shards fit: about 3,900
# worker ids of 64 characters.
ASSIGNMENT_WORKER_TABLE_BYTES = 256 * 1024
# Everything but the table and the indices: field names, generation, num_shards.
_ASSIGNMENT_HEADER_BYTES = 128
_NO_OWNER = 0xFFFF  # the u16 index of a shard without owner; table indices are below it


def owner_indices_bytes(num_shards: int) -> int:
    """Length of `owner_indices` for `num_shards`: base64 of 2 bytes per shard."""
    return 4 * ((2 * num_shards + 2) // 3)


def assignment_bytes_bound(num_shards: int, worker_table_bytes: int) -> int:
    """The most an encoded assignment takes, given the JSON size of its worker table."""
    return _ASSIGNMENT_HEADER_BYTES + worker_table_bytes + owner_indices_bytes(num_shards)


# The largest shard count whose assignment fits in ASSIGNMENT_MAX_BYTES with a worker
# table of up to ASSIGNMENT_WORKER_TABLE_BYTES (`shardctl shards set` refuses more).
MAX_SHARDS = (
    (ASSIGNMENT_MAX_BYTES - ASSIGNMENT_WORKER_TABLE_BYTES - _ASSIGNMENT_HEADER_BYTES) // 4 * 3
) // 2


class AssignmentTooLarge(RecordError):
    """The assignment does not fit in one etcd value; the message says why."""


class Assignment(_Record):
    """The owner of every shard, generation by generation.

    Stored compactly, so that 100k shards over 1000 workers fit in one etcd value
    (see ASSIGNMENT_MAX_BYTES): a table of the owning workers, sorted, and one
    big-endian u16 per shard, its owner's position in the table (65535: no owner),
    base64-encoded:

        {"generation": 7, "num_shards": 4, "workers": ["w1", "w2"],
         "owner_indices": "AAAAAP//AAE="}          # w1, w1, none, w2

    A document of the first layout, `owners: [id | null, ...]`, still decodes.
    """

    generation: int = Field(ge=0)
    num_shards: int = Field(ge=0)
    owners: list[str | None]

    def shards_of(self, worker_id: str) -> set[int]:
        return {s for s, owner in enumerate(self.owners) if owner == worker_id}

    def encode(self) -> bytes:
        """The stored form; AssignmentTooLarge if it would exceed ASSIGNMENT_MAX_BYTES."""
        table = sorted({owner for owner in self.owners if owner is not None})
        what = f"assignment generation {self.generation} ({self.num_shards} shards)"
        if len(table) >= _NO_OWNER:
            raise AssignmentTooLarge(
                f"{what}: {len(table)} owning workers; the encoding holds {_NO_OWNER - 1}"
            )
        position = {worker: i for i, worker in enumerate(table)}
        indices = array("H", (_NO_OWNER if o is None else position[o] for o in self.owners))
        if sys.byteorder == "little":
            indices.byteswap()
        document = {
            "generation": self.generation,
            "num_shards": self.num_shards,
            "workers": table,
            "owner_indices": base64.b64encode(indices.tobytes()).decode("ascii"),
        }
        raw = json.dumps(document, separators=(",", ":")).encode()
        if len(raw) > ASSIGNMENT_MAX_BYTES:
            table_bytes = len(json.dumps(table, separators=(",", ":")))
            raise AssignmentTooLarge(
                f"{what}: encodes to {len(raw)} bytes, over the limit of "
                f"{ASSIGNMENT_MAX_BYTES} for one etcd value; the table of {len(table)} "
                f"worker ids takes {table_bytes} bytes and the shards "
                f"{owner_indices_bytes(len(self.owners))}. Use shorter worker ids, fewer "
                f"workers or fewer shards (at most {MAX_SHARDS})"
            )
        return raw

    @model_validator(mode="before")
    @classmethod
    def _from_worker_table(cls, data: Any) -> Any:
        if isinstance(data, dict) and "owner_indices" in data:
            rest = {k: v for k, v in data.items() if k not in ("workers", "owner_indices")}
            return {**rest, "owners": _owners_from_table(data)}
        return data


def _owners_from_table(document: dict[str, Any]) -> list[str | None]:
    """The per-shard owners of a stored assignment; ValueError says what is wrong."""
    workers, encoded = document.get("workers"), document["owner_indices"]
    num_shards = document.get("num_shards")
    if not isinstance(workers, list) or not all(isinstance(w, str) for w in workers):
        raise ValueError("workers: must be a list of worker ids")
    if len(workers) >= _NO_OWNER:
        raise ValueError(f"workers: {len(workers)} entries; at most {_NO_OWNER - 1}")
    if not isinstance(encoded, str):
        raise ValueError("owner_indices: must be a base64 string")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"owner_indices: not base64 ({exc})") from None
    if not isinstance(num_shards, int) or len(raw) != 2 * num_shards:
        raise ValueError(
            f"owner_indices: holds {len(raw) / 2:g} shard entries, num_shards is {num_shards}"
        )
    indices = array("H")
    indices.frombytes(raw)
    if sys.byteorder == "little":
        indices.byteswap()
    table: list[str | None] = [*workers, None]
    owners: list[str | None] = []
    for shard, index in enumerate(indices):
        if index == _NO_OWNER:
            index = len(workers)
        elif index >= len(workers):
            raise ValueError(
                f"owner_indices: shard {shard} names worker #{index}; the table has {len(workers)}"
            )
        owners.append(table[index])
    return owners


class ShardStall(_Record):
    """A shard waiting out a transient failure (its sink or broker away): since when
    (Unix time) and the first error seen. Nothing is dead-lettered meanwhile."""

    since: float
    error: str


class OffsetRecord(_Record):
    """Per topic, the Kafka offset of the next record to read (a worker owning shard s
    reads partition s of every topic), and the last event id handled; `token` is the
    owner token that wrote it; `topic_ids` names the incarnation of each topic the
    positions belong to (Kafka's topic id: a topic deleted and re-created gets a new
    one, and old positions must not be applied to it); `stalled` is set while the
    shard waits out a transient failure (`shardctl doctor` reports it)."""

    positions: dict[str, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)
    event_id: str | None = None
    token: int
    topic_ids: dict[str, str] = Field(default_factory=dict)
    stalled: ShardStall | None = None

    def same_place(self, other: OffsetRecord | None) -> bool:
        """Whether `other` says the same as this record, whichever owner wrote it: a
        new owner need not rewrite a position only to put its token in."""
        return other is not None and self.model_copy(update={"token": other.token}) == other

    def describe(self) -> str:
        at = ", ".join(f"{t}@{p}" for t, p in sorted(self.positions.items())) or "no position"
        at = f"{at} (event {self.event_id})" if self.event_id else at
        return f"{at}, stalled since {self.stalled.since:.0f}" if self.stalled else at

    @model_validator(mode="before")
    @classmethod
    def _one_position_per_topic(cls, data: Any) -> Any:
        # The single-topic layout had one `position`; reading it as "no positions"
        # would silently restart the shard from the earliest record.
        if isinstance(data, dict) and "position" in data:
            raise ValueError(
                "holds a single `position` without its topic; rewrite it as "
                '`positions: {"<topic>": <offset>}`'
            )
        return data


class ClusterConfig(_Record):
    """The cluster's settings. `weights` (shard -> weight, default 1) and `affinity`
    (shard -> labels its owner must carry) steer placement (coordinator/placement.py).
    `shard_hash` is the message key -> shard function (`shardctl.core.hashing`); a config
    written before it existed has none and means crc32, the hash its topics were
    filled with. New clusters get jump."""

    num_shards: int = Field(ge=1)
    topics: list[str] = Field(default_factory=list)
    transport: Literal["kafka", "nsq", "both"] = "kafka"
    weights: dict[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=1)]] = Field(
        default_factory=dict
    )
    affinity: dict[Annotated[int, Field(ge=0)], dict[str, str]] = Field(default_factory=dict)
    shard_hash: ShardHash = "crc32"


class Maintenance(_Record):
    """Present while maintenance mode is on: the coordinator writes no new assignment.

    `since` is the Unix time it was turned on; `reason` is free text for `status`."""

    since: float
    reason: str = ""


class Reshard(_Record):
    """A change of the shard count on a running cluster (`shardctl shards set`).

    requested  written by `shards set` (with `config.num_shards` = max(from, to), so
               every shard of either count has an owner); the reader still publishes
               with `from_shards`.
    switched   the leading reader published everything before `position` (its
               checkpoint, a transaction boundary) with `from_shards` and everything
               after with `to_shards`. `barrier[topic][s]` is the Kafka offset of
               shard s's first message after the switch (its high watermark then).
    complete   every shard below `from_shards` has committed offsets at or past its
               barrier, so no message of the old count is left unhandled; written by
               the first worker that sees it, with `config.num_shards` = `to_shards`.

    Until complete, a shard that gains keys (`gaining`) handles nothing at or past
    its barrier: the keys it gains may still have older changes in other shards.
    """

    from_shards: int = Field(ge=1)
    to_shards: int = Field(ge=1)
    shard_hash: ShardHash
    state: Literal["requested", "switched", "complete"] = "requested"
    requested_at: float
    source: str | None = None  # the CDC source whose reader switched
    position: str | None = None
    switched_at: float | None = None
    barrier: dict[str, list[Annotated[int, Field(ge=0)]]] = Field(default_factory=dict)
    completed_at: float | None = None

    @property
    def gaining(self) -> range:
        """The shards that may receive keys another shard held before the switch."""
        return gaining_shards(self.from_shards, self.to_shards, self.shard_hash)

    @property
    def in_progress(self) -> bool:
        return self.state != "complete"
