"""The local stack's own promises: idempotent `up`, `down` by pid file only, clear failures.

These run a private nsqlookupd/nsqd (quick to start) in a temporary state folder on
free ports, so they never touch the shared stack the other tests use.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shardctl.cli.dev import load_devstack
from tests.conftest import StackHandle

pytestmark = pytest.mark.integration
devstack = load_devstack()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def private_stack(tmp_path: Path, stack: StackHandle) -> Iterator[Any]:
    # `stack` first: the shared stack has installed the binaries into the cache.
    ports = devstack.Ports(**{name: _free_port() for name in vars(devstack.Ports())})
    private = devstack.Stack(state_dir=tmp_path / "state", ports=ports)
    yield private
    private.down(echo=lambda _m: None)


def test_second_up_changes_nothing(private_stack: Any) -> None:
    private_stack.up(["nsqlookupd"], echo=lambda _m: None)
    first = private_stack.pid("nsqlookupd")
    assert first is not None
    said: list[str] = []
    private_stack.up(["nsqlookupd"], echo=said.append)
    assert private_stack.pid("nsqlookupd") == first
    assert said == []


def test_down_stops_only_what_up_started(private_stack: Any, tmp_path: Path) -> None:
    # A process with the same program name, not started by the stack, must survive.
    binary = tmp_path / "nsqlookupd"
    shutil.copy(private_stack.nsq_bin / "nsqlookupd", binary)
    decoy = subprocess.Popen(
        [str(binary), "--tcp-address=127.0.0.1:0", "--http-address=127.0.0.1:0"],
        stderr=subprocess.DEVNULL,
    )
    try:
        private_stack.up(["nsqlookupd"], echo=lambda _m: None)
        ours = private_stack.pid("nsqlookupd")
        assert ours is not None and ours != decoy.pid
        private_stack.down(echo=lambda _m: None)
        assert private_stack.pid("nsqlookupd") is None
        assert decoy.poll() is None, "down killed a process it did not start"
    finally:
        decoy.kill()
        decoy.wait()


def test_stale_pid_file_is_ignored(private_stack: Any) -> None:
    pidfile = private_stack.pidfile("nsqlookupd")
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    # Our own pid: alive, but a python process, not nsqlookupd.
    import os

    pidfile.write_text(str(os.getpid()))
    assert private_stack.pid("nsqlookupd") is None
    private_stack.up(["nsqlookupd"], echo=lambda _m: None)
    assert private_stack.pid("nsqlookupd") not in (None, os.getpid())


def test_a_service_that_cannot_start_is_named_with_its_log(private_stack: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", private_stack.ports.lookupd_http))
        taken.listen()
        with pytest.raises(devstack.StackError) as err:
            private_stack.up(["nsqlookupd"], echo=lambda _m: None)
    message = str(err.value)
    assert message.startswith("nsqlookupd exited during start-up")
    assert "address already in use" in message  # the tail of the service's own log


def test_cli_env_prints_exports_for_every_service(stack: StackHandle) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "shardctl.cli.main", "dev", "env"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    exported = dict(line.removeprefix("export ").split("=", 1) for line in out.splitlines())
    assert exported["SHARDCTL_ETCD_ENDPOINTS"] == stack.etcd_endpoint
    assert exported["SHARDCTL_KAFKA_BOOTSTRAP_SERVERS"] == stack.kafka_bootstrap
    assert exported["SHARDCTL_MYSQL_PORT"] == str(stack.mysql_port)
    assert exported["SHARDCTL_NSQ_NSQD_TCP_ADDRESSES"] == stack.nsqd_tcp


def test_optional_services_start_only_when_named() -> None:
    ports = devstack.Ports(mariadb=40000)
    assert (ports.mariadb2, ports.mariadb_sink) == (40001, 40002)  # they move together
    stack = devstack.Stack(state_dir=Path("/nonexistent-never-created"), ports=ports)
    assert stack._names(None) == list(devstack.SERVICES)
    assert stack._names(["mariadb_sink", "etcd"]) == ["etcd", "mariadb_sink"]
    assert not set(devstack.OPTIONAL_SERVICES) & set(devstack.SERVICES)


def test_second_mariadb_is_a_binlog_source_like_the_first(private_stack: Any) -> None:
    private_stack.up(["mariadb2"], echo=lambda _m: None)
    assert private_stack.pid("mariadb2") is not None
    assert private_stack.pid("mariadb") is None  # only what was named
    names = [row[0] for row in private_stack.status()]
    assert "mariadb2" in names and "mariadb_sink" not in names
    import pymysql

    conn = pymysql.connect(
        host="127.0.0.1",
        port=private_stack.ports.mariadb2,
        user=devstack.CDC_USER,
        password=private_stack.cdc_password_file.read_text().strip(),
    )
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT @@server_id, @@gtid_domain_id, @@log_bin, @@binlog_format, "
                "@@binlog_row_image"
            )
            assert cur.fetchone() == (2, 0, 1, "ROW", "FULL")
    finally:
        conn.close()
