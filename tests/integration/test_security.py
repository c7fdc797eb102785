"""Security settings against real servers: etcd with TLS and user/password auth,
MariaDB with TLS, and no secret in errors, logs or argv.

A private stack of this module (its own folder, free ports, certificates made here
with openssl) runs etcd with `--client-cert-auth` and auth enabled, and MariaDB with
TLS and a CDC user that `REQUIRE SSL`. The shared stack is never reconfigured; Kafka
is the shared one, with topics of this test's own.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql
import pytest
from pydantic import SecretStr

from shardctl.cli.dev import load_devstack
from shardctl.core.config import EtcdSettings, MySQLSettings, TLSSettings
from shardctl.core.etcd import EtcdAuthError, EtcdClient, EtcdError, EtcdUnavailable, Session
from tests.conftest import StackHandle
from tests.integration.cdc_support import ReaderProcess, TopicReader, binlog_end, reader_env

pytestmark = pytest.mark.integration
devstack = load_devstack()
SHARDCTL = str(Path(sys.executable).with_name("shardctl"))
USER = "shardctl"
PREFIX = "/secure/"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SecureStack:
    stack: Any  # devstack.Stack with tls
    certs: Any  # devstack.Certificates
    password: str
    folder: Path

    @property
    def etcd_endpoint(self) -> str:
        return f"127.0.0.1:{self.stack.ports.etcd}"

    def tls(self, with_client_cert: bool = True) -> TLSSettings:
        if not with_client_cert:
            return TLSSettings(ca_file=self.certs.ca)
        return TLSSettings(
            ca_file=self.certs.ca, cert_file=self.certs.client_cert, key_file=self.certs.client_key
        )

    def etcd(self, **changes: Any) -> EtcdSettings:
        values: dict[str, Any] = {
            "endpoints": self.etcd_endpoint,
            "prefix": PREFIX.rstrip("/"),
            "username": USER,
            "password": SecretStr(self.password),
            "tls": TLSSettings(
                ca_file=self.certs.ca,
                cert_file=self.certs.client_cert,
                key_file=self.certs.client_key,
            ),
            "timeout_s": 3.0,
        }
        values.update(changes)
        return EtcdSettings(**values)

    def etcd_env(self, password_file: Path) -> dict[str, str]:
        """The environment a shardctl process needs for this etcd; secrets by file."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDCTL_")}
        env.update(
            {
                "SHARDCTL_ETCD_ENDPOINTS": self.etcd_endpoint,
                "SHARDCTL_ETCD_PREFIX": PREFIX.rstrip("/"),
                "SHARDCTL_ETCD_USERNAME": USER,
                "SHARDCTL_ETCD_PASSWORD_FILE": str(password_file),
                "SHARDCTL_ETCD_TIMEOUT_S": "3",
                "SHARDCTL_ETCD_TLS__CA_FILE": str(self.certs.ca),
                "SHARDCTL_ETCD_TLS__CERT_FILE": str(self.certs.client_cert),
                "SHARDCTL_ETCD_TLS__KEY_FILE": str(self.certs.client_key),
            }
        )
        return env


@pytest.fixture(scope="module")
def secure(stack: StackHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureStack]:
    # `stack` first: the shared stack has installed the binaries.
    folder = tmp_path_factory.mktemp("secure")
    certs = devstack.Certificates.generate(folder / "certs")
    ports = devstack.Ports(**{name: _free_port() for name in vars(devstack.Ports())})
    private = devstack.Stack(state_dir=folder / "state", ports=ports, tls=certs)
    password = "etcd-" + os.urandom(12).hex()
    try:
        private.up(["etcd"], echo=lambda _m: None)
        private.etcd_enable_auth(USER, password, "root-" + os.urandom(12).hex(), PREFIX)
        yield SecureStack(private, certs, password, folder)
    finally:
        private.down(echo=lambda _m: None)


# -- etcd: TLS + auth ----------------------------------------------------------


def test_tls_and_password_put_get_and_a_session_lease(secure: SecureStack) -> None:
    settings = secure.etcd()

    async def main() -> None:
        async with EtcdClient(settings) as client:
            revision = await client.put(f"{PREFIX}a", b"1")
            got = await client.get(f"{PREFIX}a")
            assert got is not None and got.value == b"1" and got.mod_revision == revision
            # A session: its lease is kept alive by its own thread over its own TLS
            # connection, and a key bound to it vanishes when it is revoked.
            session = await Session.open(settings, ttl=3, name="secure")
            try:
                made = await client.create_if_absent(f"{PREFIX}owned", b"me", session.lease_id)
                assert made.created and made.kv.lease == session.lease_id
                assert await client.refresh_lease(session.lease_id) > 0
                assert session.is_valid()
            finally:
                await session.close()
            assert await client.get(f"{PREFIX}owned") is None
            assert await client.delete_prefix(PREFIX) >= 1

    asyncio.run(main())


