"""A worker built by `consuming_worker` (what `shardctl worker run --handler` runs)
registers in etcd only once its Kafka transport is connected and has read the topics'
ids: the coordinator then assigns shards to a worker that can fetch them at once, and
its first handoff creates no Kafka client."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from shardctl.core.config import Settings
from shardctl.core.etcd import EtcdClient
from shardctl.core.keyspace import Keyspace
from tests.conftest import StackHandle
from tests.integration.workers_support import create_topic, delete_cluster, delete_topics
from tests.polling import wait_async
from workers.consumer import Consumer
from workers.pipeline import ConsumeOptions, consuming_worker
from workers.transports.kafka import KafkaTransport
from workers.worker import WorkerOptions

pytestmark = pytest.mark.integration


def test_a_worker_registers_only_once_its_transport_is_ready(
    stack: StackHandle, settings: Settings, unique: str
) -> None:
    topic = f"start-order-{unique}"
    create_topic(stack.kafka_bootstrap, topic, 1)
    keys = Keyspace.of(settings)
    seen_at_registration: list[tuple[bool, int]] = []

    async def scenario() -> None:
        options = ConsumeOptions(
            handler="tests.unit.handler_samples:sync_batch",
            transport="kafka",
            topics=(topic,),
            create_dead_letter_topics=False,
        )
        async with EtcdClient(settings.etcd) as client:
            registered = asyncio.Event()

            async with consuming_worker(
                settings, WorkerOptions(worker_id="w1", ttl=3), options
            ) as worker:
                transport = cast(KafkaTransport, cast(Consumer, worker.consumer).transport)

                async def watch_registration() -> None:
                    # Sample the transport the moment the record shows up.
                    while await client.get(keys.worker("w1")) is None:
                        await asyncio.sleep(0)
                    seen_at_registration.append((transport.ready, transport.topic_id_lookups))
                    registered.set()

                watcher = asyncio.ensure_future(watch_registration())
                task = asyncio.ensure_future(worker.run())
                try:
                    await wait_async("w1 registered", registered.is_set)
                finally:
                    worker.stop_requested.set()
                    await asyncio.wait_for(task, 30)
                    watcher.cancel()
                    await asyncio.gather(watcher, return_exceptions=True)
        await delete_cluster(settings)

    try:
        asyncio.run(scenario())
    finally:
        delete_topics(stack.kafka_bootstrap, [topic])
    assert seen_at_registration == [(True, 1)]
