"""The lag gauges of a reader blocked on the broker: with Kafka paused (SIGSTOP),
the reader stops at `max_in_flight` unacknowledged messages while the server's
binlog moves on, and its lag in seconds and bytes keeps growing on /metrics. Once
Kafka runs again, everything is delivered and the in-flight gauge drops to 0."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shardctl.cli.dev import load_devstack
from tests.integration.cdc_support import (
    ReaderProcess,
    TopicReader,
    binlog_end,
    reader_env,
    stored_checkpoint,
    wait_for,
)

pytestmark = pytest.mark.integration

MAX_IN_FLIGHT = 5
ROWS = 40  # one row per transaction, far more than MAX_IN_FLIGHT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def scrape(port: int, source: str) -> dict[str, float]:
    """{sample name: value} of the reader's series for `source`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.labels.get("source") == source
    }


def scrape_if(
    port: int, condition: Callable[[dict[str, float]], bool], source: str = "main"
) -> dict[str, float] | None:
    """The reader's series when `condition` holds of them, else None."""
    found = scrape(port, source)
    return found if condition(found) else None


@contextlib.contextmanager
def kafka_paused() -> Iterator[None]:
    """SIGSTOP this stack's Kafka broker; SIGCONT it on the way out, whatever happened."""
    pid = load_devstack().Stack().pid("kafka")
    assert pid is not None, "the stack's kafka is not running"
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_lag_grows_while_the_broker_is_paused(
    stack: Any, settings: Any, unique: str, mysql_db: str, tmp_path: Path
) -> None:
    conn = stack.mysql_root(mysql_db)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE lag_t (id INT PRIMARY KEY, v INT)")
    with stack.mysql_root() as root:
        start = binlog_end(root)
    port = free_port()
    env = reader_env(
        stack,
        unique,
        "main",
        num_shards=1,
        kafka_topic=f"{unique}_%{{table}}",
        dead_letter_topic=f"{unique}_dlq",
        filter=f"exclude: *.*, include: {mysql_db}.*",
        start_position=start,
        max_in_flight=MAX_IN_FLIGHT,
        lag_interval_s=0.2,
    )
    reader = ReaderProcess(env, tmp_path, "r0", "--metrics-port", str(port))
    topic = TopicReader(stack.kafka_bootstrap, f"{unique}_lag_t", 1)
    try:
        wait_for("initial checkpoint", lambda: stored_checkpoint(settings, "main"))
        with conn.cursor() as cur:
            cur.execute("INSERT INTO lag_t VALUES (0, 0)")
        topic.read_until(lambda r: len(r) >= 1)
        wait_for("lag gauges", lambda: "shardctl_cdc_binlog_lag_seconds" in scrape(port, "main"))

        with kafka_paused():
            with conn.cursor() as cur:
                for row_id in range(1, ROWS + 1):
                    cur.execute(f"INSERT INTO lag_t VALUES ({row_id}, 0)")
            blocked = wait_for(
                "the reader to block on unacknowledged messages",
                lambda: (
                    (m := scrape(port, "main"))["shardctl_cdc_rows_total"] > MAX_IN_FLIGHT + 1 and m
                ),
            )
            earlier = blocked["shardctl_cdc_binlog_lag_seconds"]
            # The reader reads nothing new; the lag in seconds must still grow.
            wait_for(
                f"the lag in seconds to grow past {earlier} + 2 while blocked",
                lambda: scrape(port, "main")["shardctl_cdc_binlog_lag_seconds"] > earlier + 2,
            )
            now = scrape(port, "main")
            assert now["shardctl_cdc_binlog_lag_bytes"] > 0
            assert now["shardctl_cdc_in_flight_messages"] > MAX_IN_FLIGHT
            assert reader.proc.poll() is None, reader.stderr()

        records = topic.read_until(
            lambda r: {x.value["data"]["id"] for x in r} >= set(range(ROWS + 1)), timeout=120
        )
        assert {r.value["data"]["id"] for r in records} == set(range(ROWS + 1))
        done = wait_for(
            "every message acknowledged and the lag back to 0",
            lambda: (
                (m := scrape(port, "main"))["shardctl_cdc_in_flight_messages"] == 0
                and m["shardctl_cdc_binlog_lag_bytes"] == 0
                and m["shardctl_cdc_binlog_lag_seconds"] < now["shardctl_cdc_binlog_lag_seconds"]
                and m
            ),
            timeout=120,
        )
        assert done.get("shardctl_cdc_delivery_failures_total", 0) == 0
    finally:
        topic.close()
        conn.close()
        assert reader.terminate() == 0, reader.stderr()