def test_the_client_logs_in_again_after_an_etcd_restart(secure: SecureStack) -> None:
    # etcd's simple auth tokens do not survive a restart: the client must notice the
    # rejected token and authenticate again over a new TLS channel.
    async def main() -> None:
        async with EtcdClient(secure.etcd()) as client:
            await client.put(f"{PREFIX}before", b"1")
            await asyncio.to_thread(secure.stack.restart, "etcd", lambda _m: None)
            deadline = asyncio.get_running_loop().time() + 30
            while True:
                try:
                    await client.put(f"{PREFIX}after", b"2")
                    break
                except EtcdUnavailable:
                    if asyncio.get_running_loop().time() > deadline:
                        raise
                    await asyncio.sleep(0.2)
            got = await client.get(f"{PREFIX}before")
            assert got is not None and got.value == b"1"
            await client.delete_prefix(PREFIX)

    asyncio.run(main())


def test_auth_is_enforced_outside_the_granted_prefix(secure: SecureStack) -> None:
    async def main() -> None:
        async with EtcdClient(secure.etcd()) as client:
            with pytest.raises(EtcdError, match=r"permission denied") as err:
                await client.put("/elsewhere/x", b"1")
            assert "/elsewhere/x" in str(err.value)

    asyncio.run(main())


def test_wrong_password_names_the_settings_and_endpoint_not_the_secret(
    secure: SecureStack,
) -> None:
    wrong = "wrong-" + os.urandom(8).hex()

    async def main() -> None:
        with pytest.raises(EtcdAuthError) as err:
            async with EtcdClient(secure.etcd(password=SecretStr(wrong))):
                pass
        message = str(err.value)
        assert "etcd.username='shardctl'" in message
        assert "etcd.password" in message and secure.etcd_endpoint in message
        assert wrong not in message and secure.password not in message

    asyncio.run(main())


