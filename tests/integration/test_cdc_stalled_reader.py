"""A reader that stops reading for longer than the server's net_write_timeout keeps its
replication connection.

While Kafka does not acknowledge, the reader stops reading the binlog (max_in_flight).
The server's binlog dump thread then blocks writing to the socket and, after
`net_write_timeout` (60 s by default), aborts the connection. The reader then reads a
large transaction again from its start, and a reader that stalls that long on every
pass never gets past it: under heavy load the chaos soak saw exactly that. The reader
sets its own session's net_write_timeout (600 s, like Connector/J's streaming
default), so a stall shorter than that costs no reconnect.

The test lowers the global net_write_timeout to 2 s, pauses Kafka (SIGSTOP) while a
transaction larger than the socket buffers waits to be read, and checks that the dump
thread stays blocked past the global limit without being aborted.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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

GLOBAL_NET_WRITE_TIMEOUT_S = 2
ROWS = 20_000  # about 20 MB of row events: far more than the socket buffers hold


@contextlib.contextmanager
def kafka_paused() -> Iterator[None]:
    pid = load_devstack().Stack().pid("kafka")
    assert pid is not None, "the stack's kafka is not running"
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@contextlib.contextmanager
def global_net_write_timeout(stack: Any, seconds: int) -> Iterator[None]:
    with stack.mysql_root() as root, root.cursor() as cur:
        cur.execute("SELECT @@GLOBAL.net_write_timeout")
        (before,) = cur.fetchone()
        cur.execute(f"SET GLOBAL net_write_timeout = {seconds}")
        try:
            yield
        finally:
            cur.execute(f"SET GLOBAL net_write_timeout = {int(before)}")


def dump_threads(stack: Any) -> list[tuple[int, str]]:
    """(seconds in state, state) of each binlog dump thread of the readers."""
    with stack.mysql_root() as root, root.cursor() as cur:
        cur.execute(
            "SELECT TIME, STATE FROM information_schema.PROCESSLIST "
            "WHERE COMMAND = 'Binlog Dump' AND USER = 'shardctl_cdc'"
        )
        return [(int(time), str(state or "")) for time, state in cur.fetchall()]


def test_a_stall_longer_than_the_servers_net_write_timeout_costs_no_reconnect(
    stack: Any, settings: Any, unique: str, mysql_db: str, tmp_path: Path
) -> None:
    conn = stack.mysql_root(mysql_db)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE stall_t (id INT PRIMARY KEY, body VARCHAR(1000))")
    with global_net_write_timeout(stack, GLOBAL_NET_WRITE_TIMEOUT_S):
        with stack.mysql_root() as root:
            start = binlog_end(root)
        env = reader_env(
            stack,
            unique,
            "main",
            num_shards=1,
            kafka_topic=f"{unique}_%{{table}}",
            dead_letter_topic=f"{unique}_dlq",
            filter=f"exclude: *.*, include: {mysql_db}.*",
            start_position=start,
            max_in_flight=5,
        )
        reader = ReaderProcess(env, tmp_path, "r0")
        topic = TopicReader(stack.kafka_bootstrap, f"{unique}_stall_t", 1)
        try:
            wait_for("initial checkpoint", lambda: stored_checkpoint(settings, "main"))
            with kafka_paused():
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO stall_t VALUES (%s, %s)",
                        [(i, "x" * 1000) for i in range(ROWS)],
                    )
                conn.commit()
                limit = 3 * GLOBAL_NET_WRITE_TIMEOUT_S
                seen_blocked = False

                def blocked_long_or_aborted() -> bool:
                    nonlocal seen_blocked
                    threads = dump_threads(stack)
                    writing = [t for t, state in threads if state == "Writing to net"]
                    seen_blocked = seen_blocked or bool(writing)
                    return any(t >= limit for t in writing) or (seen_blocked and not threads)

                wait_for(
                    f"the dump thread blocked writing for {limit}s, or aborted",
                    blocked_long_or_aborted,
                )
                aborted = not dump_threads(stack)
            records = topic.read_until(lambda r: len(r) >= ROWS, timeout=300)
            assert sorted(r.value["data"]["id"] for r in records) == list(range(ROWS))
            assert not aborted and "reconnecting at" not in reader.stderr(), (
                "the server aborted the stalled reader's connection: " + reader.stderr()[-600:]
            )
        finally:
            topic.close()
            assert reader.terminate() == 0, reader.stderr()[-800:]
