"""A worker started while no Kafka broker answers waits for one instead of exiting
(the chaos run found a worker restarted during a Kafka restart exiting at its
dead-letter topic check). It says what it waits for, and registers and serves once
Kafka is back."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from shardctl.core.config import Settings
from shardctl.core.processes import ProcessGroup
from tests.conftest import StackHandle
from tests.integration.test_health import free_port, ready_as
from tests.integration.workers_support import delete_cluster
from tests.polling import wait_for

pytestmark = pytest.mark.integration


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
            "--ttl", "3", "--metrics-port", str(port),
        )  # fmt: skip
        wait_for(
            "the worker to say it waits for Kafka",
            lambda: "unreachable while checking dead-letter topics" in procs.log("w1"),
            90,
        )
        assert procs.alive("w1"), procs.tail("w1")
    finally:
        stack.start("kafka")
    wait_for("the worker to serve once Kafka is back", lambda: ready_as(port, "serving"), 120)
    assert "created dead-letter topics" in procs.log("w1")
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    wait_for(
        "the dead-letter topic in the broker's metadata",
        lambda: f"{topic}.dlq" in admin.list_topics(timeout=30).topics,
    )
