"""The Kafka transport on a real broker: a shard acquired in a handoff is not held up
by a poll already waiting (one with no shard to fetch, or one blocking the consumer's
thread), and shards acquired together share one topic-id lookup.

Each poll here has an hour-long timeout: one that is not woken never returns within
the tests' liveness bound, so a missed wake-up fails the test instead of slowing it.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import StackHandle
from tests.integration.workers_support import (
    create_topic,
    delete_topics,
    maxwell,
    produce,
    wait_async,
)
from workers.transports.base import Record
from workers.transports.kafka import KafkaTransport

pytestmark = pytest.mark.integration

NEVER_S = 3600.0  # a poll timeout no test waits out
LIVENESS_S = 30.0


def _transport(stack: StackHandle, topic: str, unique: str) -> KafkaTransport:
    return KafkaTransport(
        {"bootstrap.servers": stack.kafka_bootstrap}, [topic], group_id=f"test.{unique}"
    )


def test_a_poll_without_shards_fetches_a_shard_started_while_it_waits(
    stack: StackHandle, unique: str
) -> None:
    topic = f"wake-idle-{unique}"
    create_topic(stack.kafka_bootstrap, topic, 1)
    produce(stack.kafka_bootstrap, topic, [(0, None, maxwell(0, 0))])

    async def scenario() -> None:
        transport = _transport(stack, topic, unique)
        await transport.start()
        try:
            polling = asyncio.ensure_future(transport.poll(100, NEVER_S))
            await asyncio.sleep(0)  # the poll is waiting, with no shard to fetch
            assert not polling.done()
            await transport.start_shard(0, {})
            await wait_async("the waiting poll returned", polling.done, LIVENESS_S)
            got: list[Record] = polling.result()
            assert [(r.shard, r.position) for r in got] == [(0, 0)]
        finally:
            await transport.close()

    try:
        asyncio.run(scenario())
    finally:
        delete_topics(stack.kafka_bootstrap, [topic])


def test_a_shard_starts_while_a_poll_waits_for_records_of_another(
    stack: StackHandle, unique: str
) -> None:
    topic = f"wake-busy-{unique}"
    create_topic(stack.kafka_bootstrap, topic, 2)

    async def scenario() -> None:
        transport = _transport(stack, topic, unique)
        await transport.start()
        try:
            await transport.start_shard(0, {})
            # Shard 0 has no records: this poll would block the consumer's thread.
            polling = asyncio.ensure_future(transport.poll(100, NEVER_S))
            await asyncio.sleep(0)
            await asyncio.wait_for(transport.start_shard(1, {}), LIVENESS_S)
            produce(stack.kafka_bootstrap, topic, [(1, None, maxwell(0, 1))])
            got: list[Record] = await asyncio.wait_for(polling, LIVENESS_S)
            while not got:  # the poll gave way to the start; the next one fetches
                got = await asyncio.wait_for(transport.poll(100, NEVER_S), LIVENESS_S)
            assert [(r.shard, r.position) for r in got] == [(1, 0)]
        finally:
            await transport.close()

    try:
        asyncio.run(scenario())
    finally:
        delete_topics(stack.kafka_bootstrap, [topic])


def test_shards_starting_together_read_the_topic_ids_once(stack: StackHandle, unique: str) -> None:
    topic = f"ids-once-{unique}"
    create_topic(stack.kafka_bootstrap, topic, 1)

    async def scenario() -> None:
        transport = _transport(stack, topic, unique)
        await transport.start()
        try:
            transport.forget_topic_ids()
            before = transport.topic_id_lookups  # start() read them once already
            answers = await asyncio.gather(*(transport.topic_ids() for _ in range(8)))
            assert transport.topic_id_lookups == before + 1
            assert len({tuple(a.items()) for a in answers}) == 1
            assert set(answers[0]) == {topic}
        finally:
            await transport.close()

    try:
        asyncio.run(scenario())
    finally:
        delete_topics(stack.kafka_bootstrap, [topic])
