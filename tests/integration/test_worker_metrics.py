"""A worker's Prometheus series on real Kafka and etcd: events, lag, handler latency,
dead letters and shards owned, read from its /metrics endpoint."""

from __future__ import annotations

import asyncio
import socket
import threading
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shardctl.core.config import Settings
from tests.conftest import StackHandle
from tests.integration.workers_support import (
    create_topic,
    delete_cluster,
    delete_topics,
    maxwell,
    produce,
    wait_async,
    write_assignment,
)
from workers.consumer import Consumer, ConsumerConfig
from workers.deadletters import KafkaDeadLetterWriter
from workers.events import Batch
from workers.handlers import Handler
from workers.pipeline import ensure_kafka_topics
from workers.retry import RetryPolicy
from workers.transports.kafka import KafkaTransport
from workers.worker import Worker, WorkerOptions

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _scrape(port: int, worker_id: str) -> dict[tuple[str, str], float]:
    """{(sample name, shard or ""): value} of one worker's series."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("worker") == worker_id:
                out[(sample.name, sample.labels.get("shard", ""))] = sample.value
    return out


class Rejects:
    """Handles every event but the one with id 4, which it rejects."""

    def __init__(self) -> None:
        self.handled = 0
        self._lock = threading.Lock()

    def on_events(self, batch: Batch) -> None:
        if any(e.data.get("id") == 4 for e in batch.events):
            raise ValueError("row 4 is poison")
        with self._lock:
            self.handled += len(batch.events)


def test_metrics_serve_the_worker_series_after_it_handled_events(
    stack: StackHandle, settings: Settings, unique: str
) -> None:
    topic = f"metered-{unique}"
    dlq = f"{topic}.dlq"
    create_topic(stack.kafka_bootstrap, topic, 2)
    ensure_kafka_topics(settings, [dlq])
    produce(
        stack.kafka_bootstrap, topic, [(s, None, maxwell(n, s)) for s in (0, 1) for n in range(7)]
    )
    worker_id = f"wm-{unique}"
    port = _free_port()

    async def scenario() -> dict[tuple[str, str], float]:
        handler = Rejects()
        consumer = Consumer(
            KafkaTransport({"bootstrap.servers": stack.kafka_bootstrap}, [topic], f"t.{unique}"),
            Handler("test:rejects", handler),
            KafkaDeadLetterWriter({"bootstrap.servers": stack.kafka_bootstrap}, worker_id),
            ConsumerConfig(
                batch_size=10, retry=RetryPolicy(attempts=2, initial_delay_s=0.01, max_delay_s=0.02)
            ),
            worker_id=worker_id,
        )
        await consumer.open()
        options = WorkerOptions(
            worker_id=worker_id,
            ttl=3,
            commit_interval_s=0.2,
            drain_timeout_s=1.0,
            metrics_port=port,
        )
        worker = Worker(settings, options, consumer)
        task = asyncio.get_running_loop().create_task(worker.run())
        try:
            await write_assignment(settings, [worker_id, worker_id], generation=1)
            await wait_async("12 good events", lambda: handler.handled == 12)

            def settled() -> bool:
                seen = _scrape(port, worker_id)
                return all(
                    seen.get(("shardctl_worker_shard_lag_events", str(s))) == 0 for s in (0, 1)
                )

            await wait_async("lag 0 on both shards", lambda: settled())
            return _scrape(port, worker_id)
        finally:
            worker.stop_requested.set()
            await asyncio.wait_for(task, 30)
            await consumer.close()
            await delete_cluster(settings)

    try:
        seen = asyncio.run(scenario())
    finally:
        delete_topics(stack.kafka_bootstrap, [topic, dlq])
    assert seen[("shardctl_worker_events_total", "0")] == 6
    assert seen[("shardctl_worker_events_total", "1")] == 6
    assert seen[("shardctl_worker_dead_letters_total", "0")] == 1
    assert seen[("shardctl_worker_dead_letters_total", "1")] == 1
    assert seen[("shardctl_worker_shards_owned", "")] == 2
    # Every call is timed, failed ones too: per shard, the batch holding row 4 fails
    # twice, then row 4 alone fails twice.
    calls = seen[("shardctl_worker_handler_seconds_count", "")]
    assert calls >= 8, f"{calls} handler calls recorded"
    assert ("shardctl_worker_handler_seconds_sum", "") in seen
