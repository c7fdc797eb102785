"""The reader's side of an online change of the shard count (`shardctl shards set`).

`shards set M` writes `reshard` as `requested` (from N to M). The leading reader
notices it between two transactions (`ShardSwitch.requested`, an etcd read at most
every `poll_s`), flushes its producer and stores its checkpoint: everything up to
that transaction boundary is published with N and delivered. It then leads again
without giving up its leadership, and `ShardSwitch.start` does the switch at the
checkpoint it resumes from:

1. read each configured Kafka topic's high watermark of every partition below M:
   the barrier, the offset of each shard's first message published with M;
2. write `reshard` as `switched` with that checkpoint as `position` and the barrier,
   fenced by the reader's leadership and by the record's mod_revision;
3. publish with M from there on.

The barrier is read after the flush and before anything is published with M, so
every message of the old count lies below it. A reader that crashes before step 2
resumes at a checkpoint at or before the boundary and switches there; a message
published again from there carries the same event id and lands behind the barrier
of its new shard, after the older copy in its old shard. The checkpoint only moves
forward, so no transaction before `position` is ever published with M and none
after it with N.

Workers hold back what a gaining shard received at or past its barrier until every
old shard has committed its barrier (`workers.reshard_gate`).
"""

from __future__ import annotations

import logging
import time
from typing import Any, NamedTuple

from cdc.etcd_calls import call_with_retry
from cdc.options import CdcOptions
from cdc.replication.position import Checkpoint
from shardctl.core.config import ConfigError, Settings
from shardctl.core.etcd.client import EtcdClient, EtcdUnavailable, KeyValue, ModRevisionIs, Put
from shardctl.core.etcd.election import Leadership
from shardctl.core.etcd.loop_thread import LoopThread
from shardctl.core.hashing import ShardHash
from shardctl.core.keyspace import Keyspace
from shardctl.core.records import ClusterConfig, RecordError, Reshard

log = logging.getLogger(__name__)

RESHARD_POLL_S = 1.0
WATERMARK_TIMEOUT_S = 10.0


class ShardCount(NamedTuple):
    num_shards: int
    shard_hash: ShardHash


def kafka_high_watermarks(
    settings: Settings, options: CdcOptions, topics: list[str], num_shards: int
) -> dict[str, list[int]]:
    """Per existing topic, the high watermark of partitions 0..num_shards-1.

    ConfigError names a topic with fewer partitions, or the brokers when they do not
    answer: the switch cannot be recorded without the barrier, so the reader exits
    and the next leader tries again from the same checkpoint.
    """
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    conf: dict[str, Any] = {
        # The reader's own connection settings (security options may be among them);
        # librdkafka ignores the producer-only ones here.
        **settings.kafka.client_config(),
        **options.kafka_options,
        # Never subscribes or commits: the group id only satisfies the client.
        "group.id": "shardctl-reshard-barrier",
        "enable.auto.commit": False,
    }
    consumer = Consumer(conf)
    try:
        try:
            metadata = consumer.list_topics(timeout=WATERMARK_TIMEOUT_S)
        except KafkaException as exc:
            raise ConfigError(
                f"shard switch: Kafka at {settings.kafka.bootstrap_servers} does not answer "
                f"({exc}); the barrier cannot be read"
            ) from None
        barrier: dict[str, list[int]] = {}
        for topic in topics:
            meta = metadata.topics.get(topic)
            if meta is None or meta.error is not None or not meta.partitions:
                continue  # no topic: nothing was published before the switch
            if len(meta.partitions) < num_shards:
                raise ConfigError(
                    f"shard switch to {num_shards}: kafka topic {topic} has "
                    f"{len(meta.partitions)} partitions; grow it to {num_shards} "
                    "(partition = shard)"
                )
            marks: list[int] = []
            for partition in range(num_shards):
                try:
                    _low, high = consumer.get_watermark_offsets(
                        TopicPartition(topic, partition), timeout=WATERMARK_TIMEOUT_S
                    )
                except KafkaException as exc:
                    raise ConfigError(
                        f"shard switch: high watermark of {topic}[{partition}] not read: {exc}"
                    ) from None
                marks.append(int(high))
            barrier[topic] = marks
        return barrier
    finally:
        consumer.close()


