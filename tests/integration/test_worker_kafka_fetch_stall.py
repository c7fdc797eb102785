"""A shard whose Kafka fetching stopped for good while the broker restarted gets its
records all the same.

A chaos run (`bench/chaos.py --sink postgres --seed 7 --kinds restart-kafka`) showed
it: after one of several Kafka restarts, one worker's librdkafka consumer never
fetched its two (assigned, unpaused) partitions again. The worker held the shards,
polled, and applied nothing more; the others went on. Which librdkafka state it was
is not known, so this test puts the partition in one that never fetches by itself:
paused inside librdkafka behind the consumer's back, across a Kafka stop and start.
The consumer notices that the shard got nothing for `fetch_stall_s` while the
broker holds newer records, and the transport fetches them again from the shard's
position (`Consumer._check_fetching`, `KafkaTransport.refetch_if_behind`)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest import StackHandle
from tests.integration.workers_support import handled_across
from workers.transports.kafka import KafkaTransport

pytestmark = pytest.mark.integration


def test_a_shard_whose_fetching_stopped_across_a_kafka_restart_gets_its_records(
    stack: StackHandle, unique: str
) -> None:
    async def pause_behind_its_back_across_a_restart(transport: KafkaTransport) -> None:
        # librdkafka stops fetching the partition; the consumer is not told.
        kafka: Any = transport._require()
        await transport._run(lambda: kafka.pause(transport._partitions(0)))
        await asyncio.to_thread(stack.stop, "kafka")
        await asyncio.to_thread(stack.start, "kafka")

    topic = f"{unique}_stall"
    breaker = pause_behind_its_back_across_a_restart
    positions, _ = handled_across(stack, unique, topic, breaker, "after the restart")
    assert positions == list(range(10))
