"""Kafka producer: idempotent, `acks=all`, partition = shard.

Topics come from Maxwell's template (`%{database}`, `%{table}`). Every topic
must have exactly `num_shards` partitions, because partition = shard: a topic
that does not exist is created with `num_shards` partitions, and a topic with
any other count stops the reader with an error naming the topic and both counts.

Topic size limits: the broker refuses a whole record batch larger than the
topic's `max.message.bytes`, and librdkafka does not split a refused batch. So
the reader reads each topic's real `max.message.bytes` (describe_configs) when
it first writes to it, and again every `kafka_topic_config_refresh_s`, and sets
the client's `batch.size` and `message.max.bytes` to the smallest limit less a
framing margin: batches never exceed any topic's limit. When that changes, the
producer is flushed (every message so far delivered and acknowledged) and
rebuilt with the new sizes, so order per partition holds.

Metadata reads (partitions, `max.message.bytes`, topic creation) wait out a broker
outage like deliveries do: a transient error (broker down, timeout) is retried with
the shared backoff for up to `message.timeout.ms`, so a broker restart does not end
the reader; past that, the reader stops with the topic and the error.

A single record over its topic's limit is not dropped: a dead-letter record in
Maxwell's form (database, table, type, reason, and data with only the primary
key columns) with its key, event id, binlog position, shard, size and the error
goes to the dead-letter topic, to the same shard, and the original counts as
delivered once that record is. Any other delivery failure, including a batch
refused as too large while the message alone fits (the limit was lowered
since it was read), is raised from `poll()`/`flush()`; the message is never
acknowledged and the reader stops before its checkpoint passes it.

Delivery reports are served by `poll()` on the caller's thread; the producer
batches (`linger.ms`) and is never flushed per message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeVar

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka import Producer as RdKafkaProducer

# The documented import; the package's stubs do not re-export these names.
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType  # type: ignore[attr-defined]
from confluent_kafka.cimpl import NewTopic

from cdc.producers.base import (
    Ack,
    DeliveryError,
    Outgoing,
    Producer,
    dead_letter_document,
    render_topic,
)
from shardctl.core.backoff import Backoff
from shardctl.core.config import ConfigError, KafkaSettings
from shardctl.core.kafka_log import kafka_log

log = logging.getLogger(__name__)
T = TypeVar("T")

# Settings the delivery guarantee depends on; user options cannot override them.
_REQUIRED = {
    "enable.idempotence": "true",
    "acks": "all",
}
_DEFAULTS = {
    "linger.ms": "10",
    "batch.num.messages": "10000",
    "queue.buffering.max.messages": "200000",
    "compression.type": "lz4",
    "message.timeout.ms": "120000",
}


# librdkafka's defaults for the two size settings the topic limits may lower.
_CLIENT_MAX_MESSAGE_BYTES = 1_000_000
_CLIENT_BATCH_SIZE = 1_000_000
# Record-batch framing the broker counts against max.message.bytes: the batch
# header (61 bytes), one record's own header, and up to 1% that compression may add
# to data it cannot compress.
_FRAMING_BYTES = 128


def framing_margin(limit: int) -> int:
    return _FRAMING_BYTES + limit // 100


class TopicPartitionsMismatch(ConfigError):
    """A topic exists with a partition count other than num_shards."""


# Errors librdkafka gives while no broker answers; `retriable()` covers the broker's own.
_BROKER_UNAVAILABLE = {
    KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._TIMED_OUT,
    KafkaError._RESOLVE,
    KafkaError._WAIT_COORD,
}


def _broker_unavailable(exc: KafkaException) -> bool:
    error = exc.args[0] if exc.args else None
    return isinstance(error, KafkaError) and (
        error.retriable() or error.code() in _BROKER_UNAVAILABLE
    )


class TopicManager:
    """Makes sure each topic exists with `num_shards` partitions."""

    def __init__(
        self,
        admin: Any,
        num_shards: int,
        replication_factor: int = -1,
        timeout_s: float = 15.0,
        outage_s: float = 120.0,
    ) -> None:
        self._admin = admin
        self._num_shards = num_shards
        self._replication_factor = replication_factor
        self._timeout_s = timeout_s
        self._outage_s = outage_s
        self._ready: set[str] = set()

    def _through_outage(self, what: str, call: Callable[[], T], retry: bool = True) -> T:
        """`call()`, retried while the broker is unavailable, for up to `outage_s`
        (without `retry`, one attempt)."""
        deadline = time.monotonic() + self._outage_s
        backoff = Backoff()
        while True:
            self._admin.poll(0)  # hands librdkafka's queued log lines to its logger
            try:
                return call()
            except KafkaException as exc:
                if not (retry and _broker_unavailable(exc)) or time.monotonic() >= deadline:
                    raise
                delay = backoff.next()
                log.warning(
                    "kafka %s: broker unavailable, retrying in %.1fs (for up to "
                    "message.timeout.ms=%d): %s",
                    what,
                    delay,
                    int(self._outage_s * 1000),
                    exc,
                )
                time.sleep(delay)

    def ensure(self, topic: str) -> None:
        if topic in self._ready:
            return
        partitions = self._partitions(topic)
        if partitions is None:
            self._create(topic)
            partitions = self._partitions(topic)
            if partitions is None:
                raise DeliveryError(f"kafka topic {topic}: created but not visible in metadata")
        if len(partitions) != self._num_shards:
            raise TopicPartitionsMismatch(
                f"cdc.num_shards: kafka topic {topic} has {len(partitions)} partitions but "
                f"num_shards is {self._num_shards}; partition = shard, so they must match. "
                "Use another topic or recreate this one with num_shards partitions."
            )
        self._ready.add(topic)

    def _partitions(self, topic: str) -> dict[int, int] | None:
        """The topic's partitions and the broker that leads each (-1: none yet), or
        None when the topic does not exist."""
        try:
            metadata = self._through_outage(
                f"topic {topic} metadata",
                lambda: self._admin.list_topics(topic=topic, timeout=self._timeout_s),
            )
        except KafkaException as exc:
            raise DeliveryError(f"kafka topic {topic}: cannot read metadata: {exc}") from exc
        found = metadata.topics.get(topic)
        if found is None:
            return None
        if found.error is not None:
            if found.error.code() in (
                KafkaError.UNKNOWN_TOPIC_OR_PART,
                KafkaError._UNKNOWN_TOPIC,
            ):
                return None
            # A partition without a leader yet is reported once its partitions are
            # listed; the count and each leader are then known.
            if found.error.code() != KafkaError.LEADER_NOT_AVAILABLE or not found.partitions:
                raise DeliveryError(f"kafka topic {topic}: metadata error: {found.error}")
        return {p.id: p.leader for p in found.partitions.values()}

    def max_message_bytes(self, topics: list[str], wait_out_outage: bool = True) -> dict[str, int]:
        """Each topic's effective `max.message.bytes` (its own or the broker's default).
        Without `wait_out_outage`, one attempt: a periodic refresh must not hold the
        reader for message.timeout.ms while the broker is away; the next one retries."""
        if not topics:
            return {}

        def describe() -> dict[Any, Any]:
            futures = self._admin.describe_configs(
                [ConfigResource(ResourceType.TOPIC, t) for t in topics],
                request_timeout=self._timeout_s,
            )
            return {resource: future.result() for resource, future in futures.items()}

        try:
            what = f"topics {', '.join(topics)} configs"
            configs = self._through_outage(what, describe, retry=wait_out_outage)
            found: dict[str, int] = {}
            for resource, config in configs.items():
                entry = config.get("max.message.bytes")
                if entry is None or entry.value is None:
                    raise DeliveryError(
                        f"kafka topic {resource.name}: describe_configs gave no max.message.bytes"
                    )
                found[resource.name] = int(entry.value)
            return found
        except KafkaException as exc:
            raise DeliveryError(
                f"kafka topics {', '.join(topics)}: cannot read max.message.bytes: {exc}"
            ) from exc

    def _create(self, topic: str) -> None:
        def create() -> None:
            self._admin.create_topics(
                [NewTopic(topic, self._num_shards, self._replication_factor)],
                operation_timeout=self._timeout_s,
                request_timeout=self._timeout_s,
            )[topic].result()

        try:
            self._through_outage(f"topic {topic} creation", create)
            log.info("created kafka topic %s with %d partitions", topic, self._num_shards)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                return
            raise DeliveryError(f"kafka topic {topic}: cannot create it: {exc}") from exc
        # Metadata of a new topic, and its partitions' leaders, reach every broker a
        # moment later. Produce only once each partition has a leader, so the
        # producer's first look at the topic finds every partition led.
        deadline = time.monotonic() + self._timeout_s
        while True:
            partitions = self._partitions(topic)
            if partitions is not None and min(partitions.values(), default=-1) >= 0:
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        log.warning(
            "kafka topic %s: created, but not every partition has a leader after %.0fs: %s",
            topic,
            self._timeout_s,
            partitions,
        )


class _ChunkReport:
    """The delivery report callback of a batch of messages (`send_many`): it
    acknowledges each delivered one, and finds the message of a failed report to
    handle it as `send` would."""

    __slots__ = ("_messages", "_on_ack", "_producer")

    def __init__(self, producer: KafkaProducer, messages: Sequence[Outgoing], on_ack: Ack) -> None:
        self._producer = producer
        self._messages = messages
        self._on_ack = on_ack

    def __call__(self, err: Any, msg: Any) -> None:
        if err is None:
            self._on_ack()
            return
        self._failed(err, msg)

    def _failed(self, err: Any, msg: Any) -> None:
        key, value, shard = msg.key(), msg.value(), msg.partition()
        for message in self._messages:
            if message.key == key and message.value == value and message.shard == shard:
                self._producer._delivered(message, msg.topic(), self._on_ack, err, msg)
                return
        self._producer._fail(
            f"kafka: delivery to {msg.topic()}[{shard}] failed: {err} (a message with key "
            f"{key!r} that the reader cannot match to its event id)"
        )


class KafkaProducer(Producer):
    name = "kafka"

    def __init__(
        self,
        settings: KafkaSettings,
        num_shards: int,
        topic_template: str,
        dead_letter_topic: str,
        replication_factor: int = -1,
        options: dict[str, str] | None = None,
        topic_config_refresh_s: float = 30.0,
    ) -> None:
        conf: dict[str, Any] = {**_DEFAULTS, **settings.client_config(), **(options or {})}
        for key, value in _REQUIRED.items():
            if key in conf and str(conf[key]).lower() != value:
                raise ConfigError(
                    f"kafka.options.{key}: must be {value} (the reader loses nothing only "
                    f"with an idempotent producer and acks=all), got {conf[key]!r}"
                )
            conf[key] = value
        # librdkafka's own lines go to the structured log, rate-limited.
        conf["logger"] = kafka_log("cdc producer")
        self._conf = conf
        # What the operator allows; topic limits may only lower them.
        self._client_max = int(conf.get("message.max.bytes", _CLIENT_MAX_MESSAGE_BYTES))
        self._batch_max = int(conf.get("batch.size", _CLIENT_BATCH_SIZE))
        self._sizes = (self._client_max, self._batch_max)
        self._producer = RdKafkaProducer(conf)
        # max.message.bytes of every topic written to (the dead-letter topic's is
        # read only to judge its own records, which are small).
        self._limits: dict[str, int] = {}
        self._refresh_s = topic_config_refresh_s
        self._next_refresh = time.monotonic() + topic_config_refresh_s
        admin_conf: dict[str, Any] = {
            k: v
            for k, v in settings.client_config().items()
            if k.startswith(("bootstrap.", "security.", "sasl.", "ssl.", "client."))
        }
        admin_conf["logger"] = kafka_log("cdc topic admin")
        self._topics = TopicManager(
            AdminClient(admin_conf),
            num_shards,
            replication_factor,
            outage_s=int(conf["message.timeout.ms"]) / 1000,
        )
        self._template = topic_template
        self._dead_letter_topic = dead_letter_topic
        # (template, database, table) -> topic, for topics known to be ready.
        self._topic_cache: dict[tuple[str, str, str], str] = {}
        self._failure: DeliveryError | None = None
        self.dead_lettered = 0

    def topic_for(self, database: str, table: str) -> str:
        return render_topic(self._template, database, table)

    def send(self, message: Outgoing, on_ack: Ack) -> None:
        if self._failure is not None:
            raise self._failure
        where = (message.topic or self._template, message.database, message.table)
        topic = self._topic_cache.get(where)
        if topic is None:
            topic = render_topic(*where)
            self._topics.ensure(topic)
            if topic not in self._limits:
                self._limits.update(self._topics.max_message_bytes([topic]))
                self._apply_limits()
            if len(self._topic_cache) > 100_000:
                self._topic_cache.clear()
            self._topic_cache[where] = topic
        self._produce_one(topic, message, on_ack)

    def _produce_one(self, topic: str, message: Outgoing, on_ack: Ack) -> None:
        """The careful path: one message with its own delivery report."""
        self._produce(
            topic,
            message.key,
            message.value,
            message.shard,
            partial(self._delivered, message, topic, on_ack),
            message,
        )

    def send_many(self, messages: Sequence[Outgoing], on_ack: Ack) -> None:
        """`send` for each message, with one delivery report object for all of them:
        the per-message cost is what the reader's throughput is made of."""
        if self._failure is not None:
            raise self._failure
        report = _ChunkReport(self, messages, on_ack)
        produce = self._producer.produce
        cache = self._topic_cache
        template = self._template
        for message in messages:
            where = (message.topic or template, message.database, message.table)
            topic = cache.get(where)
            if topic is None:
                self.send(message, on_ack)
                produce = self._producer.produce  # the client may have been rebuilt
                continue
            try:
                # Positional (topic, value, key, partition, on_delivery), the order
                # `produce` documents: a third cheaper per message than keywords.
                produce(topic, message.value, message.key, message.shard, report)
            except (BufferError, KafkaException):
                # Full queue or a refused message: the careful path serves it.
                self._produce_one(topic, message, on_ack)
                produce = self._producer.produce

    def _produce(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        shard: int,
        callback: Callable[[Any, Any], None],
        message: Outgoing,
    ) -> None:
        while True:
            try:
                self._producer.produce(
                    topic, value=value, key=key, partition=shard, on_delivery=callback
                )
                return
            except BufferError:
                # Local queue full: serve delivery reports until there is room.
                self._producer.poll(0.05)
                self._raise_failure()
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if (
                    isinstance(error, KafkaError)
                    and error.code() == KafkaError.MSG_SIZE_TOO_LARGE
                    and topic != self._dead_letter_topic
                ):
                    # Refused locally (over the client's message.max.bytes, which is
                    # at most the topic's limit): a single message too large.
                    callback(error, None)
                    return
                raise DeliveryError(
                    f"kafka: cannot produce {message.event_id} to {topic}[{shard}]: {exc}"
                ) from exc

    def _alone_over_limit(self, message: Outgoing, topic: str) -> bool:
        """Too large on its own: over the client's message.max.bytes, or over the topic's
        limit once framed (else only the batch it was in was too large)."""
        limit = self._limits.get(topic)
        size = len(message.key) + len(message.value)
        return limit is None or size > self._sizes[0] or size + framing_margin(limit) > limit

    def _delivered(self, message: Outgoing, topic: str, on_ack: Ack, err: Any, _msg: Any) -> None:
        if err is None:
            on_ack()
            return
        if err.code() == KafkaError.MSG_SIZE_TOO_LARGE and topic != self._dead_letter_topic:
            if self._alone_over_limit(message, topic):
                self._dead_letter(message, topic, on_ack, str(err))
                return
            self._fail(
                f"kafka: the broker refused the batch holding {message.event_id} as too large "
                f"for {topic}[{message.shard}] ({err}), but the message alone "
                f"({len(message.value)} bytes) fits its max.message.bytes as last read "
                f"({self._limits.get(topic)} bytes): the topic's limit was lowered since. "
                "Nothing was dead-lettered; the reader stops before its checkpoint passes "
                "the message and reads the new limit when it starts again"
            )
            return
        self._fail(
            f"kafka: delivery of {message.event_id} to {topic}[{message.shard}] failed: {err}"
        )

    def _apply_limits(self) -> None:
        """Size batches and messages for the smallest topic limit; rebuild the client
        (after delivering everything queued) when that changes."""
        if not self._limits:
            return
        topic, limit = min(self._limits.items(), key=lambda item: item[1])
        client_max = max(1000, min(self._client_max, limit - framing_margin(limit)))
        sizes = (client_max, max(1, min(self._batch_max, client_max)))
        if sizes == self._sizes:
            return
        log.info(
            "kafka: smallest max.message.bytes is %d bytes (topic %s); producer "
            "message.max.bytes=%d, batch.size=%d",
            limit,
            topic,
            sizes[0],
            sizes[1],
        )
        self.flush(max(120.0, int(self._conf.get("message.timeout.ms", 120000)) / 1000 + 10))
        self._producer = RdKafkaProducer(
            {**self._conf, "message.max.bytes": sizes[0], "batch.size": sizes[1]}
        )
        self._sizes = sizes

    def _refresh_limits(self) -> None:
        try:
            found = self._topics.max_message_bytes(sorted(self._limits), wait_out_outage=False)
        except DeliveryError as exc:
            # Not fatal: a lowered limit not yet seen shows as a refused batch, which stops.
            log.warning("kafka: topic limits not refreshed: %s", exc)
            return
        if found != self._limits:
            changed = {t: v for t, v in found.items() if self._limits.get(t) != v}
            log.info("kafka: max.message.bytes changed: %s", changed)
            self._limits.update(found)
            self._apply_limits()

    def _dead_letter(self, message: Outgoing, topic: str, on_ack: Ack, error: str) -> None:
        log.error(
            "kafka: %s (%s.%s, %d bytes) too large for %s; sending it to dead-letter topic %s",
            message.event_id,
            message.database,
            message.table,
            len(message.value),
            topic,
            self._dead_letter_topic,
        )
        self.dead_lettered += 1
        try:
            self._topics.ensure(self._dead_letter_topic)
        except (DeliveryError, ConfigError) as exc:
            self._fail(f"kafka: dead-letter topic for {message.event_id}: {exc}")
            return
        limit = self._limits.get(topic)
        reason = (
            f"message of {len(message.value)} bytes does not fit in {topic}: its "
            f"max.message.bytes is {limit} bytes (less {framing_margin(limit)} bytes the "
            "reader keeps for batch framing)"
            if limit is not None
            else f"message of {len(message.value)} bytes too large for {topic}"
        )
        doc = dead_letter_document(message, topic, error, reason)

        def dead_letter_delivered(err: Any, _msg: Any) -> None:
            if err is None:
                on_ack()
            else:
                self._fail(
                    f"kafka: dead-letter record of {message.event_id} to "
                    f"{self._dead_letter_topic}[{message.shard}] failed: {err}"
                )

        try:
            self._producer.produce(
                self._dead_letter_topic,
                value=doc,
                key=message.key,
                partition=message.shard,
                on_delivery=dead_letter_delivered,
            )
        except (BufferError, KafkaException) as exc:
            self._fail(f"kafka: cannot queue dead-letter record of {message.event_id}: {exc}")

    def _fail(self, text: str) -> None:
        log.error("%s", text)
        if self._failure is None:
            self._failure = DeliveryError(text)

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def poll(self, timeout: float = 0.0) -> None:
        self._producer.poll(timeout)
        self._raise_failure()
        if self._limits and time.monotonic() >= self._next_refresh:
            self._next_refresh = time.monotonic() + self._refresh_s
            self._refresh_limits()

    def flush(self, timeout: float) -> None:
        remaining = self._producer.flush(timeout)
        self._raise_failure()
        if remaining:
            raise DeliveryError(
                f"kafka: {remaining} messages still undelivered after {timeout:.1f}s"
            )

    def close(self) -> None:
        # Serve what is already delivered; unacknowledged messages are replayed later.
        self._producer.poll(0)
