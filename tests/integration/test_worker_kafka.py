"""Workers on real Kafka and etcd: owned partitions from the fenced offset, handoff,
pause/resume, bounded in-flight work, and poison messages in the dead-letter topic."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest

from shardctl.core.config import Settings
from shardctl.core.etcd import EtcdClient
from shardctl.core.keyspace import Keyspace
from shardctl.core.records import OffsetRecord
from tests.conftest import StackHandle
from tests.integration.workers_support import (
    create_topic,
    delete_cluster,
    delete_topics,
    maxwell,
    produce,
    read_all,
    wait_async,
    write_assignment,
)
from workers.consumer import Consumer, ConsumerConfig, StaticClaim
from workers.deadletters import KafkaDeadLetterWriter
from workers.events import Batch
from workers.handlers import Handler
from workers.pipeline import ensure_kafka_topics
from workers.retry import RetryPolicy
from workers.transports.kafka import KafkaTransport
from workers.worker import Worker, WorkerOptions

pytestmark = pytest.mark.integration

FAST_RETRY = RetryPolicy(attempts=2, initial_delay_s=0.01, max_delay_s=0.05)


class Seen:
    """Records (shard, position, event id) of every handled event, thread-safely."""

    def __init__(self, delay_s: float = 0.0, poison_id: int | None = None) -> None:
        self.items: list[tuple[int, int | None, str | None]] = []
        self.by_topic: list[tuple[int, str, int | None]] = []
        self.delay_s = delay_s
        self.poison_id = poison_id
        self._lock = threading.Lock()

    def on_events(self, batch: Batch) -> None:
        for event in batch.events:
            if self.poison_id is not None and event.data.get("id") == self.poison_id:
                raise ValueError(f"poison row id {self.poison_id}")
        if self.delay_s:
            time.sleep(self.delay_s)
        with self._lock:
            self.items.extend((e.shard, e.position, e.event_id) for e in batch.events)
            self.by_topic.extend((e.shard, e.topic, e.position) for e in batch.events)

    def seen_positions(self, shard: int) -> list[int | None]:
        with self._lock:
            return [p for s, p, _ in self.items if s == shard]


def _transport(stack: StackHandle, topic: str, unique: str) -> KafkaTransport:
    return KafkaTransport(
        {"bootstrap.servers": stack.kafka_bootstrap}, [topic], group_id=f"test.{unique}"
    )


def _dead_letters(stack: StackHandle) -> KafkaDeadLetterWriter:
    return KafkaDeadLetterWriter({"bootstrap.servers": stack.kafka_bootstrap}, "w-test")


async def _positions(settings: Settings, shard: int) -> dict[str, int]:
    keys = Keyspace.of(settings)
    async with EtcdClient(settings.etcd) as client:
        kv = await client.get(keys.offset(shard))
    return {} if kv is None else OffsetRecord.decode(kv.key, kv.value).positions


async def _owner_present(settings: Settings, shard: int) -> bool:
    keys = Keyspace.of(settings)
    async with EtcdClient(settings.etcd) as client:
        return await client.get(keys.owner(shard)) is not None


def test_worker_consumes_owned_partitions_from_fenced_offsets_and_hands_one_over(
    stack: StackHandle, settings: Settings, unique: str
) -> None:
    topic = f"orders-{unique}"
    create_topic(stack.kafka_bootstrap, topic, 3)
    produce(
        stack.kafka_bootstrap,
        topic,
        [(s, b"k%d" % n, maxwell(n, s)) for s in range(3) for n in range(10)],
    )

    async def scenario() -> None:
        keys = Keyspace.of(settings)
        async with EtcdClient(settings.etcd) as client:
            # An earlier owner of shard 1 committed up to offset 4.
            await client.put(
                keys.offset(1),
                OffsetRecord(positions={topic: 4}, event_id="ev-1-3", token=1).encode(),
            )
        seen = Seen()
        consumer = Consumer(
            _transport(stack, topic, unique),
            Handler("test:seen", seen),
            _dead_letters(stack),
            ConsumerConfig(batch_size=4),
        )
        await consumer.open()
        worker = Worker(
            settings,
            WorkerOptions(worker_id="w1", ttl=3, commit_interval_s=0.2, drain_timeout_s=1.0),
            consumer,
        )
        task = asyncio.get_running_loop().create_task(worker.run())
        try:
            await write_assignment(settings, ["w1", "w1", "w1"], generation=1)
            await wait_async("26 events", lambda: len(seen.items) == 26)
            assert seen.seen_positions(0) == list(range(10))
            assert seen.seen_positions(1) == list(range(4, 10)), "shard 1 ignored its fenced offset"
            assert seen.seen_positions(2) == list(range(10))
            for shard in range(3):
                await wait_async_coro(
                    f"offset of shard {shard}", lambda s=shard: _positions(settings, s), 10
                )

            # The assignment moves shard 2 away: it is released with a final commit.
            await write_assignment(settings, ["w1", "w1", None], generation=2)
            await wait_async_coro("owners/2 deleted", lambda: _not(_owner_present(settings, 2)))
            assert await _positions(settings, 2) == {topic: 10}
            produce(
                stack.kafka_bootstrap,
                topic,
                [(s, b"k", maxwell(n, s)) for s in (0, 2) for n in range(10, 15)],
            )
            await wait_async("shard 0's new events", lambda: len(seen.seen_positions(0)) == 15)
            await asyncio.sleep(1.0)
            assert seen.seen_positions(2) == list(range(10)), "a released shard was consumed"
            assert seen.seen_positions(0) == list(range(15)), "duplicates or gaps on shard 0"
        finally:
            worker.stop_requested.set()
            await asyncio.wait_for(task, 30)
            await consumer.close()
        assert await _positions(settings, 0) == {topic: 15}
        await delete_cluster(settings)

    try:
        asyncio.run(scenario())
    finally:
        delete_topics(stack.kafka_bootstrap, [topic])


async def _not(coro: Any) -> bool:
    return not await coro


async def wait_async_coro(what: str, make: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await make()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)


def test_pause_stops_fetching_a_shard_and_resume_continues_it(
    stack: StackHandle, unique: str
) -> None:
    topic = f"pause-{unique}"
    create_topic(stack.kafka_bootstrap, topic, 2)

    async def scenario() -> None:
        transport = _transport(stack, topic, unique)
        await transport.start()
        await transport.start_shard(0, {})
        await transport.start_shard(1, {})
        transport.pause(0)
        produce(
            stack.kafka_bootstrap,
            topic,
            [(s, None, maxwell(n, s)) for s in (0, 1) for n in range(5)],
        )
        got: list[Any] = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            got += await transport.poll(100, 0.2)
        assert {r.shard for r in got} == {1}, "a paused shard was fetched"
        assert [r.position for r in got] == list(range(5))
        transport.resume(0)
        resumed: list[Any] = []
        deadline = time.monotonic() + 20
        while len(resumed) < 5 and time.monotonic() < deadline:
            resumed += await transport.poll(100, 0.2)
        assert [(r.shard, r.position) for r in resumed] == [(0, n) for n in range(5)]
        await transport.close()

    try:
        asyncio.run(scenario())
    finally:
        delete_topics(stack.kafka_bootstrap, [topic])


def test_a_shard_paused_at_handoff_flows_again_when_it_comes_back(
    stack: StackHandle, unique: str
) -> None:
    """A shard released while paused, then owned again by the same worker, is read."""
    topic = f"reacquire-{unique}"
    create_topic(stack.kafka_bootstrap, topic, 1)

    async def scenario() -> None:
        transport = _transport(stack, topic, unique)
        await transport.start()
        await transport.start_shard(0, {})
        produce(stack.kafka_bootstrap, topic, [(0, None, maxwell(0, 0))])
        first: list[Any] = []
        deadline = time.monotonic() + 20
        while not first and time.monotonic() < deadline:
            first += await transport.poll(100, 0.2)
        assert [r.position for r in first] == [0]
        transport.pause(0)  # as a handoff does before releasing the shard
        await transport.stop_shard(0)
        produce(stack.kafka_bootstrap, topic, [(0, None, maxwell(n, 0)) for n in (1, 2, 3)])
        await transport.start_shard(0, {topic: 1})
        got: list[Any] = []
        deadline = time.monotonic() + 20
        while len(got) < 3 and time.monotonic() < deadline:
            got += await transport.poll(100, 0.2)
        assert [(r.shard, r.position) for r in got] == [(0, 1), (0, 2), (0, 3)]
        await transport.close()

    try:
        asyncio.run(scenario())
    finally:
        delete_topics(stack.kafka_bootstrap, [topic])


def test_a_slow_handler_slows_fetching_and_bounds_what_is_held(
    stack: StackHandle, unique: str
) -> None:
    topic = f"slow-{unique}"
    create_topic(stack.kafka_bootstrap, topic, 1)
    produce(stack.kafka_bootstrap, topic, [(0, None, maxwell(n, 0)) for n in range(60)])
    config = ConsumerConfig(max_in_flight=6, batch_size=3, retry=FAST_RETRY)

    async def scenario() -> int:
        seen = Seen(delay_s=0.02)
        consumer = Consumer(
            _transport(stack, topic, unique),
            Handler("test:slow", seen),
            _dead_letters(stack),
            config,
        )
        await consumer.open()
        await consumer.start(StaticClaim(0))
        most = 0
        deadline = time.monotonic() + 60
        while len(seen.items) < 60 and time.monotonic() < deadline:
            most = max(most, consumer.queued(0))
            await asyncio.sleep(0.005)
        assert seen.seen_positions(0) == list(range(60))
        final = await consumer.stop(0, 0)
        assert final is not None and final.positions == {topic: 60}
        await consumer.close()
        return most

    try:
        most = asyncio.run(scenario())
    finally:
        delete_topics(stack.kafka_bootstrap, [topic])
    # The queue may overshoot by at most one poll (batch_size records) before pausing.
    assert most <= config.max_in_flight + config.batch_size


def test_poison_messages_land_in_the_dead_letter_topic_and_the_shard_goes_on(
    stack: StackHandle, settings: Settings, unique: str
) -> None:
    topic = f"poison-{unique}"
    dlq = f"{topic}.dlq"
    create_topic(stack.kafka_bootstrap, topic, 1)
    assert ensure_kafka_topics(settings, [dlq]) == [dlq]
    messages = [(0, b"k%d" % n, maxwell(n, 0)) for n in range(10)]
    messages[6] = (0, b"k6", b"{not json")
    produce(stack.kafka_bootstrap, topic, messages)

    async def scenario() -> tuple[list[Any], Any]:
        seen = Seen(poison_id=3)
        consumer = Consumer(
            _transport(stack, topic, unique),
            Handler("test:poison", seen),
            _dead_letters(stack),
            ConsumerConfig(batch_size=5, retry=FAST_RETRY),
        )
        await consumer.open()
        await consumer.start(StaticClaim(0, token=9))
        await wait_async("8 good events", lambda: len(seen.items) == 8)
        final = await consumer.stop(0, 9)
        await consumer.close()
        return seen.items, final

    try:
        items, final = asyncio.run(scenario())
        letters = read_all(stack.kafka_bootstrap, dlq, 1, expect=2)
    finally:
        delete_topics(stack.kafka_bootstrap, [topic, dlq])
    assert [p for _, p, _ in items] == [0, 1, 2, 4, 5, 7, 8, 9]
    assert final.positions == {topic: 10}, "the shard stopped at a poison message"
    docs = [json.loads(m.value()) for m in letters]
    assert len(docs) == 2, f"expected exactly two dead letters, got {docs}"
    by_position = {d["position"]: d for d in docs}
    assert by_position[3]["error"] == "poison row id 3"
    assert by_position[3]["error_type"] == "ValueError"
    assert by_position[3]["attempts"] == 2 and by_position[3]["token"] == 9
    assert json.loads(by_position[3]["event"])["event_id"] == "ev-0-3"
    assert by_position[6]["handler"] == "(decoding)"
    assert "not JSON" in by_position[6]["error"] and by_position[6]["event"] == "{not json"
    assert {m.key() for m in letters} == {b"k3", b"k6"}


def test_a_shard_reads_its_partition_of_every_topic_and_commits_one_offset_per_topic(
    stack: StackHandle, settings: Settings, unique: str
) -> None:
    # Two topics, as the CDC topic template makes one per table: shard s is partition s
    # of each, and offsets/<s> carries one position per topic through a handoff.
    orders, users = f"orders-{unique}", f"users-{unique}"
    for topic in (orders, users):
        create_topic(stack.kafka_bootstrap, topic, 2)
    produce(
        stack.kafka_bootstrap, orders, [(s, None, maxwell(n, s)) for s in (0, 1) for n in range(6)]
    )
    produce(
        stack.kafka_bootstrap, users, [(s, None, maxwell(n, s)) for s in (0, 1) for n in range(4)]
    )

    def worker_of(worker_id: str, seen: Seen) -> tuple[Consumer, Worker]:
        consumer = Consumer(
            KafkaTransport(
                {"bootstrap.servers": stack.kafka_bootstrap},
                [orders, users],
                group_id=f"test.{unique}",
            ),
            Handler("test:seen", seen),
            _dead_letters(stack),
            ConsumerConfig(batch_size=3),
        )
        options = WorkerOptions(
            worker_id=worker_id, ttl=3, commit_interval_s=0.2, drain_timeout_s=1.0
        )
        return consumer, Worker(settings, options, consumer)

    def topic_positions(seen: Seen, shard: int) -> dict[str, list[int | None]]:
        with seen._lock:
            out: dict[str, list[int | None]] = {}
            for s, topic, position in seen.by_topic:
                if s == shard:
                    out.setdefault(topic, []).append(position)
            return out

    async def scenario() -> None:
        keys = Keyspace.of(settings)
        async with EtcdClient(settings.etcd) as client:
            # An earlier owner of shard 1 got to offset 2 of orders and 3 of users.
            await client.put(
                keys.offset(1),
                OffsetRecord(positions={orders: 2, users: 3}, token=1).encode(),
            )
        seen1, seen2 = Seen(), Seen()
        consumer1, w1 = worker_of("w1", seen1)
        consumer2, w2 = worker_of("w2", seen2)
        await consumer1.open()
        await consumer2.open()
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(w1.run()), loop.create_task(w2.run())]
        try:
            await write_assignment(settings, ["w1", "w1"], generation=1)
            await wait_async("w1's 15 events", lambda: len(seen1.items) == 10 + 4 + 1)
            assert topic_positions(seen1, 0) == {orders: list(range(6)), users: list(range(4))}
            assert topic_positions(seen1, 1) == {orders: list(range(2, 6)), users: [3]}
            await wait_async_coro(
                "both offsets of shard 1",
                lambda: _equals(_positions(settings, 1), {orders: 6, users: 4}),
            )

            # Shard 1 moves to w2: w1 commits both positions, w2 resumes from both.
            await write_assignment(settings, ["w1", "w2"], generation=2)
            await wait_async_coro("owners/1 held by w2", lambda: _owner_is(settings, 1, "w2"))
            produce(
                stack.kafka_bootstrap,
                orders,
                [(1, None, maxwell(n, 1)) for n in range(6, 9)],
            )
            produce(stack.kafka_bootstrap, users, [(1, None, maxwell(n, 1)) for n in range(4, 6)])
            await wait_async("w2's 5 events", lambda: len(seen2.items) == 5)
            assert topic_positions(seen2, 1) == {orders: [6, 7, 8], users: [4, 5]}
            assert topic_positions(seen1, 1) == {orders: list(range(2, 6)), users: [3]}
            await wait_async_coro(
                "shard 1 committed by w2",
                lambda: _equals(_positions(settings, 1), {orders: 9, users: 6}),
            )
        finally:
            for worker in (w1, w2):
                worker.stop_requested.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
            await consumer1.close()
            await consumer2.close()
        await delete_cluster(settings)

    try:
        asyncio.run(scenario())
    finally:
        delete_topics(stack.kafka_bootstrap, [orders, users])


async def _equals(coro: Any, expected: Any) -> bool:
    return bool(await coro == expected)


async def _owner_is(settings: Settings, shard: int, worker_id: str) -> bool:
    keys = Keyspace.of(settings)
    async with EtcdClient(settings.etcd) as client:
        kv = await client.get(keys.owner(shard))
    return kv is not None and kv.value.decode() == worker_id
