"""Another replica with our server_id (issue 17, server_id).

Two replicas with one server_id cut each other off: the server drops the older
connection each time the other reconnects. The reader refuses to start when a
registered replica (MySQL/MariaDB replicas and most binlog clients register;
our readers do not) has its `cdc.server_id`, and names the setting. Readers of
one source share the id on purpose (a new leader's connection cuts off a
deposed leader's): a deposed leader still connected does not stop the new one.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.event import HeartbeatLogEvent

from cdc.options import CdcOptions
from tests.integration.cdc_support import ReaderProcess, leader_of, reader_env, wait_for

pytestmark = pytest.mark.integration

MAXWELL_DEFAULT_SERVER_ID = 6379  # Maxwell's documented default `replica_server_id`


@pytest.fixture(autouse=True)
def cdc_user_may_list_replicas(stack: Any) -> None:
    """MariaDB lists replicas (SHOW SLAVE HOSTS) only to REPLICATION MASTER ADMIN."""
    conn = stack.mysql_root()
    try:
        with conn.cursor() as cur:
            cur.execute("GRANT REPLICATION MASTER ADMIN ON *.* TO 'shardctl_cdc'@'127.0.0.1'")
    finally:
        conn.close()


def _registered(stack: Any) -> set[tuple[int, str]]:
    conn = stack.mysql_root()
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW SLAVE HOSTS")
            return {(int(row[0]), str(row[1])) for row in cur.fetchall()}
    finally:
        conn.close()


def _dump_threads(stack: Any) -> int:
    conn = stack.mysql_root()
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                "WHERE COMMAND LIKE 'Binlog Dump%' AND USER = 'shardctl_cdc'"
            )
            return int(cur.fetchone()[0])
    finally:
        conn.close()


class OtherReplica:
    """A replica connection of the server, registered with `report_host`."""

    def __init__(self, stack: Any, server_id: int, report_host: str) -> None:
        self._stop = threading.Event()
        self.stream = BinLogStreamReader(
            connection_settings={
                "host": stack.mysql_host,
                "port": stack.mysql_port,
                "user": "root",
                "password": "",
            },
            server_id=server_id,
            report_slave=report_host,
            blocking=True,
            resume_stream=True,
            slave_heartbeat=0.5,
            only_events=[HeartbeatLogEvent],
        )
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for _ in self.stream:
            if self._stop.is_set():
                break

    def close(self) -> None:
        self._stop.set()
        self.thread.join(10)
        self.stream.close()


@pytest.fixture
def server_id(unique: str) -> Iterator[int]:
    yield 20_000 + int(unique[1:7], 16) % 1_000_000


def test_the_default_server_id_is_not_maxwells() -> None:
    assert CdcOptions().server_id != MAXWELL_DEFAULT_SERVER_ID


def test_a_foreign_replica_with_our_server_id_stops_the_reader(
    stack: Any, unique: str, server_id: int, tmp_path: Path
) -> None:
    other = OtherReplica(stack, server_id, "maxwell-host")
    try:
        wait_for(
            "the other replica to register",
            lambda: (server_id, "maxwell-host") in _registered(stack),
        )
        env = reader_env(
            stack, unique, "main", producer="stdout", num_shards=1, server_id=server_id
        )
        reader = ReaderProcess(env, tmp_path, "r1")
        assert reader.wait(60) == 2, reader.stderr()
        err = reader.stderr()
        assert "cdc.server_id" in err and f"server_id {server_id}" in err
        assert "'maxwell-host'" in err
        assert "Traceback" not in err
        # The reader refused before connecting: the other replica was not cut off.
        assert other.thread.is_alive()
        assert (server_id, "maxwell-host") in _registered(stack)
    finally:
        other.close()


def test_readers_of_one_source_share_the_server_id(
    stack: Any, settings: Any, unique: str, server_id: int, mysql_db: str, tmp_path: Path
) -> None:
    env = reader_env(stack, unique, "main", producer="stdout", num_shards=1, server_id=server_id)
    before = _dump_threads(stack)
    readers = {name: ReaderProcess(env, tmp_path, name) for name in ("ra", "rb")}
    try:
        first = wait_for("a leader", lambda: leader_of(settings, "main"))
        wait_for("the leader's replica connection", lambda: _dump_threads(stack) > before)
        # The leader stops answering but keeps its replica connection: deposed,
        # still registered with our server_id.
        readers[first].proc.send_signal(signal.SIGSTOP)
        try:
            second = wait_for(
                "the standby to lead",
                lambda: (who := leader_of(settings, "main")) not in (None, first) and who,
                timeout=60,
            )
            conn = stack.mysql_root(mysql_db)
            try:
                with conn.cursor() as cur:
                    cur.execute("CREATE TABLE shared (id INT PRIMARY KEY)")
                    cur.execute("INSERT INTO shared VALUES (424242)")
                conn.commit()
            finally:
                conn.close()
            out = tmp_path / f"{second}.out"
            wait_for("the new leader to publish the row", lambda: "424242" in out.read_text())
            assert readers[second].proc.poll() is None, readers[second].stderr()
            assert "cdc.server_id" not in readers[second].stderr()
        finally:
            readers[first].proc.send_signal(signal.SIGCONT)
    finally:
        for reader in readers.values():
            if reader.proc.poll() is None:
                reader.terminate()
