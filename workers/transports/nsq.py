"""NSQ transport: one pynsq Reader per owned shard topic `<topic>.<shard>`.

All workers share one channel, so a message is delivered to one of them. NSQ has no
offsets and no replay: delivery is at-least-once and unordered, and handlers fed
from NSQ must be idempotent.

Per shard:

    start_shard --> READING (RDY = max_in_flight) <--pause/resume--> PAUSED (RDY 0)
    stop_shard:  RDY 0 --> requeue what was delivered but not polled --> wait until
                 every polled message is FIN'd or REQ'd --> close the readers

pynsq details handled here:
- `max_tries=0`: pynsq would otherwise FIN (drop) a message after 5 attempts; giving
  up is the dead-letter path's job.
- a closed Reader reconnects to nsqd 15 s later when nsqd addresses are given; the
  subclass below refuses to connect once closing.
- messages held longer than half of nsqd's message timeout are TOUCHed, so a slow
  handler does not cause a redelivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import nsq

from workers.transports.base import Record, TransportError

log = logging.getLogger(__name__)


def shard_topic(topic: str, shard: int) -> str:
    return f"{topic}.{shard}"


class _ShardReader(nsq.Reader):  # type: ignore[misc]  # pynsq ships no type information
    closing = False

    def connect_to_nsqd(self, host: str, port: int) -> Any:
        if self.closing:
            return None
        return super().connect_to_nsqd(host, port)


class NsqTransport:
    positional = False

    def __init__(
        self,
        nsqd_tcp_addresses: Sequence[str],
        topics: Sequence[str],
        channel: str,
        max_in_flight: int = 200,
        touch_interval_s: float = 20.0,
        stop_timeout_s: float = 30.0,
        grace_s: float = 0.2,
    ) -> None:
        if not topics:
            raise ValueError("nsq transport: at least one topic is required")
        if not nsqd_tcp_addresses:
            raise ValueError("nsq transport: nsq.nsqd_tcp_addresses is empty")
        if max_in_flight < 1:
            raise ValueError(f"nsq transport: max_in_flight must be >= 1, got {max_in_flight}")
        self.topics = tuple(topics)
        self._addresses = list(nsqd_tcp_addresses)
        self._channel = channel
        self._max_in_flight = max_in_flight
        self._touch_interval_s = touch_interval_s
        self._stop_timeout_s = stop_timeout_s
        self._grace_s = grace_s
        self._readers: dict[int, list[_ShardReader]] = {}
        # Delivered and not yet settled/abandoned: message id -> (shard, message).
        self._outstanding: dict[bytes, tuple[int, Any]] = {}
        self._inbox: asyncio.Queue[Record] | None = None
        self._toucher: asyncio.Task[None] | None = None
        self._changed: asyncio.Event | None = None

    async def start(self) -> None:
        if self._inbox is None:
            self._inbox = asyncio.Queue()
            self._changed = asyncio.Event()
            self._toucher = asyncio.get_running_loop().create_task(self._touch_loop())

    def _on_message(self, shard: int, topic: str, message: Any) -> None:
        # Called on the event loop by pynsq; the consumer settles it later.
        message.enable_async()
        assert self._inbox is not None
        self._outstanding[message.id] = (shard, message)
        self._inbox.put_nowait(
            Record(
                shard=shard,
                topic=topic,
                position=None,
                key=None,
                value=bytes(message.body),
                receipt=message,
            )
        )

    async def start_shard(self, shard: int, positions: Mapping[str, int]) -> None:
        if self._inbox is None:
            raise TransportError("nsq transport: start() was not called")
        if positions:
            log.warning(
                "nsq: shard %d: stored positions %s ignored, NSQ cannot replay",
                shard,
                dict(positions),
            )
        if shard in self._readers:
            return
        per_reader = max(1, self._max_in_flight // len(self.topics))
        readers = []
        for topic in self.topics:
            name = shard_topic(topic, shard)
            readers.append(
                _ShardReader(
                    topic=name,
                    channel=self._channel,
                    message_handler=lambda m, s=shard, t=topic: self._on_message(s, t, m),
                    nsqd_tcp_addresses=self._addresses,
                    max_in_flight=per_reader,
                    max_tries=0,
                    name=f"{name}:{self._channel}",
                )
            )
        self._readers[shard] = readers
        log.info(
            "nsq: shard %d reading %s on channel %s",
            shard,
            [shard_topic(t, shard) for t in self.topics],
            self._channel,
        )

    def _set_rdy(self, shard: int, value: int) -> None:
        for reader in self._readers.get(shard, []):
            if not reader.closing:
                reader.set_max_in_flight(value)

    def pause(self, shard: int) -> None:
        self._set_rdy(shard, 0)

    def resume(self, shard: int) -> None:
        self._set_rdy(shard, max(1, self._max_in_flight // len(self.topics)))

    async def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        if self._inbox is None:
            raise TransportError("nsq transport: start() was not called")
        out: list[Record] = []
        try:
            out.append(await asyncio.wait_for(self._inbox.get(), timeout_s))
        except TimeoutError:
            return out
        while len(out) < max_records and not self._inbox.empty():
            out.append(self._inbox.get_nowait())
        return out

    def _respond(self, records: Sequence[Record], finish: bool) -> None:
        for record in records:
            message = record.receipt
            if message is None or self._outstanding.pop(message.id, None) is None:
                continue
            if message.has_responded():
                continue
            if finish:
                message.finish()
            else:
                message.requeue(delay=0, backoff=False)
        if self._changed is not None:
            self._changed.set()

    async def settle(self, records: Sequence[Record]) -> None:
        self._respond(records, finish=True)

    async def abandon(self, records: Sequence[Record]) -> None:
        self._respond(records, finish=False)

    def _held_by(self, shard: int) -> list[Any]:
        return [m for s, m in self._outstanding.values() if s == shard]

    async def refetch_if_behind(
        self, shard: int, positions: Mapping[str, int]
    ) -> dict[str, tuple[int, int]]:
        """NSQ has no positions: nothing to compare or restart."""
        return {}

    def high_watermarks(self, shard: int) -> dict[str, int]:
        """NSQ has no positions, hence no lag in records."""
        return {}

    async def topic_ids(self) -> dict[str, str]:
        return {}  # NSQ has no positions to outlive a topic

    async def stop_shard(self, shard: int) -> None:
        readers = self._readers.get(shard)
        if readers is None:
            return
        self.pause(shard)
        assert self._changed is not None
        loop = asyncio.get_running_loop()
        # Messages already on the wire when RDY 0 was sent still arrive: give them a
        # moment, and hand back whatever was delivered but not yet taken by poll().
        await asyncio.sleep(self._grace_s)
        self._drain_inbox(shard)
        deadline = loop.time() + self._stop_timeout_s
        while self._held_by(shard) and loop.time() < deadline:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), deadline - loop.time())
            self._drain_inbox(shard)
        leftover = self._held_by(shard)
        if leftover:
            log.error(
                "nsq: shard %d: %d messages still held after %ss; requeueing them",
                shard,
                len(leftover),
                self._stop_timeout_s,
            )
            for message in leftover:
                self._outstanding.pop(message.id, None)
                if not message.has_responded():
                    message.requeue(delay=0, backoff=False)
        for reader in readers:
            reader.closing = True
            reader.close()
        del self._readers[shard]
        log.info("nsq: shard %d readers closed", shard)

    def _drain_inbox(self, shard: int) -> None:
        assert self._inbox is not None
        keep: list[Record] = []
        while not self._inbox.empty():
            record = self._inbox.get_nowait()
            if record.shard == shard:
                self._respond([record], finish=False)
            else:
                keep.append(record)
        for record in keep:
            self._inbox.put_nowait(record)

    async def _touch_loop(self) -> None:
        while True:
            await asyncio.sleep(self._touch_interval_s)
            for _shard, message in list(self._outstanding.values()):
                if not message.has_responded():
                    message.touch()

    async def close(self) -> None:
        for shard in list(self._readers):
            await self.stop_shard(shard)
        if self._toucher is not None:
            self._toucher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._toucher
