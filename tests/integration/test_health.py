"""/healthz and /readyz of real processes on the local stack: readiness through a
leader kill, a worker holding its lease, a process that cannot reach etcd, and 404
for any other path."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shardctl.core.config import Settings
from shardctl.core.processes import ProcessGroup
from tests.conftest import StackHandle
from tests.integration.cdc_support import ReaderProcess, reader_env
from tests.integration.workers_support import delete_cluster
from tests.polling import wait_for

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def probe(port: int, path: str) -> tuple[int, dict[str, Any] | str] | None:
    """(status, JSON body or text), or None while nothing listens yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            status, raw = response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None
    try:
        return status, json.loads(raw)
    except json.JSONDecodeError:
        return status, raw


def ready_as(port: int, state: str) -> dict[str, Any] | None:
    found = probe(port, "/readyz")
    if found is None or found[0] != 200 or not isinstance(found[1], dict):
        return None
    return found[1] if found[1]["state"] == state else None


@pytest.fixture
def procs(
    stack: StackHandle, settings: Settings, unique: str, tmp_path: Path
) -> Iterator[ProcessGroup]:
    running = ProcessGroup(tmp_path, {**os.environ, **stack.env(), "SHARDCTL_CLUSTER": unique})
    yield running
    running.stop_all(grace_s=0)
    asyncio.run(delete_cluster(settings))


def test_readiness_follows_the_coordinator_leader_through_a_kill(procs: ProcessGroup) -> None:
    first, second = free_port(), free_port()
    common = ["coordinator", "run", "--ttl", "3", "--stabilization", "0.2"]
    procs.shardctl("c1", *common, "--id", "c1", "--metrics-port", str(first))
    wait_for("c1 ready as leader", lambda: ready_as(first, "leading"), 60)
    procs.shardctl("c2", *common, "--id", "c2", "--metrics-port", str(second))
    standby = wait_for("c2 ready as standby", lambda: ready_as(second, "standby"), 60)
    assert standby["role"] == "coordinator"
    alive = probe(second, "/healthz")
    assert alive is not None and alive[0] == 200

    procs.kill9("c1")
    leader = wait_for("c2 ready as leader after c1 died", lambda: ready_as(second, "leading"), 60)
    assert leader["ok"] is True
    alive = probe(second, "/healthz")
    assert alive is not None and alive[0] == 200


def test_other_paths_are_404_and_metrics_carry_the_build(procs: ProcessGroup) -> None:
    port = free_port()
    procs.shardctl("c1", "coordinator", "run", "--id", "c1", "--metrics-port", str(port))
    wait_for("c1 ready", lambda: ready_as(port, "leading"), 60)
    for path in ("/", "/health", "/metricsz", "/readyz/x"):
        found = probe(port, path)
        assert found is not None and found[0] == 404, (path, found)
    metrics = probe(port, "/metrics")
    assert metrics is not None and metrics[0] == 200
    assert 'shardctl_build_info{python="' in str(metrics[1])


def test_a_worker_is_ready_while_it_holds_its_lease(procs: ProcessGroup) -> None:
    port = free_port()
    procs.shardctl("w1", "worker", "run", "--handler", "noop", "--id", "w1", "--ttl", "3",
                "--metrics-port", str(port))  # fmt: skip
    serving = wait_for("w1 ready", lambda: ready_as(port, "serving"), 60)
    assert serving["role"] == "worker"


def test_without_etcd_a_process_is_alive_but_not_ready(procs: ProcessGroup) -> None:
    port = free_port()
    procs.shardctl("c1", "coordinator", "run", "--id", "c1", "--metrics-port", str(port),
                env={"SHARDCTL_ETCD_ENDPOINTS": "127.0.0.1:1"})  # fmt: skip
    alive = wait_for("c1 answering /healthz", lambda: probe(port, "/healthz"), 60)
    assert alive[0] == 200
    ready = probe(port, "/readyz")
    assert ready is not None and ready[0] == 503
    assert isinstance(ready[1], dict)
    assert ready[1]["ok"] is False and "no etcd lease yet" in ready[1]["problems"]


def test_reader_readiness_through_a_leader_kill(
    stack: StackHandle, settings: Settings, unique: str, mysql_db: str, tmp_path: Path
) -> None:
    """The CDC reader runs its main loop on a thread, not an event loop: it ticks
    health from the loop that reads the binlog or waits for leadership."""
    env = reader_env(
        stack, unique, "health", kafka_topic=f"{unique}-health", num_shards=2,
        producer="stdout", filter=f"exclude: *.*, include: {mysql_db}.*",
    )  # fmt: skip
    first, second = free_port(), free_port()
    r1 = ReaderProcess(env, tmp_path, "r1", "--metrics-port", str(first))
    r2: ReaderProcess | None = None
    try:
        leading = wait_for("r1 ready as leader", lambda: ready_as(first, "leading"), 60)
        assert leading["role"] == "cdc"
        r2 = ReaderProcess(env, tmp_path, "r2", "--metrics-port", str(second))
        wait_for("r2 ready as standby", lambda: ready_as(second, "standby"), 60)
        r1.kill9()
        wait_for("r2 ready as leader after r1 died", lambda: ready_as(second, "leading"), 60)
        alive = probe(second, "/healthz")
        assert alive is not None and alive[0] == 200
    finally:
        for reader in (r1, r2):
            if reader is not None and reader.proc.poll() is None:
                reader.kill9()
        asyncio.run(delete_cluster(settings))
