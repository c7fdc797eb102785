"""The SQL sinks over TLS, against a private MariaDB and PostgreSQL serving TLS with a
throwaway CA: the sink's connection is encrypted, a server certificate from another
CA is refused, and the client certificate is presented."""

from __future__ import annotations

import shutil
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pymysql
import pytest

from shardctl.cli.dev import load_devstack
from shardctl.core.config import ConfigError
from tests.conftest import StackHandle
from workers.handlers import HandlerContext
from workers.sinks.postgres import PostgresSink
from workers.sinks.sql import SqlSink

pytestmark = pytest.mark.integration

devstack = load_devstack()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class TlsStack:
    stack: Any  # devstack.Stack with tls
    certs: Any  # devstack.Certificates
    other_ca: Any  # devstack.Certificates of another CA


@pytest.fixture(scope="module")
def tls_stack(stack: StackHandle) -> Iterator[TlsStack]:
    # Under the shared stack's state folder, not /tmp: PostgreSQL runs as its own
    # system user and must reach its data folder.
    folder = stack._stack.state / "private" / f"sink-tls-{uuid.uuid4().hex[:8]}"
    certs = devstack.Certificates.generate(folder / "certs")
    other = devstack.Certificates.generate(folder / "other-ca")
    ports = devstack.Ports(**{name: _free_port() for name in vars(devstack.Ports())})
    private = devstack.Stack(state_dir=folder / "state", ports=ports, tls=certs)
    try:
        private.up(["mariadb", "postgres"], echo=lambda _m: None)
        yield TlsStack(private, certs, other)
    finally:
        private.down(echo=lambda _m: None)
        shutil.rmtree(folder, ignore_errors=True)


def _tls_env(monkeypatch: pytest.MonkeyPatch, section: str, ca: Any, certs: Any) -> None:
    prefix = f"SHARDCTL_SINK_{section.upper()}_TLS__"
    monkeypatch.setenv(prefix + "CA_FILE", str(ca))
    monkeypatch.setenv(prefix + "CERT_FILE", str(certs.client_cert))
    monkeypatch.setenv(prefix + "KEY_FILE", str(certs.client_key))


def _mariadb_sink(tls: TlsStack, monkeypatch: pytest.MonkeyPatch, ca: Any) -> SqlSink:
    monkeypatch.setenv("SHARDCTL_SINK_SQL_PORT", str(tls.stack.ports.mariadb))
    monkeypatch.setenv("SHARDCTL_SINK_SQL_USER", "root")
    monkeypatch.delenv("SHARDCTL_SINK_SQL_PASSWORD", raising=False)
    monkeypatch.delenv("SHARDCTL_SINK_SQL_PASSWORD_FILE", raising=False)
    _tls_env(monkeypatch, "sql", ca, tls.certs)
    return SqlSink(HandlerContext(options={"database": "mysql", "scope": "tls"}))


def test_the_mariadb_sink_connects_over_verified_tls(
    tls_stack: TlsStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = _mariadb_sink(tls_stack, monkeypatch, tls_stack.certs.ca)
    try:
        sink.on_assign(0, 1)
        with sink._conn(0).cursor() as cur:
            cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
            row = cur.fetchone()
        assert row is not None and row[1], "the sink's connection is not encrypted"
    finally:
        sink.on_close()
    wrong = _mariadb_sink(tls_stack, monkeypatch, tls_stack.other_ca.ca)
    with pytest.raises(pymysql.err.OperationalError, match="CERTIFICATE_VERIFY_FAILED"):
        wrong.on_assign(0, 2)


def _postgres_sink(tls: TlsStack, monkeypatch: pytest.MonkeyPatch, ca: Any) -> PostgresSink:
    for key, value in tls.stack.env().items():
        if key.startswith("SHARDCTL_SINK_POSTGRES_"):
            monkeypatch.setenv(key, value)
    monkeypatch.delenv("SHARDCTL_SINK_POSTGRES_PASSWORD", raising=False)
    _tls_env(monkeypatch, "postgres", ca, tls.certs)
    return PostgresSink(HandlerContext(options={"scope": "tls"}))


def test_the_postgres_sink_connects_over_verified_tls_with_its_client_certificate(
    tls_stack: TlsStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg

    sink = _postgres_sink(tls_stack, monkeypatch, tls_stack.certs.ca)
    try:
        sink.on_assign(0, 1)
        row = (
            sink._conn(0)
            .execute("SELECT ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetchone()
        )
        assert row == (True, "/CN=shardctl-client")
    finally:
        sink.on_close()
    wrong = _postgres_sink(tls_stack, monkeypatch, tls_stack.other_ca.ca)
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        wrong.on_assign(0, 2)


def test_a_client_certificate_without_a_ca_is_refused_naming_the_setting(
    tls_stack: TlsStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHARDCTL_SINK_POSTGRES_TLS__CERT_FILE", str(tls_stack.certs.client_cert))
    monkeypatch.setenv("SHARDCTL_SINK_POSTGRES_TLS__KEY_FILE", str(tls_stack.certs.client_key))
    monkeypatch.delenv("SHARDCTL_SINK_POSTGRES_TLS__CA_FILE", raising=False)
    with pytest.raises(ConfigError, match=r"sink\.postgres\.tls: .*ca_file is required"):
        PostgresSink(HandlerContext(options={}))
