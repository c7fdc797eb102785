"""Shared fixtures. Integration tests get the real local stack, started once per run.

Isolation: every test gets its own etcd cluster name (hence prefix), topic names and
database names through `unique`, `settings` and `mysql_db`; nothing is shared but the
servers themselves.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pymysql
import pytest
from hypothesis import HealthCheck, settings

from shardctl.cli.dev import load_devstack
from shardctl.core.config import Settings, load_settings

# No timed checks: hypothesis' per-example deadline and its too-slow health check fail
# a correct test on a busy machine. A test may still choose more or fewer examples.
settings.register_profile("shardctl", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("shardctl")


@dataclass
class StackHandle:
    """What tests know of the running stack: endpoints, clients, and service control."""

    _stack: Any

    @property
    def etcd_endpoint(self) -> str:
        return f"127.0.0.1:{self._stack.ports.etcd}"

    @property
    def kafka_bootstrap(self) -> str:
        return f"127.0.0.1:{self._stack.ports.kafka}"

    @property
    def mysql_host(self) -> str:
        return "127.0.0.1"

    @property
    def mysql_port(self) -> int:
        return int(self._stack.ports.mariadb)

    @property
    def nsqd_tcp(self) -> str:
        return f"127.0.0.1:{self._stack.ports.nsqd_tcp}"

    @property
    def nsqd_http(self) -> str:
        return f"127.0.0.1:{self._stack.ports.nsqd_http}"

    @property
    def lookupd_http(self) -> str:
        return f"127.0.0.1:{self._stack.ports.lookupd_http}"

    def env(self) -> dict[str, str]:
        """SHARDCTL_* variables for subprocesses (e.g. `shardctl worker run`)."""
        return dict(self._stack.env())

    def settings(self, cluster: str = "default") -> Settings:
        saved = {k: os.environ.get(k) for k in self.env()}
        os.environ.update(self.env())
        try:
            return load_settings(cluster=cluster)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def mysql_root(self, database: str | None = None) -> pymysql.connections.Connection[Any]:
        return pymysql.connect(
            host=self.mysql_host,
            port=self.mysql_port,
            user="root",
            password="",
            database=database,
            autocommit=True,
            charset="utf8mb4",
        )

    def restart(self, name: str) -> None:
        self._stack.restart(name, echo=lambda _msg: None)

    def stop(self, name: str) -> None:
        self._stack.stop(name)

    def start(self, name: str) -> None:
        self._stack.start(name, echo=lambda _msg: None)


@pytest.fixture(scope="session")
def stack() -> StackHandle:
    """The local stack, brought up once (a no-op when `make test` already did)."""
    devstack = load_devstack()
    real = devstack.Stack()
    real.up(echo=lambda _msg: None)
    return StackHandle(real)


@pytest.fixture
def unique() -> str:
    """A short token that no other test run uses: for prefixes, topics and databases."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def settings(stack: StackHandle, unique: str) -> Settings:
    """Settings aimed at the stack, in a cluster (etcd prefix) of this test's own."""
    return stack.settings(cluster=unique)


@pytest.fixture
def mysql_db(stack: StackHandle, unique: str) -> Iterator[str]:
    """A fresh database for this test, dropped afterwards."""
    conn = stack.mysql_root()
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{unique}`")
        yield unique
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{unique}`")
    finally:
        conn.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A skipped test is not a passing test: any skip fails the run."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if reporter:
            reporter.write_line(
                f"FAILED: {skipped} test(s) skipped; skips count as failures", red=True
            )
