"""Operator commands on the real stack: `shardctl doctor` on a good and on broken
setups, `shardctl cdc status`, the coordinator's /metrics endpoint and
`shardctl status --watch`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shardctl.core.config import Settings
from tests.conftest import StackHandle
from tests.integration.cdc_support import ReaderProcess, reader_env, stored_checkpoint
from tests.integration.workers_support import create_topic, delete_cluster, delete_topics
from tests.polling import wait_for

pytestmark = pytest.mark.integration


def shardctl(
    env: dict[str, str], *args: str, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardctl.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def findings(result: subprocess.CompletedProcess[str]) -> dict[str, list[dict[str, Any]]]:
    by_check: dict[str, list[dict[str, Any]]] = {}
    for item in json.loads(result.stdout):
        by_check.setdefault(item["check"], []).append(item)
    return by_check


@pytest.fixture
def env(stack: StackHandle, settings: Settings, unique: str) -> Iterator[dict[str, str]]:
    yield {
        **os.environ,
        **stack.env(),
        "SHARDCTL_CLUSTER": unique,
        "SHARDCTL_CDC_SOURCE": unique,
        "SHARDCTL_CDC_KAFKA_TOPIC": f"{unique}-cdc",
    }
    asyncio.run(delete_cluster(settings))


@pytest.fixture
def topics(stack: StackHandle, unique: str) -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    delete_topics(stack.kafka_bootstrap, made)


# -- doctor ------------------------------------------------------------------------


def test_doctor_passes_a_good_setup(
    stack: StackHandle, env: dict[str, str], unique: str, topics: list[str]
) -> None:
    for topic in (f"{unique}-cdc", f"{unique}-extra"):
        create_topic(stack.kafka_bootstrap, topic, 4)
        topics.append(topic)
    assert shardctl(env, "shards", "set", "4").returncode == 0
    result = shardctl(env, "doctor", "--json", "--topic", f"{unique}-extra")
    by_check = findings(result)
    # Nothing runs here, so the checks of what runs fail (test_health_doctor.py runs it all).
    running = {"coordinator", "cdc reader", "workers", "shards"}
    assert result.returncode == 1, result.stdout + result.stderr
    assert {f["level"] for c, items in by_check.items() if c not in running for f in items} == {
        "ok"
    }
    assert {c for c, items in by_check.items() if items[0]["level"] == "problem"} == running
    assert {f["what"] for f in by_check["topics"]} == {
        f"topic {unique}-cdc has 4 partitions",
        f"topic {unique}-extra has 4 partitions",
    }
    assert [f["level"] for f in by_check["binlog settings"]] == ["ok"]
    assert [f["level"] for f in by_check["grants"]] == ["ok"]


def test_doctor_names_a_topic_with_the_wrong_partition_count(
    stack: StackHandle, env: dict[str, str], unique: str, topics: list[str]
) -> None:
    create_topic(stack.kafka_bootstrap, f"{unique}-cdc", 3)
    topics.append(f"{unique}-cdc")
    assert shardctl(env, "shards", "set", "4").returncode == 0
    result = shardctl(env, "doctor", "--json")
    assert result.returncode == 1
    (problem,) = [f for f in findings(result)["topics"] if f["level"] == "problem"]
    assert f"topic {unique}-cdc has 3 partitions but num_shards is 4" in problem["what"]
    assert "shardctl shards set 3" in problem["fix"]
    assert "--partitions 4" in problem["fix"]
    text = shardctl(env, "doctor")
    assert text.returncode == 1
    assert f"FAIL topics: topic {unique}-cdc has 3 partitions" in text.stdout
    assert "fix: kafka-topics --alter" in text.stdout


def test_doctor_reports_unreachable_etcd_and_a_missing_config(env: dict[str, str]) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    down = shardctl({**env, "SHARDCTL_ETCD_ENDPOINTS": f"127.0.0.1:{port}"}, "doctor", "--json")
    assert down.returncode == 1
    by_check = findings(down)
    (etcd,) = by_check["etcd"]
    assert etcd["level"] == "problem"
    assert f"127.0.0.1:{port} does not answer" in etcd["what"]
    assert "SHARDCTL_ETCD_ENDPOINTS" in etcd["fix"]
    assert [f["level"] for f in by_check["topics"]] == ["skipped"]

    no_config = findings(shardctl(env, "doctor", "--json"))
    (config,) = no_config["cluster config"]
    assert config["level"] == "problem"
    assert "shardctl cluster init --shards N" in config["fix"]


def test_doctor_names_the_missing_grants_and_never_the_password(
    stack: StackHandle, env: dict[str, str], unique: str, tmp_path: Path
) -> None:
    user, password = f"doc_{unique}", f"pw-{unique}-secret"
    root = stack.mysql_root()
    try:
        with root.cursor() as cur:
            cur.execute(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{password}'")
            cur.execute(f"GRANT REPLICATION SLAVE ON *.* TO '{user}'@'127.0.0.1'")
        secret = tmp_path / "password"
        secret.write_text(password)
        secret.chmod(0o600)
        limited = {**env, "SHARDCTL_MYSQL_USER": user, "SHARDCTL_MYSQL_PASSWORD_FILE": str(secret)}
        result = shardctl(limited, "doctor", "--json")
        text = shardctl(limited, "doctor")
    finally:
        with root.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS '{user}'@'127.0.0.1'")
        root.close()
    assert result.returncode == 1
    (grants,) = findings(result)["grants"]
    assert grants["level"] == "problem"
    assert grants["what"] == (
        f"{user} lacks REPLICATION CLIENT (MariaDB: BINLOG MONITOR), SELECT on *.*"
    )
    assert grants["fix"].startswith("GRANT SELECT, REPLICATION SLAVE, REPLICATION CLIENT ON *.*")
    for output in (result.stdout, result.stderr, text.stdout, text.stderr):
        assert password not in output


# -- cdc status --------------------------------------------------------------------


def test_cdc_status_shows_checkpoint_server_end_and_lag(
    stack: StackHandle, env: dict[str, str], unique: str, mysql_db: str
) -> None:
    empty = json.loads(shardctl(env, "cdc", "status", "--json").stdout)
    assert empty["checkpoint"] is None and empty["leader"] is None and empty["lag_bytes"] is None

    reset = shardctl(env, "cdc", "checkpoint", "reset", "--to", "current")
    assert reset.returncode == 0, reset.stderr
    stored = json.loads(shardctl(env, "cdc", "checkpoint", "show").stdout)
    conn = stack.mysql_root(mysql_db)
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(200))")
            cur.executemany("INSERT INTO t VALUES (%s, %s)", [(i, "x" * 200) for i in range(50)])
    finally:
        conn.close()
    result = shardctl(env, "cdc", "status", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["source"] == unique
    assert data["checkpoint"] == stored
    # 50 rows of 200 bytes each were written after the checkpoint (others write too).
    assert data["lag_bytes"] > 50 * 200
    assert (
        isinstance(data["lag_seconds"], int | float) and data["lag_seconds"] == data["lag_seconds"]
    )
    assert data["checkpoint_purged"] is False
    text = shardctl(env, "cdc", "status")
    assert f"checkpoint   {stored['file']}:{stored['pos']}" in text.stdout
    assert "bytes" in text.stdout


def test_cdc_status_says_when_the_checkpoint_file_is_gone(env: dict[str, str], unique: str) -> None:
    gone = shardctl(env, "cdc", "checkpoint", "reset", "--to", "binlog-gone.000001:4")
    assert gone.returncode == 0, gone.stderr
    data = json.loads(shardctl(env, "cdc", "status", "--json").stdout)
    assert data["checkpoint_purged"] is True and data["lag_bytes"] is None
    text = shardctl(env, "cdc", "status").stdout
    assert "lag          unknown: the server no longer has binlog-gone.000001" in text


# -- coordinator metrics and status --watch -------------------------------------------


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("shardctl_coordinator_"):
                values[sample.name] = sample.value
    return values


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_coordinator_metrics_and_live_status(env: dict[str, str], unique: str) -> None:
    assert shardctl(env, "shards", "set", "4").returncode == 0
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> None:
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "shardctl.cli.main", *args],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

    try:
        start(
            "coordinator",
            "run",
            "--id",
            "c1",
            "--stabilization",
            "0.2",
            "--metrics-port",
            str(port),
        )
        start("worker", "run", "--handler", "noop", "--id", "w1")

        def owned() -> dict[str, int]:
            data = json.loads(shardctl(env, "status", "--json").stdout)
            return {w["id"]: len(w["owned"]) for w in data["workers"]}

        wait_for("w1 owns all 4 shards", lambda: owned() == {"w1": 4}, timeout=60)
        values = scrape(port)
        assert values["shardctl_coordinator_leader"] == 1
        generation = values["shardctl_coordinator_generation"]
        assert generation >= 1
        assert values["shardctl_coordinator_rebalances_total"] == generation
        assert values["shardctl_coordinator_moves_total"] == 0  # first owners are not moves

        start("worker", "run", "--handler", "noop", "--id", "w2")
        wait_for("2 shards each", lambda: owned() == {"w1": 2, "w2": 2}, timeout=60)
        values = scrape(port)
        assert values["shardctl_coordinator_moves_total"] == 2  # 4 shards: 2 go to w2
        assert values["shardctl_coordinator_generation"] == generation + 1
        assert values["shardctl_coordinator_rebalances_total"] == generation + 1

        watch = subprocess.Popen(
            [sys.executable, "-m", "shardctl.cli.main", "status", "--watch", "--interval", "0.5"],
            env={**env, "COLUMNS": "120"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            out, err = watch.communicate(timeout=4)
        except subprocess.TimeoutExpired:
            watch.send_signal(signal.SIGINT)
            out, err = watch.communicate(timeout=30)
        assert watch.returncode == 0, err
        assert f"shardctl status --watch ({unique})" in out
        assert "c1" in out and "w1" in out and "w2" in out
        assert "rebalances seen" in out
    finally:
        # Workers first, so the coordinator is still there to finish their drain.
        for group in (procs[1:], procs[:1]):
            for proc in group:
                proc.send_signal(signal.SIGINT)
            for proc in group:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)


# -- CDC metrics ---------------------------------------------------------------------


def scrape_cdc(port: int, source: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("source") == source:
                values[sample.name] = sample.value
    return values


def test_cdc_reader_serves_lag_bytes_and_publish_age(
    stack: StackHandle,
    settings: Settings,
    unique: str,
    mysql_db: str,
    topics: list[str],
    tmp_path: Path,
) -> None:
    topic = f"{unique}-metrics"
    topics.append(topic)
    env = reader_env(
        stack,
        unique,
        "metrics",
        kafka_topic=topic,
        num_shards=2,
        filter=f"exclude: *.*, include: {mysql_db}.*",
    )
    port = free_port()
    reader = ReaderProcess(env, tmp_path, "reader", "--metrics-port", str(port))
    try:
        wait_for("the reader's checkpoint", lambda: stored_checkpoint(settings, "metrics"), 60)
        conn = stack.mysql_root(mysql_db)
        try:
            with conn.cursor() as cur:
                cur.execute("CREATE TABLE t (id INT PRIMARY KEY, v TEXT)")
                for i in range(20):
                    cur.execute("INSERT INTO t VALUES (%s, 'x')", (i,))
        finally:
            conn.close()

        def published() -> dict[str, float] | None:
            values = scrape_cdc(port, "metrics")
            done = values.get("shardctl_cdc_rows_total", 0) >= 20
            # one observation per transaction, when its last message is acknowledged
            done = done and values.get("shardctl_cdc_publish_age_seconds_count", 0) >= 20
            probed = "shardctl_cdc_binlog_lag_bytes" in values
            return values if done and probed else None

        values = wait_for("20 acknowledged rows and a lag probe", published, timeout=60)
        assert values["shardctl_cdc_leader"] == 1
        # Every series the dashboard reads is exported, as a number (NaN != NaN).
        for name in (
            "shardctl_cdc_publish_age_seconds_sum",
            "shardctl_cdc_binlog_lag_bytes",
            "shardctl_cdc_binlog_lag_seconds",
        ):
            assert values[name] == values[name], f"{name} is NaN"
    finally:
        assert reader.terminate() == 0, reader.stderr()
