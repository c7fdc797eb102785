"""An in-memory `workers.transports.base.Transport` for unit tests of the consumer.

Like a Kafka topic per shard: `publish` appends to a shard's log of one topic, and
positions are offsets in it (replayable; `positional = False` makes it behave like
NSQ, without positions). It holds the transport's contract and fails the test when
the consumer breaks it: a record is given back (`settle` or `abandon`) at most once
and only if it was handed out, and a shard is started only once at a time. What
`stop_shard` finds still outstanding is given back by it (`released_at_stop`), as a
real transport does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from workers.transports.base import Record


class ContractBroken(AssertionError):
    """The consumer used the transport against its contract."""


@dataclass
class _Fetch:
    cursors: dict[str, int]
    paused: bool = False


@dataclass
class StubTransport:
    topics: tuple[str, ...] = ("orders",)
    positional: bool = True
    logs: dict[tuple[int, str], list[bytes]] = field(default_factory=dict)
    topic_id_of: dict[str, str] = field(default_factory=dict)
    settled: list[Record] = field(default_factory=list)
    abandoned: list[Record] = field(default_factory=list)
    started: list[tuple[int, dict[str, int]]] = field(default_factory=list)
    released_at_stop: list[Record] = field(default_factory=list)
    settle_error: BaseException | None = None  # raised by the next settle, once
    _fetching: dict[int, _Fetch] = field(default_factory=dict)
    _outstanding: dict[int, list[Record]] = field(default_factory=dict)
    _published: asyncio.Event | None = None

    def publish(self, shard: int, value: bytes, topic: str | None = None) -> None:
        self.logs.setdefault((shard, topic or self.topics[0]), []).append(value)
        if self._published is not None:
            self._published.set()

    async def refetch_if_behind(
        self, shard: int, positions: Mapping[str, int]
    ) -> dict[str, tuple[int, int]]:
        return {}

    def paused(self, shard: int) -> bool:
        fetch = self._fetching.get(shard)
        return fetch is not None and fetch.paused

    def fetching(self) -> set[int]:
        return set(self._fetching)

    # -- Transport ----------------------------------------------------------------

    async def start(self) -> None:
        self._published = asyncio.Event()

    async def start_shard(self, shard: int, positions: Mapping[str, int]) -> None:
        if shard in self._fetching:
            raise ContractBroken(f"shard {shard} started twice")
        self.started.append((shard, dict(positions)))
        self._fetching[shard] = _Fetch({t: positions.get(t, 0) for t in self.topics})

    def pause(self, shard: int) -> None:
        if shard in self._fetching:
            self._fetching[shard].paused = True

    def resume(self, shard: int) -> None:
        if shard in self._fetching:
            self._fetching[shard].paused = False

    async def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        records = self._take(max_records)
        if not records and self._published is not None:
            self._published.clear()
            try:
                await asyncio.wait_for(self._published.wait(), timeout_s)
            except TimeoutError:
                return []
            records = self._take(max_records)
        return records

    def _take(self, max_records: int) -> list[Record]:
        out: list[Record] = []
        for shard, fetch in self._fetching.items():
            if fetch.paused:
                continue
            for topic, at in fetch.cursors.items():
                log = self.logs.get((shard, topic), [])
                while at < len(log) and len(out) < max_records:
                    position = at if self.positional else None
                    out.append(Record(shard, topic, position, None, log[at]))
                    at += 1
                fetch.cursors[topic] = at
        for record in out:
            self._outstanding.setdefault(record.shard, []).append(record)
        return out

    def _give_back(self, records: Sequence[Record], into: list[Record], how: str) -> None:
        for record in records:
            held = self._outstanding.get(record.shard, [])
            if not any(r is record for r in held):
                raise ContractBroken(f"{how} of a record not outstanding: {record}")
            held[:] = [r for r in held if r is not record]
            into.append(record)

    async def settle(self, records: Sequence[Record]) -> None:
        error, self.settle_error = self.settle_error, None
        if error is not None:
            raise error
        self._give_back(records, self.settled, "settle")

    async def abandon(self, records: Sequence[Record]) -> None:
        self._give_back(records, self.abandoned, "abandon")

    def high_watermarks(self, shard: int) -> dict[str, int]:
        if not self.positional:
            return {}
        return {t: len(self.logs.get((shard, t), [])) for t in self.topics}

    async def topic_ids(self) -> dict[str, str]:
        return dict(self.topic_id_of)

    async def stop_shard(self, shard: int) -> None:
        # Records still out (a shard dropped mid-batch) go back, as NSQ's would.
        self.released_at_stop.extend(self._outstanding.pop(shard, []))
        self._fetching.pop(shard, None)

    async def close(self) -> None:
        self._fetching.clear()
