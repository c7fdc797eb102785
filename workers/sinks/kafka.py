"""The Kafka sink: forward or transform events to another topic, exactly once.

`--handler workers.sinks.kafka:KafkaSink`, options:

    topic            the output topic (required; it must exist)
    transform        optional `module:callable`, event -> None (drop) | (key, value) |
                     list of (key, value); default: forward the message unchanged
    keep_partition   "true" (default): write to partition = shard; "false": by key
    group            consumer group that holds the sink's offsets
                     (default "shardctl.<cluster>.sink.<topic>")

Per owned shard there is one transactional producer, `transactional.id` =
"<group>.<shard>". A batch is one Kafka transaction: its output records and the
source offsets (`send_offsets_to_transaction` to `group`) commit together, so a
consumer of the output with isolation.level=read_committed sees every event once.

Fencing: a new owner's `init_transactions()` with the same transactional.id bumps
the producer epoch; the old owner's next transaction fails with a fencing error, and
the sink raises `Fenced`. `resume_positions(shard)` reads the group's committed offsets, and
the consumer resumes from them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from shardctl.core.config import ConfigError
from workers.events import Batch, Event
from workers.handlers import Fenced, HandlerContext, HandlerError, TransientError, resolve_spec

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
        self._client = context.settings.kafka.client_config()
        self._offsets = Consumer(
            {**self._client, "group.id": self.group, "enable.auto.commit": "false"}
        )
        self._producers: dict[int, Producer] = {}
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
            }
        )
        # Fences every older producer of this shard: their commits fail from now on.
        producer.init_transactions(self.timeout_s)
        with self._lock:
            self._producers[shard] = producer
        log.info(
            "kafka sink: shard %d producer %s.%d ready (token %d)", shard, self.group, shard, token
        )

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
        outputs = [(e, o) for e in batch.events for o in self._outputs(e)]
        try:
            with self._lock:
                unaborted = batch.shard in self._unaborted
                self._unaborted.discard(batch.shard)
            if unaborted:
                self._abort(producer, batch, RuntimeError("an earlier abort failed"))
            producer.begin_transaction()
            for event, (key, value) in outputs:
                kwargs: dict[str, Any] = {"key": key, "value": value}
                if self.keep_partition:
                    kwargs["partition"] = event.shard
                producer.produce(self.topic, **kwargs)
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
        if producer is not None:
            producer.flush(self.timeout_s)

    def on_close(self) -> None:
        for shard in list(self._producers):
            self.on_revoke(shard)
        self._offsets.close()
