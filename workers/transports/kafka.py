"""Kafka transport: partition s of every topic is shard s, `assign()`ed directly.

There is no consumer-group rebalancing: ownership comes from etcd, and the worker
assigns exactly the partitions of the shards it owns, from the fenced offsets it
read there. Offsets are never committed to Kafka (`enable.auto.commit=false`).

All calls to the librdkafka consumer go through one thread, so a blocking poll
never runs concurrently with assign/pause/resume, and the event loop never blocks.
Polls are short (`timeout_s`), so a pause waits at most one poll.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, TopicPartition

from workers.transports.base import Record, TransportError

log = logging.getLogger(__name__)

T = TypeVar("T")


class KafkaTransport:
    positional = True

    def __init__(
        self,
        client_config: dict[str, str],
        topics: Sequence[str],
        group_id: str,
        start_at: str = "earliest",
        fetch_max_kbytes: int = 4096,
    ) -> None:
        if not topics:
            raise ValueError("kafka transport: at least one topic is required")
        if start_at not in ("earliest", "latest"):
            raise ValueError(f"kafka transport start_at: 'earliest' or 'latest', got {start_at!r}")
        self.topics = tuple(topics)
        self._default_offset = OFFSET_BEGINNING if start_at == "earliest" else OFFSET_END
        self._config: dict[str, Any] = {
            **client_config,
            # A group id names the consumer in broker logs; the group is never joined.
            "group.id": group_id,
            "enable.auto.commit": "false",
            "enable.auto.offset.store": "false",
            "enable.partition.eof": "false",
            "auto.offset.reset": start_at,
            # Bound what librdkafka prefetches per partition: memory stays bounded
            # however slow the handler is.
            "queued.max.messages.kbytes": str(fetch_max_kbytes),
        }
        self._consumer: Consumer | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kafka-consumer")
        self._shards: set[int] = set()

    def _partitions(self, shard: int) -> list[TopicPartition]:
        return [TopicPartition(topic, shard) for topic in self.topics]

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    def _require(self) -> Consumer:
        if self._consumer is None:
            raise TransportError("kafka transport: start() was not called")
        return self._consumer

    async def start(self) -> None:
        if self._consumer is None:
            self._consumer = await self._run(lambda: Consumer(self._config))

    async def start_shard(self, shard: int, positions: Mapping[str, int]) -> None:
        consumer = self._require()
        unknown = set(positions) - set(self.topics)
        if unknown:
            raise TransportError(
                f"shard {shard}: stored positions name topics {sorted(unknown)} that this "
                f"worker does not consume ({list(self.topics)})"
            )
        parts = [
            TopicPartition(topic, shard, positions.get(topic, self._default_offset))
            for topic in self.topics
        ]
        try:
            await self._run(lambda: consumer.incremental_assign(parts))
        except Exception as exc:
            raise TransportError(f"kafka: assigning shard {shard} ({parts}) failed: {exc}") from exc
        self._shards.add(shard)
        log.info("kafka: shard %d assigned at %s", shard, {p.topic: p.offset for p in parts})

    def pause(self, shard: int) -> None:
        if shard in self._shards:
            self._submit("pause", shard, self._require().pause)

    def resume(self, shard: int) -> None:
        if shard in self._shards:
            self._submit("resume", shard, self._require().resume)

    def _submit(self, what: str, shard: int, fn: Callable[[list[TopicPartition]], None]) -> None:
        """Queue a pause/resume behind the current poll; failures are logged, not lost."""
        future = self._thread.submit(fn, self._partitions(shard))

        def check(done: Future[None]) -> None:
            error = done.exception()
            if error is not None:
                log.error("kafka: %s of shard %d failed: %s", what, shard, error)

        future.add_done_callback(check)

    def _poll_blocking(self, max_records: int, timeout_s: float) -> list[Record]:
        consumer = self._require()
        out: list[Record] = []
        for msg in consumer.consume(num_messages=max_records, timeout=timeout_s):
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise TransportError(f"kafka consumer: fatal error: {err}")
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("kafka: %s [%s]: %s", msg.topic(), msg.partition(), err)
                continue
            partition, topic = msg.partition(), msg.topic()
            if partition is None or topic is None:
                raise TransportError(f"kafka consumer: a message without topic/partition: {msg}")
            out.append(
                Record(
                    shard=partition,
                    topic=topic,
                    position=msg.offset(),
                    key=msg.key(),
                    value=msg.value() or b"",
                )
            )
        return out

    async def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        if not self._shards:
            await asyncio.sleep(timeout_s)
            return []
        return await self._run(lambda: self._poll_blocking(max_records, timeout_s))

    async def settle(self, records: Sequence[Record]) -> None:
        """Nothing to do: progress is the offset committed to etcd."""

    async def abandon(self, records: Sequence[Record]) -> None:
        """Nothing to do: the next owner re-reads from the committed offset."""

    async def stop_shard(self, shard: int) -> None:
        if shard not in self._shards:
            return
        self._shards.discard(shard)
        consumer = self._require()
        parts = self._partitions(shard)
        try:
            await self._run(lambda: consumer.incremental_unassign(parts))
        except Exception as exc:
            raise TransportError(f"kafka: unassigning shard {shard} failed: {exc}") from exc
        log.info("kafka: shard %d unassigned", shard)

    async def close(self) -> None:
        consumer = self._consumer
        self._consumer = None
        self._shards.clear()
        if consumer is not None:
            await self._run(consumer.close)
        self._thread.shutdown(wait=True)
