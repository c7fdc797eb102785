"""Assemble a worker's consumer layer from settings: transport, handler, dead letters.

The whole worker, in one call (this is what `shardctl worker run --handler` does):

    async with consuming_worker(settings, worker_options, ConsumeOptions(
            handler="mod:fn", transport="kafka", topics=("shop",))) as worker:
        await worker.run()        # worker.stop_requested.set() drains it

or piece by piece: `build_consumer(...)`, `await consumer.open()`,
`Worker(settings, worker_options, consumer)` (a Consumer is a ShardConsumer), and
`await consumer.close()` after the worker returned.

Kafka dead-letter topics must exist before the first poison event; with
`create_dead_letter_topics` (the default) missing ones are created here, at start,
so a broker refusal stops the worker at once with the topic's name.

With `WorkerOptions.metrics_port`, `consuming_worker` serves /metrics, /healthz and
/readyz from its start, before anything waits on a broker: while the worker waits
for Kafka (a Kafka restart, a broker not up yet) liveness says alive (the process's
loop ticks; the caller runs `health.run_ticker()`) and readiness says not ready,
naming `kafka.bootstrap_servers`. The worker it yields then does not serve the port
again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from shardctl.core import health, metrics
from shardctl.core.backoff import Backoff
from shardctl.core.config import ConfigError, Settings
from shardctl.core.kafka_log import kafka_log
from shardctl.core.keyspace import Keyspace
from workers.consumer import Consumer, ConsumerConfig, ShardGate
from workers.deadletters import (
    DEFAULT_TEMPLATE,
    DeadLetterWriter,
    KafkaDeadLetterWriter,
    NsqDeadLetterWriter,
    dead_letter_topic,
)
from workers.handlers import HandlerContext, load_handler
from workers.reshard_gate import ReshardGate
from workers.retry import RetryPolicy
from workers.transports.base import Transport
from workers.transports.kafka import KafkaTransport
from workers.transports.nsq import NsqTransport
from workers.worker import Worker, WorkerOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConsumeOptions:
    handler: str  # module:callable
    transport: Literal["kafka", "nsq"]
    topics: tuple[str, ...]
    handler_options: dict[str, str] = field(default_factory=dict)
    nsq_channel: str | None = None  # default "shardctl.<cluster>"
    dead_letter_template: str = DEFAULT_TEMPLATE
    create_dead_letter_topics: bool = True
    batch_size: int = 200
    max_in_flight: int = 1000
    retry_attempts: int = 5
    retry_initial_delay_s: float = 0.2
    retry_max_delay_s: float = 10.0
    handler_threads: int = 8


def build_transport(settings: Settings, options: ConsumeOptions) -> Transport:
    if options.transport == "kafka":
        return KafkaTransport(
            settings.kafka.client_config(),
            options.topics,
            group_id=f"shardctl.{settings.cluster}.workers",
        )
    if options.transport == "nsq":
        addresses = [a.strip() for a in settings.nsq.nsqd_tcp_addresses.split(",") if a.strip()]
        if not addresses:
            raise ConfigError("nsq.nsqd_tcp_addresses: empty; the nsq transport needs nsqd")
        channel = options.nsq_channel or f"shardctl.{settings.cluster}"
        return NsqTransport(addresses, options.topics, channel, max_in_flight=options.max_in_flight)
    raise ConfigError(f"transport: {options.transport!r} is not kafka or nsq")


# How long a starting worker waits for an unreachable broker before it gives up.
KAFKA_START_OUTAGE_S = 300.0


def ensure_kafka_topics(
    settings: Settings, topics: list[str], outage_s: float = KAFKA_START_OUTAGE_S
) -> list[str]:
    """Create the missing `topics` (1 partition, broker-default replication); return
    the created names. While no broker answers (a Kafka restart), wait and retry for
    up to `outage_s`, saying so, rather than exit; the worker registers only after."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    config: dict[str, Any] = {
        **settings.kafka.client_config(),
        "logger": kafka_log("worker dead-letter topic check"),
    }
    admin = AdminClient(config)
    unreachable = {KafkaError._TRANSPORT, KafkaError._TIMED_OUT, KafkaError._ALL_BROKERS_DOWN}
    backoff = Backoff()
    deadline = time.monotonic() + outage_s
    servers = settings.kafka.bootstrap_servers
    try:
        while True:
            try:
                existing = set(admin.list_topics(timeout=10).topics)
                break
            except KafkaException as exc:
                admin.poll(0)  # its log lines, rate-limited
                err = exc.args[0] if exc.args else None
                if not isinstance(err, KafkaError) or err.code() not in unreachable:
                    raise
                if time.monotonic() >= deadline:
                    raise ConfigError(
                        f"kafka.bootstrap_servers {servers}: no broker answered for "
                        f"{outage_s:.0f} s while checking the dead-letter topics {topics}: {exc}"
                    ) from exc
                health.waiting(f"Kafka at kafka.bootstrap_servers {servers}: {exc}")
                delay = backoff.next()
                log.warning(
                    "kafka (%s) unreachable while checking dead-letter topics; retrying in "
                    "%.1f s: %s",
                    servers,
                    delay,
                    exc,
                )
                time.sleep(delay)
    finally:
        health.waiting(None)
    missing = [t for t in topics if t not in existing]
    if not missing:
        return []
    futures = admin.create_topics([NewTopic(t, num_partitions=1) for t in missing])
    for topic, future in futures.items():
        try:
            future.result(timeout=30)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise ConfigError(
                    f"dead-letter topic {topic}: cannot create it: {exc}; create it or set "
                    "the dead-letter topic template"
                ) from exc
    log.info("created dead-letter topics %s", missing)
    return missing


