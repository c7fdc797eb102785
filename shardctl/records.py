"""The JSON documents stored at the keys of `shardctl.keyspace`.

    workers/<id>     WorkerRecord   {host, pid, capacity, labels, state, version, session}
    assignment       Assignment     {generation, num_shards, owners: [id | null, ...]}
    offsets/<shard>  OffsetRecord   {positions: {topic: offset}, event_id, token,
                                     topic_ids: {topic: id}, stalled: {since, error} | null}
    config           ClusterConfig  {num_shards, topics, transport}

Decoding is strict: a malformed document raises RecordError naming the key, never
yields a guess.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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


class Assignment(_Record):
    generation: int = Field(ge=0)
    num_shards: int = Field(ge=0)
    owners: list[str | None]

    def shards_of(self, worker_id: str) -> set[int]:
        return {s for s, owner in enumerate(self.owners) if owner == worker_id}


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
    num_shards: int = Field(ge=1)
    topics: list[str] = Field(default_factory=list)
    transport: Literal["kafka", "nsq", "both"] = "kafka"
