"""Kafka transport: partition s of every topic is shard s, `assign()`ed directly.

There is no consumer-group rebalancing: ownership comes from etcd, and the worker
assigns exactly the partitions of the shards it owns, from the fenced offsets it
read there. Offsets are never committed to Kafka (`enable.auto.commit=false`).

All calls to the librdkafka consumer go through one thread, so a blocking poll
never runs concurrently with assign/pause/resume, and the event loop never blocks.
A poll waits in slices of POLL_SLICE_S and gives way as soon as another call is
queued behind it, so a shard acquired in a handoff is assigned (and a released one
unassigned) without waiting for the poll's whole timeout. A poll while no shard is
started waits on the event loop and wakes when one starts.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from shardctl.core.kafka_log import kafka_log
from workers.transports.base import Record, TransportError

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long one blocking librdkafka poll may hold the consumer's thread while another
# call (an assign in a handoff) waits behind it.
POLL_SLICE_S = 0.02
# How long the topics' ids read for one shard's start serve the next ones.
TOPIC_IDS_FRESH_S = 1.0


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
        self._client_config: dict[str, str | int | float | bool] = dict(client_config)
        self._admin: AdminClient | None = None
        self._admin_lock = threading.Lock()  # made on the event loop or consumer thread
        # Shards acquired together share one answer: (when, ids), and the lookup under
        # way while they start.
        self._ids_cache: tuple[float, dict[str, str]] | None = None
        self._ids_lookup: asyncio.Future[dict[str, str]] | None = None
        self.topic_id_lookups = 0  # describe calls made, for tests and debugging
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
            # Once that bound is reached librdkafka postpones the partition's next fetch
            # by fetch.queue.backoff.ms, 1000 ms by default: with the handler draining
            # the queue faster than that, each pause idles the shard (measured: about
            # 40k records/s with the default, over 500k with 20 ms, on the local stack).
            "fetch.queue.backoff.ms": "20",
            # A broker that restarts can answer for a moment that the topic does not
            # exist; librdkafka then forgets its partitions and fetches none of them
            # until its next metadata refresh, 5 minutes by default (seen in a chaos
            # run: "Local: Unknown partition" for 5 minutes). Refresh every 10 s.
            "topic.metadata.refresh.interval.ms": "10000",
            # Its own lines go to the structured log, rate-limited (served by poll).
            "logger": kafka_log("worker consumer"),
        }
        self._consumer: Consumer | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kafka-consumer")
        self._shards: set[int] = set()
        self._paused: set[int] = set()
        # Per partition, the offset after the last record a poll returned, or where it
        # was last assigned: where a replacement client resumes it. Kept here, not
        # asked of the client: a client in the state that gets it replaced was seen
        # to hang in position().
        self._next_offsets: dict[tuple[str, int], int] = {}
        # Calls submitted to the consumer's thread and not started yet: a poll gives
        # way to them. Updated from the event loop and from that thread.
        self._queued = 0
        self._queued_lock = threading.Lock()
        self._shard_started: asyncio.Event | None = None  # wakes a poll without shards

    @property
    def ready(self) -> bool:
        """Connected, with the topics' ids read: a shard can start without a new
        client or a lookup of its own."""
        return self._consumer is not None and self._ids_cache is not None

    def _partitions(self, shard: int) -> list[TopicPartition]:
        return [TopicPartition(topic, shard) for topic in self.topics]

    async def _run(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the consumer's thread; a poll there gives way to it."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._counted(fn))

    def _counted(self, fn: Callable[[], T]) -> Callable[[], T]:
        with self._queued_lock:
            self._queued += 1

        def call() -> T:
            with self._queued_lock:
                self._queued -= 1
            return fn()

        return call

    def _others_queued(self) -> bool:
        with self._queued_lock:
            return self._queued > 0

    def _require(self) -> Consumer:
        if self._consumer is None:
            raise TransportError("kafka transport: start() was not called")
        return self._consumer

    async def start(self) -> None:
        if self._consumer is None:
            consumer = await self._run(lambda: Consumer(self._config))
            self._consumer = consumer
            # Connect and load the topics' metadata now, not at the first assign: a
            # shard acquired in a handoff then starts fetching without that delay.
            try:
                metadata = await self._run(lambda: consumer.list_topics(timeout=10))
            except KafkaException as exc:
                log.warning("kafka: no metadata yet (%s); fetching will retry", exc)
                return
            missing = [t for t in self.topics if t not in metadata.topics]
            if missing:
                log.warning("kafka: topics %s do not exist (yet); their shards wait", missing)
            # Every shard's start compares the topics' ids: make the admin client and
            # its connection now, not in the first handoff (that costs ~0.1 s there).
            try:
                await self.topic_ids()
            except TransportError as exc:
                log.warning("kafka: topic ids not read yet (%s); the first shard will", exc)

    async def start_shard(self, shard: int, positions: Mapping[str, int]) -> None:
        self._require()
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
            await self._run(lambda: self._assign_flowing(parts))
        except Exception as exc:
            raise TransportError(f"kafka: assigning shard {shard} ({parts}) failed: {exc}") from exc
        self._shards.add(shard)
        if self._shard_started is not None:
            self._shard_started.set()
        log.info("kafka: shard %d assigned at %s", shard, {p.topic: p.offset for p in parts})

    def pause(self, shard: int) -> None:
        if shard in self._shards:
            self._paused.add(shard)
            self._submit("pause", shard, lambda parts: self._require().pause(parts))

    def resume(self, shard: int) -> None:
        if shard in self._shards:
            self._paused.discard(shard)
            self._submit("resume", shard, lambda parts: self._require().resume(parts))

    def _submit(self, what: str, shard: int, fn: Callable[[list[TopicPartition]], None]) -> None:
        """Queue a pause/resume behind the current poll; failures are logged, not lost."""
        parts = self._partitions(shard)
        future = self._thread.submit(self._counted(lambda: fn(parts)))

        def check(done: Future[None]) -> None:
            error = done.exception()
            if error is not None:
                log.error("kafka: %s of shard %d failed: %s", what, shard, error)

        future.add_done_callback(check)

    def _poll_blocking(self, max_records: int, timeout_s: float) -> list[Record]:
        consumer = self._require()
        out: list[Record] = []
        # consume(n, timeout) waits until n messages are there or the timeout passed,
        # which at a low rate holds every record for up to the whole timeout. So wait
        # for the first message only, then take what is already fetched without waiting.
        # The wait is sliced: a call queued behind this poll (an assign) runs after
        # at most one slice, not after the whole timeout.
        deadline = time.monotonic() + timeout_s
        while True:
            first = consumer.poll(max(0.0, min(POLL_SLICE_S, deadline - time.monotonic())))
            if first is not None:
                break
            if self._others_queued() or time.monotonic() >= deadline:
                return out
        messages = [first]
        if max_records > 1:
            messages += consumer.consume(num_messages=max_records - 1, timeout=0)
        next_offsets = self._next_offsets
        for msg in messages:
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
            offset = msg.offset()
            # By position (shard, topic, position, key, value): cheaper than keywords.
            out.append(Record(partition, topic, offset, msg.key(), msg.value() or b""))
            if offset is not None:
                next_offsets[(topic, partition)] = offset + 1
        return out

    async def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        if not self._shards:
            # Nothing to fetch: wait on the event loop until a shard starts, so the
            # first shard of a joining worker is fetched at once, not after a timeout.
            started = time.monotonic()
            if self._shard_started is None:
                self._shard_started = asyncio.Event()
            self._shard_started.clear()
            try:
                await asyncio.wait_for(self._shard_started.wait(), timeout_s)
            except TimeoutError:
                return []
            timeout_s = max(0.0, timeout_s - (time.monotonic() - started))
            if not self._shards:
                return []
        return await self._run(lambda: self._poll_blocking(max_records, timeout_s))

    async def settle(self, records: Sequence[Record]) -> None:
        """Nothing to do: progress is the offset committed to etcd."""

    async def abandon(self, records: Sequence[Record]) -> None:
        """Nothing to do: the next owner re-reads from the committed offset."""

    async def refetch_if_behind(
        self, shard: int, positions: Mapping[str, int]
    ) -> dict[str, tuple[int, int]]:
        """Ask the broker for the shard's high watermarks (not the cached ones: a
        partition whose fetching stopped has none newer); where one is past the
        position, or where the broker cannot tell (newest -1), assign the partition
        again at the position, which restarts librdkafka's fetching of it from
        there. After a broker restart librdkafka was
        seen to leave an assigned, unpaused partition without fetching for good (a
        chaos run: a worker held two shards and applied nothing more)."""
        if shard not in self._shards:
            return {}
        self._require()
        parts = self._partitions(shard)

        def check() -> dict[str, tuple[int, int]]:
            consumer = self._require()
            behind: dict[str, tuple[int, int]] = {}
            unreachable: list[str] = []
            for part in parts:
                at = positions.get(part.topic)
                if at is None:
                    continue  # nothing fetched yet: no position to compare
                try:
                    _low, high = consumer.get_watermark_offsets(part, timeout=5, cached=False)
                except KafkaException as exc:
                    # Not known (the broker away, or the partition unknown to this
                    # client): fetching again from the position is safe, so do it,
                    # after asking for the topic's metadata, which makes a partition
                    # the client forgot known again.
                    log.info("kafka: shard %d %s: no high watermark: %s", shard, part.topic, exc)
                    high = -1
                    try:
                        consumer.list_topics(part.topic, timeout=5)
                    except KafkaException as unread:
                        log.info("kafka: %s: metadata not read: %s", part.topic, unread)
                        unreachable.append(f"{part.topic}: {exc}; {unread}")
                if high > at or high == -1:
                    behind[part.topic] = (at, int(high))
            if unreachable and self._broker_reachable():
                # After a broker restart a chaos run saw every worker's consumer stay
                # at "All broker connections are down" for minutes while other clients
                # of the same broker worked: no assign revives such a client.
                self._replace_consumer("; ".join(unreachable))
                return behind
            if behind:
                # Assigned afresh at the position: a seek alone did not always restart
                # the fetching (a chaos run saw a partition stay unknown to the client,
                # its watermark -1, for minutes after a broker restart).
                again = [TopicPartition(t, shard, at) for t, (at, _h) in behind.items()]
                consumer.incremental_unassign(again)
                self._assign_flowing(again)
            return behind

        try:
            return await self._run(check)
        except KafkaException as exc:
            raise TransportError(
                f"kafka: shard {shard}: checking whether fetching stalled failed: {exc}"
            ) from exc

    def _assign_flowing(self, parts: list[TopicPartition]) -> None:
        """Assign `parts` at their offsets, flowing; on the consumer's thread."""
        _assign(self._require(), parts)
        for part in parts:
            self._next_offsets[(part.topic, part.partition)] = part.offset

    def _broker_reachable(self) -> bool:
        """Whether a client other than the consumer reads the cluster's metadata."""
        try:
            self._admin_client().list_topics(timeout=5)
        except KafkaException as exc:
            log.info("kafka: the broker is unreachable for the topic-id client too: %s", exc)
            return False
        return True

    def _replace_consumer(self, why: str) -> None:
        """Replace a consumer that reaches no broker while another client does with a
        new one, on the consumer's thread: every started shard's partitions are
        assigned in it after the last record a poll returned, or where they were
        last assigned when none came since; paused shards stay paused. The old
        client is asked nothing more."""
        old = self._require()
        again = [
            TopicPartition(
                p.topic,
                p.partition,
                self._next_offsets.get((p.topic, p.partition), self._default_offset),
            )
            for shard in sorted(self._shards)
            for p in self._partitions(shard)
        ]
        log.warning(
            "kafka: the consumer reaches no broker while the topic-id client does (%s): "
            "replacing it with a new client, shards %s at %s",
            why,
            sorted(self._shards),
            {f"{p.topic}[{p.partition}]": p.offset for p in again},
        )
        self._consumer = Consumer(self._config)
        if again:
            self._assign_flowing(again)
        paused = [p for p in again if p.partition in self._paused]
        if paused:
            self._consumer.pause(paused)
        # Closing a client in that state may wait on its broker threads; not here.
        threading.Thread(target=old.close, name="kafka-consumer-close", daemon=True).start()

    def high_watermarks(self, shard: int) -> dict[str, int]:
        """The cached high watermarks of the shard's partitions, as of the last fetch
        response. Called from the event loop: a cached read takes only librdkafka's
        partition lock, never a broker round trip, so it need not queue behind a poll."""
        consumer = self._consumer
        if consumer is None or shard not in self._shards:
            return {}
        out: dict[str, int] = {}
        for part in self._partitions(shard):
            try:
                marks = consumer.get_watermark_offsets(part, cached=True)
            except KafkaException as exc:
                log.debug("kafka: no watermark for %s [%d] yet: %s", part.topic, shard, exc)
                continue
            if marks is not None and marks[1] >= 0:
                out[part.topic] = int(marks[1])
        return out

    async def topic_ids(self) -> dict[str, str]:
        """Per topic, its id; shards starting together share one lookup."""
        now = time.monotonic()
        if self._ids_cache is not None and now - self._ids_cache[0] < TOPIC_IDS_FRESH_S:
            return dict(self._ids_cache[1])
        if self._ids_lookup is None:
            lookup = asyncio.ensure_future(self._describe_topic_ids(now))
            self._ids_lookup = lookup

            def done(finished: asyncio.Future[dict[str, str]]) -> None:
                if self._ids_lookup is lookup:
                    self._ids_lookup = None
                if not finished.cancelled():
                    finished.exception()  # each waiter got it; none is left unread

            lookup.add_done_callback(done)
        return dict(await asyncio.shield(self._ids_lookup))

    def forget_topic_ids(self) -> None:
        """Read the topics' ids afresh at the next `topic_ids` call."""
        self._ids_cache = None

    def _admin_client(self) -> AdminClient:
        with self._admin_lock:
            if self._admin is None:
                config: dict[str, Any] = {
                    **self._client_config,
                    "logger": kafka_log("worker topic-id lookups"),
                }
                self._admin = AdminClient(config)
            admin = self._admin
        admin.poll(0)  # serves the log lines since the last call
        return admin

    async def _describe_topic_ids(self, now: float) -> dict[str, str]:
        admin = self._admin_client()
        self.topic_id_lookups += 1
        futures = admin.describe_topics(TopicCollection(list(self.topics)), request_timeout=10)
        ids: dict[str, str] = {}
        for topic, future in futures.items():
            try:
                described = await asyncio.wrap_future(future)
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if isinstance(err, KafkaError) and err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    continue  # not created yet: no incarnation to compare
                raise TransportError(f"kafka: describing topic {topic} failed: {exc}") from exc
            ids[topic] = str(described.topic_id)
        self._ids_cache = (now, ids)
        return dict(ids)

    async def stop_shard(self, shard: int) -> None:
        if shard not in self._shards:
            return
        self._shards.discard(shard)
        self._paused.discard(shard)
        self._require()
        parts = self._partitions(shard)
        for part in parts:
            self._next_offsets.pop((part.topic, part.partition), None)
        try:
            await self._run(lambda: self._require().incremental_unassign(parts))
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


def _assign(consumer: Consumer, parts: list[TopicPartition]) -> None:
    """Assign `parts` at their offsets, flowing."""
    consumer.incremental_assign(parts)
    # librdkafka keeps a partition paused across unassign and assign, so a shard
    # paused during its last handoff would never flow again here.
    consumer.resume(parts)
