"""Kafka admin calls of the CLI: partition counts, topic creation and settings.

librdkafka logs every failed connection attempt to stderr (about 200 lines in ten
seconds when the broker is down). The CLI silences it and turns a broker that does
not answer into one `KafkaUnavailable` line naming the bootstrap servers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shardctl.core.config import Settings

METADATA_TIMEOUT_S = 10.0


class KafkaUnavailable(Exception):
    """The brokers did not answer, or refused a request; the message names them."""


@dataclass(frozen=True)
class TopicState:
    partitions: int
    replication_factor: int
    min_insync_replicas: int | None


def quiet_config(settings: Settings) -> dict[str, str]:
    """The client config with librdkafka's own logging off; errors reach us as exceptions."""
    conf = dict(settings.kafka.client_config())
    conf["log_level"] = "0"
    return conf


def _admin(settings: Settings) -> Any:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    conf: dict[str, str | int | float | bool] = dict(quiet_config(settings))
    try:
        return AdminClient(conf)
    except (KafkaException, TypeError, ValueError) as exc:  # a bad client option
        raise KafkaUnavailable(
            f"Kafka client config for {settings.kafka.bootstrap_servers}: {exc}"
        ) from None


def _metadata(settings: Settings, admin: Any, topic: str | None = None) -> Any:
    from confluent_kafka import KafkaException

    try:
        return admin.list_topics(topic, timeout=METADATA_TIMEOUT_S)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else exc
        reason = getattr(error, "str", lambda: str(error))()
        raise KafkaUnavailable(
            f"Kafka at {settings.kafka.bootstrap_servers} does not answer "
            f"({reason}; waited {METADATA_TIMEOUT_S:.0f}s)"
        ) from None


def partition_counts(settings: Settings, topics: list[str]) -> dict[str, int | None]:
    """Partitions per topic (None: the topic does not exist)."""
    metadata = _metadata(settings, _admin(settings))
    counts: dict[str, int | None] = {}
    for topic in topics:
        meta = metadata.topics.get(topic)
        counts[topic] = None if meta is None or meta.error is not None else len(meta.partitions)
    return counts


def topic_states(settings: Settings, topics: list[str]) -> dict[str, TopicState | None]:
    """Partitions, replication factor and min.insync.replicas of each topic (None: absent)."""
    from confluent_kafka import KafkaException

    # Public in confluent_kafka.admin, but not re-exported for type checkers.
    from confluent_kafka.admin import ConfigResource  # type: ignore[attr-defined]

    admin = _admin(settings)
    metadata = _metadata(settings, admin)
    states: dict[str, TopicState | None] = {}
    for topic in topics:
        meta = metadata.topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            states[topic] = None
            continue
        replicas = min(len(p.replicas) for p in meta.partitions.values())
        resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
        try:
            described = admin.describe_configs([resource])[resource].result(METADATA_TIMEOUT_S)
        except KafkaException as exc:
            raise KafkaUnavailable(f"describing topic {topic}: {exc}") from None
        entry = described.get("min.insync.replicas")
        min_isr = int(entry.value) if entry is not None and entry.value is not None else None
        states[topic] = TopicState(len(meta.partitions), replicas, min_isr)
    return states


def create_topics(
    settings: Settings,
    topics: list[str],
    partitions: int,
    replication_factor: int | None,
    min_insync_replicas: int | None,
) -> None:
    """Create `topics` with `partitions` partitions; a topic created meanwhile by
    someone else is fine (the caller compares states afterwards)."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.cimpl import NewTopic

    if not topics:
        return
    admin = _admin(settings)
    config = {}
    if min_insync_replicas is not None:
        config["min.insync.replicas"] = str(min_insync_replicas)
    new = [
        NewTopic(
            topic,
            num_partitions=partitions,
            replication_factor=-1 if replication_factor is None else replication_factor,
            config=config,
        )
        for topic in topics
    ]
    for topic, future in admin.create_topics(new, request_timeout=METADATA_TIMEOUT_S).items():
        try:
            future.result(METADATA_TIMEOUT_S + 5)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise KafkaUnavailable(
                f"creating topic {topic} at {settings.kafka.bootstrap_servers}: {exc}"
            ) from None


def grow_partitions(settings: Settings, topics: list[str], partitions: int) -> None:
    """Grow each of `topics` to `partitions` partitions; one grown meanwhile is fine."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import NewPartitions  # type: ignore[attr-defined]

    if not topics:
        return
    admin = _admin(settings)
    requests = [NewPartitions(topic, partitions) for topic in topics]
    futures = admin.create_partitions(requests, request_timeout=METADATA_TIMEOUT_S)
    for topic, future in futures.items():
        try:
            future.result(METADATA_TIMEOUT_S + 5)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError.INVALID_PARTITIONS:
                counts = partition_counts(settings, [topic])
                if counts.get(topic) == partitions:
                    continue
            raise KafkaUnavailable(
                f"growing topic {topic} to {partitions} partitions at "
                f"{settings.kafka.bootstrap_servers}: {exc}"
            ) from None


class UnknownTopic(Exception):
    """The brokers answered: the topic does not exist."""


class EndOffsets:
    """Partition counts and end offsets (high watermarks) of topics, over ONE admin
    client that lives as long as this object: a live view asks every refresh, and a
    new client per refresh would cost a connection and a metadata round per view.
    All partitions are asked in one ListOffsets request, however many there are."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.admin = _admin(settings)

    def partitions(self, topic: str) -> int:
        """The topic's partition count; UnknownTopic if it does not exist. Describing
        (unlike a metadata request) never creates the topic on an auto-creating broker."""
        from confluent_kafka import KafkaError, KafkaException, TopicCollection

        try:
            described = self.admin.describe_topics(TopicCollection([topic]))[topic].result(
                timeout=METADATA_TIMEOUT_S
            )
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            # The broker's answer, or librdkafka's own for a topic it knows is absent.
            unknown = (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC)
            if isinstance(error, KafkaError) and error.code() in unknown:
                raise UnknownTopic(
                    f"topic {topic} does not exist at {self.settings.kafka.bootstrap_servers}"
                ) from None
            raise KafkaUnavailable(
                f"topic {topic} at {self.settings.kafka.bootstrap_servers}: cannot describe "
                f"it: {exc}"
            ) from None
        return len(described.partitions)

    def end_offsets(self, topic: str, partitions: int) -> dict[int, int]:
        """Partition -> end offset, for partitions 0..partitions-1 of `topic`."""
        from confluent_kafka import KafkaException, TopicPartition

        # Public in confluent_kafka.admin, but not re-exported for type checkers.
        from confluent_kafka.admin import OffsetSpec  # type: ignore[attr-defined]

        if partitions <= 0:
            return {}
        latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        request = {TopicPartition(topic, p): latest for p in range(partitions)}
        try:
            futures = self.admin.list_offsets(request, request_timeout=METADATA_TIMEOUT_S)
            return {
                int(part.partition): int(future.result(timeout=METADATA_TIMEOUT_S + 5).offset)
                for part, future in futures.items()
            }
        except (KafkaException, TimeoutError) as exc:
            raise KafkaUnavailable(
                f"topic {topic} at {self.settings.kafka.bootstrap_servers}: no end offsets: {exc}"
            ) from None