class ShardSwitch:
    """Which shard count and hash the leading reader publishes with, and the switch."""

    def __init__(
        self,
        loop: LoopThread,
        client: EtcdClient,
        keyspace: Keyspace,
        settings: Settings,
        options: CdcOptions,
        poll_s: float = RESHARD_POLL_S,
    ) -> None:
        self._loop = loop
        self._client = client
        self._keys = keyspace
        self._settings = settings
        self._options = options
        self._poll_s = poll_s
        self._next_poll = time.monotonic() + poll_s
        self._timeout_s = settings.etcd.timeout_s + 1

    def _read(self, key: str) -> KeyValue | None:
        return call_with_retry(
            self._loop, lambda: self._client.get(key), f"reading {key}", timeout_s=self._timeout_s
        )

    def start(self, leadership: Leadership, checkpoint: Checkpoint) -> ShardCount:
        """The count to publish with from `checkpoint` on; a requested change is
        switched here (see the module docstring). NotLeader/SessionLost propagate."""
        while True:
            config_kv = self._read(self._keys.config)
            reshard_kv = self._read(self._keys.reshard)
            try:
                config = (
                    None
                    if config_kv is None
                    else ClusterConfig.decode(config_kv.key, config_kv.value)
                )
                reshard = (
                    None if reshard_kv is None else Reshard.decode(reshard_kv.key, reshard_kv.value)
                )
            except RecordError as exc:
                raise ConfigError(f"config: {exc}") from None
            if config is None or reshard is None or reshard.state != "requested":
                count = self._settled(config, reshard)
                self._check_pinned(count.num_shards)
                return count
            assert reshard_kv is not None
            if self._options.kafka_partition_hash != "crc32":
                # Maxwell's partitions are hash % N: a new N moves keys between the old
                # shards too, which the gate (it holds only the gaining shards) cannot
                # keep in order.
                raise ConfigError(
                    f"cdc.kafka_partition_hash: {self._options.kafka_partition_hash} gives "
                    f"Maxwell's partitions (hash % N), and the cluster changes from "
                    f"{reshard.from_shards} to {reshard.to_shards} shards "
                    f"({self._keys.reshard}): a change of shard count keeps per-key order "
                    "only with shardctl's own hash (kafka_partition_hash = crc32)"
                )
            if self._options.num_shards is not None:
                raise ConfigError(
                    f"cdc.num_shards: pinned to {self._options.num_shards}, but the cluster "
                    f"changes from {reshard.from_shards} to {reshard.to_shards} shards "
                    f"({self._keys.reshard}); unset cdc.num_shards so the reader follows "
                    "the cluster config"
                )
            if self._switch(leadership, config, reshard, reshard_kv.mod_revision, checkpoint):
                return ShardCount(reshard.to_shards, reshard.shard_hash)
            # The record changed under us: read it again.

    def _settled(self, config: ClusterConfig | None, reshard: Reshard | None) -> ShardCount:
        if config is None:
            if self._options.num_shards is None:
                raise ConfigError(
                    "cdc.num_shards: not set, and the cluster has no config key "
                    f"({self._keys.config}) to take it from"
                )
            # No cluster config: crc32, the hash readers used before the config named one.
            return ShardCount(self._options.num_shards, "crc32")
        if reshard is not None and reshard.state == "switched":
            # config.num_shards is still max(from, to) until the change completes.
            return ShardCount(reshard.to_shards, config.shard_hash)
        return ShardCount(config.num_shards, config.shard_hash)

    def _check_pinned(self, num_shards: int) -> None:
        configured = self._options.num_shards
        if configured is not None and configured != num_shards:
            raise ConfigError(
                f"cdc.num_shards: {configured} differs from num_shards={num_shards} in the "
                f"cluster config ({self._keys.config})"
            )

    def _switch(
        self,
        leadership: Leadership,
        config: ClusterConfig,
        reshard: Reshard,
        mod_revision: int,
        checkpoint: Checkpoint,
    ) -> bool:
        barrier: dict[str, list[int]] = {}
        if config.transport in ("kafka", "both"):
            barrier = kafka_high_watermarks(
                self._settings, self._options, config.topics, reshard.to_shards
            )
        switched = reshard.model_copy(
            update={
                "state": "switched",
                "source": self._options.source,
                "position": checkpoint.describe(),
                "switched_at": time.time(),
                "barrier": barrier,
            }
        )
        ok = self._loop.run(
            leadership.guarded_txn(
                [Put(self._keys.reshard, switched.encode())],
                [ModRevisionIs(self._keys.reshard, mod_revision)],
            ),
            timeout=self._timeout_s,
        )
        if ok:
            log.info(
                "source %s: switched from %d to %d shards at %s (barrier %s)",
                self._options.source,
                reshard.from_shards,
                reshard.to_shards,
                checkpoint.describe(),
                barrier,
            )
        return ok

    def requested(self) -> bool:
        """True when a change of the shard count waits for this reader. Called between
        transactions; reads etcd at most every `poll_s`, and an etcd outage only
        delays the switch (it is logged)."""
        now = time.monotonic()
        if now < self._next_poll:
            return False
        self._next_poll = now + self._poll_s
        try:
            kv = self._loop.run(self._client.get(self._keys.reshard), timeout=self._timeout_s)
        except (EtcdUnavailable, TimeoutError) as exc:
            log.warning("source %s: %s not read: %s", self._options.source, self._keys.reshard, exc)
            return False
        if kv is None:
            return False
        try:
            return Reshard.decode(kv.key, kv.value).state == "requested"
        except RecordError as exc:
            raise ConfigError(f"reshard: {exc}") from None
