"""A worker started while no Kafka broker answers waits for one instead of exiting
(the chaos run found a worker restarted during a Kafka restart exiting at its
dead-letter topic check). It says what it waits for, and registers and serves once
Kafka is back. While it waits, its health port answers: alive for longer than the
liveness window (a liveness probe must not restart it), and not ready, naming what it
waits for; and librdkafka's lines reach its log structured and rate-limited."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from shardctl.core.config import Settings
from shardctl.core.processes import ProcessGroup
from tests.conftest import StackHandle
from tests.integration.test_health import free_port, probe, ready_as
from tests.integration.workers_support import delete_cluster
from tests.polling import wait_for

pytestmark = pytest.mark.integration

WINDOW_S = 5  # the worker's --liveness-window (30 s by default)


@pytest.fixture
def procs(
    stack: StackHandle, settings: Settings, unique: str, tmp_path: Path
) -> Iterator[ProcessGroup]:
    running = ProcessGroup(tmp_path, {**os.environ, **stack.env(), "SHARDCTL_CLUSTER": unique})
    yield running
    running.stop_all(grace_s=0)
    asyncio.run(delete_cluster(settings))


def test_a_worker_started_while_kafka_is_down_waits_for_it(
    stack: StackHandle, procs: ProcessGroup, unique: str
) -> None:
    port = free_port()
    topic = f"{unique}_orders"
    stack.stop("kafka")
    try:
        procs.shardctl(
            "w1", "worker", "run", "--id", "w1", "--handler", "stdout", "--topic", topic,
            "--ttl", "3", "--metrics-port", str(port), "--liveness-window", str(WINDOW_S),
        )  # fmt: skip
        wait_for(
            "the worker to say it waits for Kafka",
            lambda: "unreachable while checking dead-letter topics" in procs.log("w1"),
            90,
        )
        waiting_since = time.monotonic()
        assert procs.alive("w1"), procs.tail("w1")
        ready = probe(port, "/readyz")
        assert ready is not None and ready[0] == 503, ready
        assert isinstance(ready[1], dict), ready
        assert any(
            p.startswith("waiting for Kafka at kafka.bootstrap_servers")
            for p in ready[1]["problems"]
        ), ready
        # Liveness holds for longer than its window while the worker waits: the
        # process's loop keeps ticking.
        wait_for(
            "the liveness window to pass while the worker waits",
            lambda: time.monotonic() - waiting_since > WINDOW_S + 2,
            WINDOW_S + 30,
        )
        alive = probe(port, "/healthz")
        assert alive is not None and alive[0] == 200, (alive, procs.tail("w1"))
        assert "Kafka" in str(probe(port, "/readyz")), procs.tail("w1")
        # librdkafka's own lines come through the structured log, rate-limited, not
        # printed raw to stderr many times a second.
        text = procs.log("w1")
        assert "|FAIL|rdkafka" not in text, procs.tail("w1")
        assert "kafka client worker dead-letter topic check:" in text, procs.tail("w1")
    finally:
        stack.start("kafka")
    wait_for("the worker to serve once Kafka is back", lambda: ready_as(port, "serving"), 120)
    assert "created dead-letter topics" in procs.log("w1")
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    wait_for(
        "the dead-letter topic in the broker's metadata",
        lambda: f"{topic}.dlq" in admin.list_topics(timeout=30).topics,
    )
