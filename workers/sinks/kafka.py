"""The Kafka sink: forward or transform events to another topic, exactly once.

`--handler workers.sinks.kafka:KafkaSink`, options:

    topic            the output topic (required; it must exist)
    transform        optional `module:callable`, event -> None (drop) | (key, value) |
                     list of (key, value); default: forward the message unchanged
    keep_partition   "true" (default): write to partition = shard; "false": by key
    group            consumer group that holds the sink's offsets
                     (default "shardctl.<cluster>.sink.<topic>")
    dedupe           "true" (default): skip a source change already forwarded (below)
    state_topic      the compacted topic of forwarded changes (default "<group>.applied";
                     made if missing, one partition per shard)
    replay_window    transactions remembered per shard, source topic and stream
                     (default 10000); prune_every: how many more before a prune (1000)

Per owned shard there is one transactional producer, `transactional.id` =
"<group>.<shard>". A batch is one Kafka transaction: its output records and the
source offsets (`send_offsets_to_transaction` to `group`) commit together, so a
consumer of the output with isolation.level=read_committed sees every event once.

Fencing: a new owner's `init_transactions()` with the same transactional.id bumps
the producer epoch; the old owner's next transaction fails with a fencing error, and
the sink raises `Fenced`. `resume_positions(shard)` reads the group's committed offsets, and
the consumer resumes from them.

Dedupe by source change: the transaction also writes, to partition = shard of the
state topic, what it forwarded per source topic and stream (workers.sinks.
applied_changes). On assign, after `init_transactions()` has completed or aborted the
old owner's transaction, the new owner reads its partition back (read_committed, to
its end). A change the CDC reader published again after a failover (same event id
and transaction, at a new offset) is then skipped, inside the same transaction that
forwards the rest; a source that went backwards is forwarded with a warning, never
dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewPartitions  # type: ignore[attr-defined]
from confluent_kafka.cimpl import NewTopic

from shardctl.core.config import ConfigError
from shardctl.core.kafka_log import kafka_log
from workers.events import Batch, Event
from workers.handlers import Fenced, HandlerContext, HandlerError, TransientError, resolve_spec
from workers.sinks.applied_changes import AppliedChanges

log = logging.getLogger(__name__)

Output = tuple[bytes | None, bytes]
Transform = Callable[[Event], Output | list[Output] | None]

_FENCING_CODES = {
    KafkaError._FENCED,
    KafkaError.PRODUCER_FENCED,
    KafkaError.INVALID_PRODUCER_EPOCH,
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
}


# Broker states that pass by waiting, whether or not librdkafka flags them retriable:
# the batch is retried, never dead-lettered.
TRANSIENT_KAFKA_CODES = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError._MSG_TIMED_OUT,
        KafkaError._QUEUE_FULL,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.NOT_ENOUGH_REPLICAS,
        KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.CONCURRENT_TRANSACTIONS,
        KafkaError.NETWORK_EXCEPTION,
    }
)


def kafka_error_is_transient(error: KafkaError) -> bool:
    """True when waiting cures it (a broker away, a leader election, a timeout);
    fencing and fatal errors are never transient."""
    if error.code() in _FENCING_CODES or error.fatal():
        return False
    return error.retriable() or error.code() in TRANSIENT_KAFKA_CODES


def _positive(options: Mapping[str, str], name: str, default: int) -> int:
    text = options.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"sink.kafka.{name}: expected a positive integer, got {text!r}")
    return value


def forward(event: Event) -> Output:
    return event.key, event.raw


class KafkaSink:
    def __init__(self, context: HandlerContext) -> None:
        if context.settings is None:
            raise ConfigError("sink.kafka: needs the kafka settings (run it inside a worker)")
        options = context.options
        topic = options.get("topic")
        if not topic:
            raise ConfigError("sink.kafka.topic: the output topic is required")
        self.topic = topic
        self.source_topics = context.topics
        self.keep_partition = options.get("keep_partition", "true").lower() in ("1", "true")
        self.group = options.get("group") or f"shardctl.{context.settings.cluster}.sink.{topic}"
        self.timeout_s = float(options.get("timeout_s", "30"))
        spec = options.get("transform")
        if spec:
            target = resolve_spec(spec)
            if not callable(target):
                raise HandlerError(f"sink.kafka.transform {spec!r} is not callable")
            self.transform: Transform = target
        else:
            self.transform = forward
        self.dedupe = options.get("dedupe", "true").lower() in ("1", "true")
        self.state_topic = options.get("state_topic") or f"{self.group}.applied"
        self.replay_window = _positive(options, "replay_window", 10_000)
        self.prune_every = _positive(options, "prune_every", 1000)
        self._client = context.settings.kafka.client_config()
        self._offsets = Consumer(
            {**self._client, "group.id": self.group, "enable.auto.commit": "false"}
        )
        self._producers: dict[int, Producer] = {}
        self._applied: dict[int, AppliedChanges] = {}  # per owned shard, with dedupe
        self._unaborted: set[int] = set()  # shards whose failed transaction is still open
        self._lock = threading.Lock()

    def on_assign(self, shard: int, token: int) -> None:
        producer = Producer(
            {
                **self._client,
                "transactional.id": f"{self.group}.{shard}",
                "enable.idempotence": "true",
                "acks": "all",
                "linger.ms": "5",
                "logger": kafka_log(f"kafka sink producer {self.group}.{shard}"),
            }
        )
        # Fences every older producer of this shard: their commits fail from now on,
        # and an open transaction of theirs is aborted before this returns.
        producer.init_transactions(self.timeout_s)
        if self.dedupe:
            applied = self._read_applied(shard)
            with self._lock:
                self._applied[shard] = applied
        with self._lock:
            self._producers[shard] = producer
        log.info(
            "kafka sink: shard %d producer %s.%d ready (token %d)", shard, self.group, shard, token
        )

    def _state_partitions(self, shard: int) -> None:
        """Make the state topic (compacted) if missing, with a partition for `shard`.
        (Metadata of all topics: asking for the one topic could make a broker with
        auto.create.topics.enable create it, uncompacted.)"""
        admin_config: dict[str, str | int | float | bool] = {**self._client}
        admin = AdminClient(admin_config)
        where = f"kafka sink: state topic {self.state_topic}"
        topics = admin.list_topics(timeout=self.timeout_s).topics
        found = topics.get(self.state_topic)
        if found is None or found.error is not None:
            sources = admin.list_topics(timeout=self.timeout_s).topics
            count = max(
                [len(sources[t].partitions) for t in self.source_topics if t in sources] + [1]
            )
            futures = admin.create_topics(
                [
                    NewTopic(
                        self.state_topic,
                        max(count, shard + 1),
                        config={"cleanup.policy": "compact"},
                    )
                ]
            )
            try:
                futures[self.state_topic].result(self.timeout_s)
                log.info("%s: created, compacted, %d partitions", where, max(count, shard + 1))
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if not (
                    isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS
                ):
                    raise RuntimeError(f"{where}: cannot create it: {exc}") from exc
            topics = admin.list_topics(timeout=self.timeout_s).topics
            found = topics.get(self.state_topic)
        partitions = len(found.partitions) if found is not None else 0
        if partitions > shard:
            return
        # More shards than when it was made (a reshard): one partition per shard.
        futures = admin.create_partitions([NewPartitions(self.state_topic, shard + 1)])
        try:
            futures[self.state_topic].result(self.timeout_s)
        except KafkaException as exc:
            topics = admin.list_topics(timeout=self.timeout_s).topics
            found = topics.get(self.state_topic)
            # Another owner grew it a moment ago (INVALID_PARTITIONS), if it has enough.
            if found is None or len(found.partitions) <= shard:
                raise RuntimeError(
                    f"{where}: cannot add partitions for shard {shard}: {exc}"
                ) from exc

    def _read_applied(self, shard: int) -> AppliedChanges:
        """What the sink forwarded for `shard`: its state partition read to the end."""
        self._state_partitions(shard)
        applied = AppliedChanges(shard, self.replay_window, self.prune_every)
        reader = Consumer(
            {
                **self._client,
                "group.id": f"{self.group}.state",
                "enable.auto.commit": "false",
                "isolation.level": "read_committed",
                "enable.partition.eof": "true",
            }
        )
        where = f"kafka sink: shard {shard}: state topic {self.state_topic} partition {shard}"
        records = 0
        deadline = time.monotonic() + self.timeout_s
        try:
            reader.assign([TopicPartition(self.state_topic, shard, OFFSET_BEGINNING)])
            while True:
                message = reader.poll(0.5)
                if message is None:
                    if time.monotonic() > deadline:
                        raise TransientError(
                            f"{where}: not read to its end within {self.timeout_s}s "
                            f"({records} records read)"
                        )
                    continue
                err = message.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        break
                    if kafka_error_is_transient(err):
                        raise TransientError(f"{where}: {err}")
                    raise RuntimeError(f"{where}: {err}")
                key = message.key()
                if key is None:
                    raise RuntimeError(f"{where}: record at offset {message.offset()} has no key")
                applied.apply(key, message.value())
                records += 1
        finally:
            reader.close()
        log.info(
            "kafka sink: shard %d: %d state records read from %s: %d source streams",
            shard,
            records,
            self.state_topic,
            len(applied.newest),
        )
        return applied

    def resume_positions(self, shard: int) -> dict[str, int]:
        parts = [TopicPartition(t, shard) for t in self.source_topics]
        if not parts:
            return {}
        with self._lock:
            committed = self._offsets.committed(parts, timeout=self.timeout_s)
        return {p.topic: p.offset for p in committed if p.offset is not None and p.offset >= 0}

    def _outputs(self, event: Event) -> list[Output]:
        out = self.transform(event)
        if out is None:
            return []
        return out if isinstance(out, list) else [out]

    def on_events(self, batch: Batch) -> None:
        with self._lock:
            producer = self._producers.get(batch.shard)
            metadata = self._offsets.consumer_group_metadata()
        if producer is None:
            raise Fenced(
                f"kafka sink: shard {batch.shard} has no producer (not assigned)",
                batch.shard,
                batch.token,
            )
        with self._lock:
            applied = self._applied.get(batch.shard)
        if self.dedupe and applied is None:
            raise Fenced(
                f"kafka sink: shard {batch.shard} has no forwarded-changes state (not assigned)",
                batch.shard,
                batch.token,
            )
        plan = applied.plan(batch.events) if applied is not None else None
        events = plan.forward if plan is not None else batch.events
        outputs = [(e, o) for e in events for o in self._outputs(e)]
        try:
            with self._lock:
                unaborted = batch.shard in self._unaborted
                self._unaborted.discard(batch.shard)
            if unaborted:
                self._abort(producer, batch, RuntimeError("an earlier abort failed"))
            producer.poll(0)  # hands librdkafka's queued log lines to its logger
            producer.begin_transaction()
            for event, (key, value) in outputs:
                kwargs: dict[str, Any] = {"key": key, "value": value}
                if self.keep_partition:
                    kwargs["partition"] = event.shard
                producer.produce(self.topic, **kwargs)
            for state_key, state_value in plan.records if plan is not None else ():
                producer.produce(
                    self.state_topic, key=state_key, value=state_value, partition=batch.shard
                )
            offsets = [TopicPartition(t, batch.shard, p) for t, p in batch.next_positions.items()]
            if offsets:
                producer.send_offsets_to_transaction(offsets, metadata, self.timeout_s)
            producer.commit_transaction(self.timeout_s)
        except BufferError as exc:  # the local queue is full: the broker is slow or away
            self._abort(producer, batch, exc)
            raise TransientError(
                f"kafka sink: shard {batch.shard} batch from {batch.events[0].describe()}: "
                f"producer queue full: {exc}"
            ) from exc
        except KafkaException as exc:
            self._fail(producer, batch, exc)
        if plan is not None and applied is not None:
            # Committed: the state follows what the transaction wrote.
            for state_key, state_value in plan.records:
                applied.apply(state_key, state_value)
            if plan.skipped:
                log.info(
                    "kafka sink: shard %d: %d change(s) published again skipped (from %s)",
                    batch.shard,
                    plan.skipped,
                    batch.events[0].describe(),
                )

    def _abort(self, producer: Producer, batch: Batch, cause: BaseException) -> None:
        try:
            producer.abort_transaction(self.timeout_s)
        except KafkaException as abort_exc:
            where = f"kafka sink: shard {batch.shard} batch from {batch.events[0].describe()}"
            err = abort_exc.args[0] if abort_exc.args else None
            if isinstance(err, KafkaError) and kafka_error_is_transient(err):
                # Still open: the retry aborts it before it begins again.
                with self._lock:
                    self._unaborted.add(batch.shard)
                raise TransientError(f"{where}: abort failed: {err}") from cause
            raise RuntimeError(f"{where}: abort failed: {abort_exc}") from cause

    def _fail(self, producer: Producer, batch: Batch, exc: KafkaException) -> None:
        err = exc.args[0] if exc.args else None
        code = err.code() if isinstance(err, KafkaError) else None
        where = f"kafka sink: shard {batch.shard} batch from {batch.events[0].describe()}"
        if code in _FENCING_CODES or (isinstance(err, KafkaError) and err.fatal()):
            with self._lock:
                self._producers.pop(batch.shard, None)
            raise Fenced(f"{where}: producer fenced: {err}", batch.shard, batch.token) from exc
        transient = isinstance(err, KafkaError) and kafka_error_is_transient(err)
        # A transient failure retries the whole batch in a new transaction: the open
        # one is aborted first, whatever librdkafka would allow.
        if transient or (isinstance(err, KafkaError) and err.txn_requires_abort()):
            self._abort(producer, batch, exc)
        if transient:
            raise TransientError(f"{where}: {err}") from exc
        raise RuntimeError(f"{where}: transaction failed: {err}") from exc

    def on_revoke(self, shard: int) -> None:
        with self._lock:
            producer = self._producers.pop(shard, None)
            self._applied.pop(shard, None)
        if producer is not None:
            producer.flush(self.timeout_s)

    def on_close(self) -> None:
        for shard in list(self._producers):
            self.on_revoke(shard)
        self._offsets.close()