def test_shardctl_status_over_tls_and_with_a_wrong_password(
    secure: SecureStack, tmp_path: Path
) -> None:
    good = tmp_path / "etcd_password"
    good.write_text(secure.password + "\n")
    ok = subprocess.run(
        [SHARDCTL, "status", "--json", "--cluster", "sec"],
        env=secure.etcd_env(good),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert '"cluster": "sec"' in ok.stdout

    wrong_secret = "not-the-password-" + os.urandom(8).hex()
    bad = tmp_path / "wrong_password"
    bad.write_text(wrong_secret + "\n")
    env = secure.etcd_env(bad)
    failed = subprocess.run(
        [SHARDCTL, "status", "--cluster", "sec"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert failed.returncode == 1
    assert "etcd.username='shardctl'" in failed.stderr
    assert "etcd.password_file" in failed.stderr
    assert secure.etcd_endpoint in failed.stderr
    assert "Traceback" not in failed.stderr
    for output in (failed.stdout, failed.stderr):
        assert wrong_secret not in output
        assert secure.password not in output


def test_coordinator_with_a_wrong_password_stops_without_logging_the_secret(
    secure: SecureStack, tmp_path: Path
) -> None:
    wrong_secret = "not-the-password-" + os.urandom(8).hex()
    env = secure.etcd_env(tmp_path / "unused")
    del env["SHARDCTL_ETCD_PASSWORD_FILE"]
    env["SHARDCTL_ETCD_PASSWORD"] = wrong_secret  # from the environment this time
    proc = subprocess.run(
        [SHARDCTL, "coordinator", "run", "--cluster", "sec", "--log-json", "--log-level", "DEBUG"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "etcd.username='shardctl'" in proc.stderr
    assert "etcd.password" in proc.stderr
    for output in (proc.stdout, proc.stderr):
        assert wrong_secret not in output


def test_a_client_without_its_certificate_or_password_is_refused(secure: SecureStack) -> None:
    async def connect(settings: EtcdSettings) -> None:
        async with EtcdClient(settings) as client:
            await client.get(f"{PREFIX}x")

    # --client-cert-auth: the TLS handshake fails without a client certificate.
    with pytest.raises(EtcdUnavailable, match=r"etcd\.tls\.ca_file"):
        asyncio.run(connect(secure.etcd(tls=secure.tls(with_client_cert=False))))
    # A plaintext client on the TLS port gets nowhere either.
    with pytest.raises(EtcdUnavailable):
        asyncio.run(connect(secure.etcd(tls=TLSSettings())))
    # No password: the certificate's name is not a user, so nothing is permitted.
    with pytest.raises(EtcdError, match=r"permission denied|user name"):
        asyncio.run(connect(secure.etcd(username=None, password=None)))


def test_a_server_certificate_from_another_ca_is_refused(secure: SecureStack) -> None:
    other = devstack.Certificates.generate(secure.folder / "other-ca")
    settings = secure.etcd(
        tls=TLSSettings(
            ca_file=other.ca, cert_file=secure.certs.client_cert, key_file=secure.certs.client_key
        )
    )

    async def main() -> None:
        async with EtcdClient(settings) as client:
            await client.get(f"{PREFIX}x")

    with pytest.raises(EtcdUnavailable, match=r"etcd\.tls\.ca_file") as err:
        asyncio.run(main())
    assert secure.password not in str(err.value)


# -- MariaDB: TLS for the CDC connection ---------------------------------------


@pytest.fixture(scope="module")
def secure_mariadb(secure: SecureStack) -> Iterator[SecureStack]:
    secure.stack.up(["mariadb"], echo=lambda _m: None)
    with _root(secure) as conn, conn.cursor() as cur:
        cur.execute(f"ALTER USER '{devstack.CDC_USER}'@'127.0.0.1' REQUIRE SSL")
    yield secure
    secure.stack.stop("mariadb")


def _root(secure: SecureStack, database: str | None = None) -> Any:
    return pymysql.connect(
        host="127.0.0.1",
        port=secure.stack.ports.mariadb,
        user="root",
        password="",
        database=database,
        autocommit=True,
    )


def _mysql_env(secure: SecureStack) -> dict[str, str]:
    return {
        "SHARDCTL_MYSQL_HOST": "127.0.0.1",
        "SHARDCTL_MYSQL_PORT": str(secure.stack.ports.mariadb),
        "SHARDCTL_MYSQL_USER": devstack.CDC_USER,
        "SHARDCTL_MYSQL_PASSWORD_FILE": str(secure.stack.cdc_password_file),
        "SHARDCTL_MYSQL_TLS__CA_FILE": str(secure.certs.ca),
    }


def test_the_cdc_user_needs_tls_and_gets_it_from_the_settings(
    secure_mariadb: SecureStack,
) -> None:
    base = {
        "host": "127.0.0.1",
        "port": secure_mariadb.stack.ports.mariadb,
        "user": devstack.CDC_USER,
        "password_file": secure_mariadb.stack.cdc_password_file,
    }
    plain = MySQLSettings(**base)
    # The control: the user is refused without TLS (PyMySQL would otherwise try an
    # unverified TLS on its own, so turn that off).
    with pytest.raises(pymysql.err.OperationalError, match="Access denied"):
        pymysql.connect(**plain.connect_kwargs(), ssl_disabled=True).close()
    # A server certificate from another CA is refused: the settings verify it.
    other = devstack.Certificates.generate(secure_mariadb.folder / "mysql-other-ca")
    wrong_ca = MySQLSettings(**base, tls=TLSSettings(ca_file=other.ca))
    with pytest.raises(pymysql.err.OperationalError, match="CERTIFICATE_VERIFY_FAILED"):
        pymysql.connect(**wrong_ca.connect_kwargs()).close()
    tls = MySQLSettings(**base, tls=TLSSettings(ca_file=secure_mariadb.certs.ca))
    conn = pymysql.connect(**tls.connect_kwargs())
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
            row = cur.fetchone()
        assert row is not None and row[1], "the connection is not encrypted"
    finally:
        conn.close()


def test_cdc_run_streams_over_tls(
    stack: StackHandle, secure_mariadb: SecureStack, unique: str, tmp_path: Path
) -> None:
    with _root(secure_mariadb) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{unique}`")
        cur.execute(f"CREATE TABLE `{unique}`.orders (id INT PRIMARY KEY, note VARCHAR(20))")
        start = binlog_end(conn)
    env = reader_env(
        stack,
        unique,
        "secure",
        num_shards=2,
        kafka_topic=f"{unique}_%{{table}}",
        dead_letter_topic=f"{unique}_dlq",
        filter=f"exclude: *.*, include: {unique}.*",
        start_position=start,
    )
    env.update(_mysql_env(secure_mariadb))
    reader = ReaderProcess(env, tmp_path, "reader")
    topic = TopicReader(stack.kafka_bootstrap, f"{unique}_orders", 2)
    try:
        with _root(secure_mariadb, unique) as conn, conn.cursor() as cur:
            cur.execute("INSERT INTO orders VALUES (1, 'over tls'), (2, 'also')")
            cur.execute("UPDATE orders SET note = 'changed' WHERE id = 1")
        got = topic.read_until(lambda r: len(r) >= 3)
    finally:
        topic.close()
        assert reader.terminate() == 0, reader.stderr()
    assert sorted((r.value["type"], r.value["data"]["id"]) for r in got) == [
        ("insert", 1),
        ("insert", 2),
        ("update", 1),
    ]
    password = secure_mariadb.stack.cdc_password_file.read_text().strip()
    assert password not in reader.stderr()
