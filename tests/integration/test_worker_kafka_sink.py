"""The Kafka sink on a real broker: output and source offsets commit in one
transaction, a newer owner of the shard fences the older one's producer, and a
change published again (a CDC failover's tail) is forwarded once, also by a new
owner, which reads what was forwarded back from the state topic."""

from __future__ import annotations

import json

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from shardctl.core.config import Settings
from tests.conftest import StackHandle
from tests.integration.workers_support import create_topic, delete_topics, maxwell, read_all
from workers.events import Batch, Event, decode_message
from workers.handlers import Fenced, HandlerContext
from workers.sinks.kafka import KafkaSink

pytestmark = pytest.mark.integration


def _batch(topic: str, shard: int, token: int, ns: range) -> Batch:
    events = []
    for n in ns:
        raw = maxwell(n, shard)
        events.append(
            Event(
                shard=shard,
                topic=topic,
                position=n,
                key=b"k%d" % n,
                raw=raw,
                message=decode_message(raw, shard, topic, n),
                token=token,
            )
        )
    return Batch.of(shard, token, tuple(events))


def test_transactions_forward_exactly_once_and_fence_the_old_owner(
    stack: StackHandle, settings: Settings, unique: str
) -> None:
    source, output = f"src-{unique}", f"out-{unique}"
    create_topic(stack.kafka_bootstrap, source, 2)
    create_topic(stack.kafka_bootstrap, output, 2)
    context = HandlerContext(
        worker_id="w1", settings=settings, options={"topic": output}, topics=(source,)
    )
    old = KafkaSink(context)
    new = KafkaSink(
        HandlerContext(
            worker_id="w2", settings=settings, options={"topic": output}, topics=(source,)
        )
    )
    try:
        old.on_assign(1, 10)
        assert old.resume_positions(1) == {}
        old.on_events(_batch(source, 1, 10, range(0, 5)))
        assert old.resume_positions(1) == {source: 5}

        new.on_assign(1, 11)  # the new owner's producer fences the old one
        assert new.resume_positions(1) == {source: 5}
        with pytest.raises(Fenced):
            old.on_events(_batch(source, 1, 10, range(5, 8)))
        new.on_events(_batch(source, 1, 11, range(5, 8)))
        assert new.resume_positions(1) == {source: 8}

        got = read_all(stack.kafka_bootstrap, output, 2, expect=8, read_committed=True)
        assert [(m.partition(), m.key()) for m in got] == [(1, b"k%d" % n) for n in range(8)]
    finally:
        old.on_close()
        new.on_close()
        delete_topics(stack.kafka_bootstrap, [source, output])


def _changes(topic: str, shard: int, token: int, changes: list[tuple[int, int, int]]) -> Batch:
    """(offset, GTID sequence, xid) -> one row change each, event id 0-1-<seq>#0."""
    events = []
    for offset, seq, xid in changes:
        raw = maxwell(seq, shard, event_id=f"0-1-{seq}#0", xid=xid)
        events.append(
            Event(
                shard,
                topic,
                offset,
                b"k%d" % seq,
                raw,
                decode_message(raw, shard, topic, offset),
                token,
            )
        )
    return Batch.of(shard, token, tuple(events))


def test_a_change_published_again_is_forwarded_once_also_by_a_new_owner(
    stack: StackHandle, settings: Settings, unique: str
) -> None:
    source, output = f"src-{unique}", f"out-{unique}"
    create_topic(stack.kafka_bootstrap, source, 2)
    create_topic(stack.kafka_bootstrap, output, 2)
    options = {"topic": output, "replay_window": "50", "prune_every": "10"}
    old = KafkaSink(HandlerContext("w1", settings=settings, options=options, topics=(source,)))
    new = KafkaSink(HandlerContext("w2", settings=settings, options=options, topics=(source,)))
    try:
        old.on_assign(1, 10)
        old.on_events(_changes(source, 1, 10, [(n, n + 1, n + 1) for n in range(5)]))
        # The CDC reader's new leader publishes transactions 4 and 5 again, then 6.
        old.on_events(_changes(source, 1, 10, [(5, 4, 4), (6, 5, 5), (7, 6, 6)]))
        # A new owner: it reads the forwarded changes back, and skips 6 again.
        new.on_assign(1, 11)
        new.on_events(_changes(source, 1, 11, [(8, 6, 6), (9, 7, 7)]))
        # The source went backwards (another transaction at sequence 2): forwarded.
        new.on_events(_changes(source, 1, 11, [(10, 2, 902)]))
        assert new.resume_positions(1) == {source: 11}

        got = read_all(stack.kafka_bootstrap, output, 2, expect=8, read_committed=True)
        forwarded = [(json.loads(m.value())["event_id"], json.loads(m.value())["xid"]) for m in got]
        assert forwarded == [(f"0-1-{n}#0", n) for n in range(1, 8)] + [("0-1-2#0", 902)]
        assert old.state_topic == f"shardctl.{settings.cluster}.sink.{output}.applied"
        admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
        resource = ConfigResource(ResourceType.TOPIC, old.state_topic)
        configs = admin.describe_configs([resource])[resource].result(30)
        assert configs["cleanup.policy"].value == "compact"
    finally:
        old.on_close()
        new.on_close()
        delete_topics(
            stack.kafka_bootstrap,
            [source, output, f"shardctl.{settings.cluster}.sink.{output}.applied"],
        )
