"""The Transport interface: fetch the records of owned shards.

Per shard, a transport goes through

    (absent) --start_shard(shard, positions)--> FETCHING <--pause/resume--> PAUSED
        FETCHING | PAUSED --stop_shard(shard)--> (absent)

and `poll()` returns records of every FETCHING shard, interleaved across shards but
in transport order within one shard and topic. A consumer hands each record back
exactly once: `settle` once it is handled (NSQ: FIN), or `abandon` if it will not be
handled here (NSQ: requeue at once). Kafka needs neither: its progress is the offset
the consumer commits, fenced, to etcd.

`stop_shard` returns once no record of the shard is outstanding (settled or
abandoned), so a new owner never sees a message this worker still holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import msgspec


class Record(msgspec.Struct, frozen=True):
    """One transport message (a frozen msgspec Struct: made once per message, and
    cheaper to make than a frozen dataclass)."""

    shard: int
    topic: str  # the logical topic (on NSQ without the ".<shard>" suffix)
    position: int | None  # Kafka offset; None on NSQ
    key: bytes | None
    value: bytes
    receipt: Any = None  # transport handle needed to settle the record (NSQ message)


class TransportError(Exception):
    """The transport failed; the message names the topic, shard and server."""


class Transport(Protocol):
    topics: tuple[str, ...]
    # True if positions are replayable offsets (Kafka); False for NSQ.
    positional: bool

    async def start(self) -> None:
        """Connect. Called once, before any other method."""

    async def start_shard(self, shard: int, positions: Mapping[str, int]) -> None:
        """Fetch `shard` from `positions` ({topic: next position}; missing topics start
        at the transport's default, the earliest retained record on Kafka)."""

    def pause(self, shard: int) -> None:
        """Stop fetching `shard` for now; records already returned stay valid."""

    def resume(self, shard: int) -> None:
        """Fetch `shard` again from where fetching stopped."""

    async def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        """Up to `max_records` records of started shards; [] after `timeout_s`."""

    async def settle(self, records: Sequence[Record]) -> None:
        """These records are handled (or dead-lettered)."""

    async def abandon(self, records: Sequence[Record]) -> None:
        """These records will not be handled by this worker; give them back."""

    def high_watermarks(self, shard: int) -> dict[str, int]:
        """Per topic, the position after the newest record of `shard` the transport has
        seen (Kafka's high watermark, from the last fetch); {} where there is none (NSQ).
        Never blocks."""

    async def refetch_if_behind(
        self, shard: int, positions: Mapping[str, int]
    ) -> dict[str, tuple[int, int]]:
        """For a running, unpaused shard that got no record for a while: where the
        broker holds records past `positions` ({topic: next position}), or cannot
        tell, start fetching that topic again from its position. Returns {topic:
        (position, newest)} of what it restarted (newest -1: not known); {} if nothing
        is behind (or the transport has no positions).
        Raises TransportError if the broker cannot be asked."""

    async def topic_ids(self) -> dict[str, str]:
        """Per topic, the id of its current incarnation (Kafka's topic id: a topic
        deleted and re-created gets a new one); topics that do not exist are left out,
        and a transport without ids (NSQ) returns {}."""

    async def stop_shard(self, shard: int) -> None:
        """Stop fetching `shard` and release it, once none of its records is outstanding."""

    async def close(self) -> None:
        """Stop every shard and disconnect."""
