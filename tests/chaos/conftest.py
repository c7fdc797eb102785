"""Fixtures of the chaos tests: the stack whose services the faults restart.

By default the chaos run uses the session `stack` (in CI nothing else runs
concurrently). With SHARDCTL_CHAOS_PRIVATE_STACK=1 it starts its own etcd, MariaDB
and Kafka on free ports in a temporary state folder, so restarting them disturbs
no one else, and stops them afterwards. Either way the run itself starts the optional
`mariadb2` and `mariadb_sink` services through the stack when its kinds need them.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from shardctl.cli.dev import load_devstack
from tests.conftest import StackHandle

PRIVATE_STACK_ENV = "SHARDCTL_CHAOS_PRIVATE_STACK"
CHAOS_SERVICES = ["etcd", "mariadb", "kafka"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def private_stack_wanted() -> bool:
    return os.environ.get(PRIVATE_STACK_ENV, "") not in ("", "0", "false", "no")


@pytest.fixture
def chaos_stack(
    stack: StackHandle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StackHandle]:
    if not private_stack_wanted():
        yield stack
        return
    devstack = load_devstack()
    ports = devstack.Ports(**{name: _free_port() for name in vars(devstack.Ports())})
    state: Path = tmp_path_factory.mktemp("chaos-stack")
    private = devstack.Stack(state_dir=state, ports=ports)
    private.up(CHAOS_SERVICES, echo=lambda _m: None)
    try:
        yield StackHandle(private)
    finally:
        private.down(echo=lambda _m: None)


@pytest.fixture
def chaos_db(chaos_stack: StackHandle, unique: str) -> Iterator[str]:
    """A fresh source database on the chaos stack, dropped afterwards."""
    conn = chaos_stack.mysql_root()
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{unique}`")
    finally:
        conn.close()
    yield unique
    conn = chaos_stack.mysql_root()
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{unique}`")
    finally:
        conn.close()
