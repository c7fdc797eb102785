"""The NSQ transport on a real nsqd: every event reaches an idempotent handler at
least once, also when a shard is stopped and started again mid-stream."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter

import pytest

from tests.conftest import StackHandle
from tests.integration.workers_support import maxwell, wait_async
from workers.consumer import Consumer, ConsumerConfig, StaticClaim
from workers.deadletters import NsqDeadLetterWriter
from workers.events import Batch
from workers.handlers import Handler
from workers.retry import RetryPolicy
from workers.transports.nsq import NsqTransport, shard_topic

pytestmark = pytest.mark.integration


def _publish(stack: StackHandle, topic: str, bodies: list[bytes]) -> None:
    url = f"http://{stack.nsqd_http}/mpub?{urllib.parse.urlencode({'topic': topic})}"
    request = urllib.request.Request(url, data=b"\n".join(bodies), method="POST")
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.read() == b"OK"


def _delete_topic(stack: StackHandle, topic: str) -> None:
    url = f"http://{stack.nsqd_http}/topic/delete?{urllib.parse.urlencode({'topic': topic})}"
    with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=10):
        pass


class Idempotent:
    """Counts deliveries per event id; applying an id twice changes nothing."""

    def __init__(self) -> None:
        self.deliveries: Counter[str] = Counter()
        self._lock = threading.Lock()

    def on_events(self, batch: Batch) -> None:
        time.sleep(0.02)  # slow enough that a stop lands mid-stream
        with self._lock:
            for event in batch.events:
                self.deliveries[event.event_id or ""] += 1

    def distinct(self, shard: int | None = None) -> int:
        prefix = "" if shard is None else f"ev-{shard}-"
        with self._lock:
            return sum(1 for key in self.deliveries if key.startswith(prefix))


def test_every_event_arrives_at_least_once_across_a_stop_and_restart(
    stack: StackHandle, unique: str
) -> None:
    topic = f"nsq-{unique}"
    per_shard = 150
    for shard in (0, 1):
        _publish(stack, shard_topic(topic, shard), [maxwell(n, shard) for n in range(per_shard)])
    expected = {f"ev-{s}-{n}" for s in (0, 1) for n in range(per_shard)}

    async def scenario() -> Idempotent:
        handler = Idempotent()
        transport = NsqTransport(
            [stack.nsqd_tcp], [topic], channel=f"workers-{unique}", max_in_flight=20
        )
        consumer = Consumer(
            transport,
            Handler("test:idempotent", handler),
            NsqDeadLetterWriter(stack.nsqd_http, "w-test"),
            ConsumerConfig(
                max_in_flight=20, batch_size=10, retry=RetryPolicy(attempts=2, initial_delay_s=0.01)
            ),
        )
        await consumer.open()
        await consumer.start(StaticClaim(0))
        await consumer.start(StaticClaim(1))
        await wait_async("some of shard 0", lambda: handler.distinct() >= 40)
        # Revoke shard 0 mid-stream: held messages are requeued, not left to time out.
        assert await consumer.stop(0, 0) is None  # NSQ has no position to commit
        assert handler.distinct(0) < per_shard, "shard 0 finished before the stop"
        await consumer.start(StaticClaim(0, token=1))
        await wait_async("every event", lambda: handler.distinct() == len(expected), 40)
        await consumer.close()
        return handler

    try:
        handler = asyncio.run(scenario())
    finally:
        for shard in (0, 1):
            _delete_topic(stack, shard_topic(topic, shard))
    assert set(handler.deliveries) == expected


def _topic_depth(stack: StackHandle, topic: str) -> int:
    query = urllib.parse.urlencode({"format": "json", "topic": topic})
    url = f"http://{stack.nsqd_http}/stats?{query}"
    with urllib.request.urlopen(url, timeout=10) as reply:
        stats = json.loads(reply.read())
    return sum(t["message_count"] for t in stats.get("topics", []) if t["topic_name"] == topic)


def test_poison_messages_go_to_the_nsq_dead_letter_topic(stack: StackHandle, unique: str) -> None:
    topic = f"nsqp-{unique}"
    dlq = f"{topic}.dlq"
    bodies = [maxwell(n, 0) for n in range(5)]
    bodies[2] = b"{broken"
    _publish(stack, shard_topic(topic, 0), bodies)

    async def scenario() -> Idempotent:
        handler = Idempotent()
        transport = NsqTransport([stack.nsqd_tcp], [topic], channel=f"workers-{unique}")
        consumer = Consumer(
            transport,
            Handler("test:idempotent", handler),
            NsqDeadLetterWriter(stack.nsqd_http, "w-test"),
        )
        await consumer.open()
        await consumer.start(StaticClaim(0))
        await wait_async("the good events", lambda: handler.distinct() == 4)
        await wait_async("the dead letter", lambda: _topic_depth(stack, dlq) == 1)
        await consumer.close()
        return handler

    try:
        handler = asyncio.run(scenario())
    finally:
        for name in (shard_topic(topic, 0), dlq):
            _delete_topic(stack, name)
    assert set(handler.deliveries) == {f"ev-0-{n}" for n in (0, 1, 3, 4)}
