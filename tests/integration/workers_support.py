"""Helpers for the consumer-side worker tests: topics, Maxwell messages, waiting."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from shardctl.core.config import Settings
from shardctl.core.etcd import EtcdClient
from shardctl.core.keyspace import Keyspace
from shardctl.core.records import Assignment
from tests.polling import wait_async as wait_async
from workers.consumer import Consumer as WorkerConsumer
from workers.consumer import ConsumerConfig, StaticClaim
from workers.deadletters import KafkaDeadLetterWriter
from workers.events import Batch, Event, decode_message
from workers.handlers import Handler
from workers.transports.kafka import KafkaTransport


class PositionsSeen:
    """A handler that records the position of every event it is given, in order."""

    def __init__(self) -> None:
        self.positions: list[int | None] = []
        self._lock = threading.Lock()

    def on_events(self, batch: Batch) -> None:
        with self._lock:
            self.positions.extend(e.position for e in batch.events)

    def count(self) -> int:
        with self._lock:
            return len(self.positions)


def inserts(start: int, count: int) -> list[tuple[int, bytes | None, bytes]]:
    """`count` insert messages for partition 0, with ids from `start`."""
    return [
        (0, b"%d" % n, json.dumps({"type": "insert", "data": {"id": n}}).encode())
        for n in range(start, start + count)
    ]


def handled_across(
    stack: Any,
    unique: str,
    topic: str,
    break_fetching: Callable[[KafkaTransport], Awaitable[None]],
    what: str,
) -> tuple[list[int | None], KafkaTransport]:
    """One shard of a one-partition topic, consumed through the Kafka transport with
    a 2 s fetch-stall check: 5 records handled, then `break_fetching`, then 5 more
    produced. Returns the positions handled once all 10 were, and the transport."""
    create_topic(stack.kafka_bootstrap, topic, 1)
    seen = PositionsSeen()
    transport = KafkaTransport(
        {"bootstrap.servers": stack.kafka_bootstrap}, [topic], group_id=f"test.{unique}"
    )

    async def scenario() -> None:
        consumer = WorkerConsumer(
            transport,
            Handler("seen", seen),
            KafkaDeadLetterWriter({"bootstrap.servers": stack.kafka_bootstrap}, "w-test"),
            ConsumerConfig(batch_size=10, idle_wait_s=0.2, fetch_stall_s=2.0),
        )
        await consumer.open()
        try:
            produce(stack.kafka_bootstrap, topic, inserts(0, 5))
            await consumer.start(StaticClaim(0))
            await wait_async("the first 5 records handled", lambda: seen.count() == 5, 60)
            await break_fetching(transport)
            await asyncio.to_thread(produce, stack.kafka_bootstrap, topic, inserts(5, 5))
            await wait_async(
                f"the 5 records produced {what} handled", lambda: seen.count() == 10, 90
            )
        finally:
            await consumer.close()

    try:
        asyncio.run(scenario())
    finally:
        delete_topics(stack.kafka_bootstrap, [topic])
    return seen.positions, transport


def maxwell(
    n: int,
    shard: int,
    *,
    kind: str = "insert",
    table: str = "items",
    database: str = "shop",
    data: dict[str, Any] | None = None,
    event_id: str | None = None,
    xid: int | None = None,
) -> bytes:
    doc = {
        "database": database,
        "table": table,
        "type": kind,
        "ts": 1700000000,
        "xid": n if xid is None else xid,
        "commit": True,
        "data": data if data is not None else {"id": n, "name": f"n{n}"},
        "event_id": event_id or f"ev-{shard}-{n}",
    }
    return json.dumps(doc).encode()


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[
        topic
    ].result(30)


def delete_topics(bootstrap: str, topics: Iterable[str]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = set(admin.list_topics(timeout=10).topics)
    names = [t for t in topics if t in existing]
    if names:
        for future in admin.delete_topics(names).values():
            future.result(30)


def produce(
    bootstrap: str, topic: str, messages: Iterable[tuple[int, bytes | None, bytes]]
) -> None:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5}
    )
    for partition, key, value in messages:
        producer.produce(topic, value=value, key=key, partition=partition)
    assert producer.flush(30) == 0, f"{topic}: messages left undelivered"


def read_all(
    bootstrap: str,
    topic: str,
    partitions: int,
    expect: int,
    timeout: float = 30.0,
    read_committed: bool = False,
) -> list[Any]:
    """Every message of `topic` from the start, once `expect` of them are there."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"read-{topic}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed" if read_committed else "read_uncommitted",
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            out.extend(m for m in consumer.consume(100, 0.5) if m.error() is None)
            if len(out) >= expect:
                # Drain a little longer: more than `expect` would be a bug to see.
                out.extend(m for m in consumer.consume(100, 1.0) if m.error() is None)
                return out
        return out
    finally:
        consumer.close()


async def write_assignment(settings: Settings, owners: list[str | None], generation: int) -> None:
    """Play the coordinator: write the assignment document."""
    keys = Keyspace.of(settings)
    doc = Assignment(generation=generation, num_shards=len(owners), owners=owners)
    async with EtcdClient(settings.etcd) as client:
        await client.put(keys.assignment, doc.encode())


async def delete_cluster(settings: Settings) -> None:
    keys = Keyspace.of(settings)
    async with EtcdClient(settings.etcd) as client:
        await client.delete_prefix(keys.root)


def row_event(n: int, kind: str, data: dict[str, Any], old: dict[str, Any] | None = None) -> Event:
    doc = json.loads(maxwell(n, 0, kind=kind, data=data))
    if old is not None:
        doc["old"] = old
    raw = json.dumps(doc).encode()
    """One Maxwell row message of table `orders` in shard 0 at position `n`, token 7."""
    return Event(0, "orders", n, None, raw, decode_message(raw, 0, "orders", n), 7)


# Row 1: updated, deleted, inserted again, updated with a partial image; row 2:
# deleted and inserted again; row 4 inserted and deleted; row 3 moved to key 5 and
# updated there; row 6 inserted and updated.
MIXED_CHANGES = [
    ("update", {"id": 1, "name": "a"}, None),
    ("delete", {"id": 1, "name": "a"}, None),
    ("insert", {"id": 1, "name": "b", "payload": "AAEC"}, None),
    ("update", {"id": 1, "name": "c"}, {"name": "b"}),
    ("delete", {"id": 2, "name": "n2"}, None),
    ("insert", {"id": 2, "name": "x"}, None),
    ("insert", {"id": 4, "name": "n4"}, None),
    ("delete", {"id": 4, "name": "n4"}, None),
    ("update", {"id": 5, "name": "n3"}, {"id": 3}),
    ("update", {"id": 5, "name": "z"}, {"name": "n3"}),
    ("insert", {"id": 6, "name": "n6"}, None),
    ("update", {"id": 6, "name": "y"}, {"name": "n6"}),
]
MIXED_RESULT = [(1, "c", b"\x00\x01\x02"), (2, "x", None), (5, "z", None), (6, "y", None)]