def build_dead_letters(
    settings: Settings, options: ConsumeOptions, worker_id: str
) -> DeadLetterWriter:
    names = [dead_letter_topic(options.dead_letter_template, t) for t in options.topics]
    if options.transport == "kafka":
        if options.create_dead_letter_topics:
            ensure_kafka_topics(settings, names)
        return KafkaDeadLetterWriter(
            settings.kafka.client_config(), worker_id, options.dead_letter_template
        )
    return NsqDeadLetterWriter(
        settings.nsq.nsqd_http_address, worker_id, options.dead_letter_template
    )


def build_consumer(
    settings: Settings,
    options: ConsumeOptions,
    worker_id: str,
    config: ConsumerConfig | None = None,
    gate: ShardGate | None = None,
) -> Consumer:
    """Everything but the etcd side. Raises ConfigError/HandlerError naming the setting."""
    if not options.topics:
        raise ConfigError(
            "topics: no topic to consume: pass --topic, or set the cluster's topics with "
            "`shardctl cluster init --shards N --topic T`"
        )
    context = HandlerContext(
        worker_id=worker_id,
        settings=settings,
        options=dict(options.handler_options),
        topics=options.topics,
    )
    executor = ThreadPoolExecutor(max_workers=options.handler_threads, thread_name_prefix="handler")
    handler = load_handler(options.handler, context, executor)
    transport = build_transport(settings, options)
    dead_letters = build_dead_letters(settings, options, worker_id)
    retry = RetryPolicy(
        attempts=options.retry_attempts,
        initial_delay_s=options.retry_initial_delay_s,
        max_delay_s=options.retry_max_delay_s,
    )
    return Consumer(
        transport,
        handler,
        dead_letters,
        config
        or ConsumerConfig(
            max_in_flight=options.max_in_flight, batch_size=options.batch_size, retry=retry
        ),
        worker_id=worker_id,
        gate=gate,
    )


@asynccontextmanager
async def consuming_worker(
    settings: Settings, worker_options: WorkerOptions, options: ConsumeOptions
) -> AsyncIterator[Worker]:
    """A Worker whose shards are consumed by `options.handler`; closes the consumer
    (transport, handler) when the block ends. A shard that fails for a reason other
    than fencing is given up alone (`Claim.fail`): committed, released, and
    acquired again after a backoff, while the other shards keep flowing."""
    server = None
    if worker_options.metrics_port:
        # Probes get answers while the worker waits for a broker below.
        server = metrics.start_server(worker_options.metrics_port)
        log.info(
            "%s: /metrics, /healthz, /readyz on port %d",
            worker_options.worker_id,
            worker_options.metrics_port,
        )
        worker_options = replace(worker_options, metrics_port=0)
    try:
        if options.transport == "kafka" and options.create_dead_letter_topics:
            # Off the event loop: the health ticker goes on while no broker answers.
            names = [dead_letter_topic(options.dead_letter_template, t) for t in options.topics]
            await asyncio.to_thread(ensure_kafka_topics, settings, names)
            options = replace(options, create_dead_letter_topics=False)
        # Holds shards that gain keys while the shard count changes (workers.reshard_gate).
        gate = ReshardGate(settings, Keyspace.of(settings))
        consumer = build_consumer(settings, options, worker_options.worker_id, gate=gate)
        await gate.start()
        try:
            await consumer.open()
            try:
                yield Worker(settings, worker_options, consumer)
            finally:
                await consumer.close()
        finally:
            await gate.close()
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
