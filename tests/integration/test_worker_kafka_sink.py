"""The Kafka sink on a real broker: output and source offsets commit in one
transaction, and a newer owner of the shard fences the older one's producer."""

from __future__ import annotations

import pytest

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
