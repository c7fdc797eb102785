"""The local stack's optional PostgreSQL: started only when named, on 127.0.0.1 only,
not as root, healthy by a real query, and known to `shardctl dev status/env/logs`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import StackHandle
from tests.integration.postgres_support import pg_query, postgres_up

pytestmark = pytest.mark.integration


def _dev(*args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "shardctl.cli.main", "dev", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_postgres_runs_on_loopback_as_its_own_user_and_the_cli_knows_it(
    stack: StackHandle,
) -> None:
    args = postgres_up(stack)
    assert pg_query(args, "SHOW listen_addresses") == [("127.0.0.1",)]
    assert pg_query(args, "SHOW unix_socket_directories") == [("",)]
    pid = stack._stack.pid("postgres")
    assert pid is not None
    owner = Path(f"/proc/{pid}").stat().st_uid
    assert owner != 0 or os.geteuid() != 0, "PostgreSQL runs as root"

    status = _dev("status")
    assert any(
        line.startswith("postgres") and "healthy" in line and f":{args['port']}" in line
        for line in status.splitlines()
    ), status
    exported = dict(line.removeprefix("export ").split("=", 1) for line in _dev("env").splitlines())
    assert exported["SHARDCTL_SINK_POSTGRES_PORT"] == str(args["port"])
    assert (
        Path(exported["SHARDCTL_SINK_POSTGRES_PASSWORD_FILE"]).read_text().strip()
        == (args["password"])
    )
    # PostgreSQL's own log: its lines carry the server's "LOG:" level (on a stack that
    # has run for a while, "ready to accept connections" is no longer in the tail).
    tail = _dev("logs", "postgres", "--lines", "200")
    assert "LOG:  " in tail, tail
