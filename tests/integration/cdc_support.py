"""Helpers of the CDC pipeline's integration tests: readers as subprocesses, a Kafka
reader of whole topics, a minimal NSQ subscriber, and a private MariaDB server for
tests that must change server-wide settings or purge binlogs."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pymysql
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from cdc.replication.position import Checkpoint
from shardctl.core.config import Settings
from shardctl.core.etcd.client import EtcdClient, EtcdUnavailable
from shardctl.core.keyspace import Keyspace
from tests.polling import wait_for as wait_for

SHARDCTL = str(Path(sys.executable).with_name("shardctl"))
CONSUME_BATCH = 1000  # messages per consumer poll


@dataclass
class Record:
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes
    value: dict[str, Any]
    raw: bytes


def binlog_end(conn: Any) -> str:
    with conn.cursor() as cur:
        cur.execute("SHOW MASTER STATUS")
        row = cur.fetchone()
    return f"{row[0]}:{row[1]}"


def reader_env(stack: Any, cluster: str, source: str, **cdc: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDCTL_")}
    env.update(stack.env())
    # `SHARDCTL_CDC_DECODER=python pytest ...` runs the readers on the Python decoder.
    if "SHARDCTL_CDC_DECODER" in os.environ:
        env["SHARDCTL_CDC_DECODER"] = os.environ["SHARDCTL_CDC_DECODER"]
    env["SHARDCTL_CLUSTER"] = cluster
    env["SHARDCTL_CDC_SOURCE"] = source
    defaults = {
        # Replicas with one server_id evict each other's connections on the server:
        # every test source gets its own (readers of one source share it).
        "server_id": 10_000 + zlib.crc32(f"{cluster}/{source}".encode()) % 2_000_000_000,
        "heartbeat_s": 0.5,
        "checkpoint_interval_s": 0.2,
        "lease_ttl_s": 3,
        "bootstrap_poll_s": 0.5,
    }
    for name, value in {**defaults, **cdc}.items():
        env[f"SHARDCTL_CDC_{name.upper()}"] = str(value)
    return env


class ReaderProcess:
    """`shardctl cdc run` in a subprocess; its output goes to files. Every reader a
    test starts is in `STARTED`: the end of its log joins the report of a test that
    fails (tests/integration/conftest.py), so a stalled reader is never a bare
    timeout."""

    STARTED: ClassVar[list[ReaderProcess]] = []

    def __init__(self, env: dict[str, str], workdir: Path, name: str, *args: str) -> None:
        self.name = name
        self.out = workdir / f"{name}.out"
        self.err = workdir / f"{name}.err"
        with self.out.open("ab") as out, self.err.open("ab") as err:
            self.proc = subprocess.Popen(
                [SHARDCTL, "cdc", "run", "--reader-id", name, *args],
                env=env,
                stdout=out,
                stderr=err,
            )
        ReaderProcess.STARTED.append(self)

    def kill9(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.stderr().splitlines()[-lines:])
        except OSError as exc:
            return f"(no log: {exc})"


# How long a test's read keeps asking an etcd it cannot reach.
ETCD_PATIENCE_S = 30.0


def etcd_get(settings: Settings, key: str) -> bytes | None:
    """The value at `key`, read on a new connection. An etcd that does not answer is
    asked again for up to ETCD_PATIENCE_S, as the processes under test do: on a loaded
    machine one connection attempt can time out (a hunt run saw "connection attempt
    timed out before receiving SETTINGS frame" while the reader under test, connected
    to the same etcd, went on)."""

    async def go() -> bytes | None:
        async with EtcdClient(settings.etcd) as client:
            kv = await client.get(key)
            return None if kv is None else kv.value

    deadline = time.monotonic() + ETCD_PATIENCE_S
    while True:
        try:
            return asyncio.run(go())
        except EtcdUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def stored_checkpoint(settings: Settings, source: str) -> Checkpoint | None:
    raw = etcd_get(settings, Keyspace.of(settings).cdc_checkpoint(source))
    return None if raw is None else Checkpoint.from_json(raw)


def leader_of(settings: Settings, source: str) -> str | None:
    raw = etcd_get(settings, Keyspace.of(settings).cdc_leader(source))
    return None if raw is None else raw.decode()


class TopicReader:
    """Reads partitions 0 to `partitions` - 1 of a topic from the beginning, cumulatively,
    once the topic has them."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.topic = topic
        self.records: list[Record] = []
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"test-{topic}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                # From the start if the broker ever says an offset is out of range
                # (the default, latest, would skip what is there; the error is kept).
                "auto.offset.reset": "earliest",
            }
        )
        self._partitions = partitions
        self._assigned = False
        self._not_assigned_why = "not looked up yet"
        self._errors: list[str] = []  # the consumer's error events, for a failure message

    def _assign_once_led(self) -> bool:
        """Assign the partitions once the topic has all of them, each with a leader.
        The reader under test usually creates the topic after this reader is made, and
        librdkafka does not fetch a partition assigned before it existed until a later
        metadata refresh (seen: no record for 120 s while the topic held them all)."""
        if self._assigned:
            return True
        try:
            metadata = self._consumer.list_topics(self.topic, timeout=5)
        except KafkaException as exc:
            self._not_assigned_why = f"no broker answered its metadata request: {exc}"
            return False  # read_until's deadline still runs
        found = metadata.topics.get(self.topic)
        if found is None or found.error is not None:
            self._not_assigned_why = "the topic does not exist"
            return False
        if len(found.partitions) < self._partitions:
            self._not_assigned_why = (
                f"the topic has {len(found.partitions)} partitions, this reader expects "
                f"{self._partitions}"
            )
            return False
        leaderless = sorted(p.id for p in found.partitions.values() if p.leader < 0)
        if leaderless:
            self._not_assigned_why = f"partitions {leaderless} have no leader"
            return False
        self._consumer.assign(
            [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in range(self._partitions)]
        )
        self._assigned = True
        return True

    def read_until(
        self, done: Callable[[list[Record]], bool], timeout: float = 120.0
    ) -> list[Record]:
        """Read until `done(records)`. Fails only when no record arrived for `timeout`
        seconds: a reader that is slow on a loaded machine but still publishing is
        waited for, and so is a reader process that is still starting."""
        deadline = time.monotonic() + timeout
        while not done(self.records):
            # `done` may scan every record: ask it again only once caught up.
            caught_up = False
            while not caught_up:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"{self.topic}: condition not met, and no new record for {timeout}s, "
                        f"with {len(self.records)} records; {self._where_it_stands()}"
                    )
                messages = self._consume()
                if any(msg.error() is None for msg in messages):
                    deadline = time.monotonic() + timeout
                caught_up = len(messages) < CONSUME_BATCH
        return self.records

    def _where_it_stands(self) -> str:
        """What was read of each partition against what the broker holds: tells a
        record never published from one published and not fetched."""
        if not self._assigned:
            return f"not read: {self._not_assigned_why}"
        read = Counter(r.partition for r in self.records)
        parts = []
        for p in range(self._partitions):
            try:
                low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(self.topic, p), timeout=5, cached=False
                )
                held = f"the broker holds offsets {low} to {high - 1}"
            except KafkaException as exc:
                held = f"watermarks unknown: {exc}"
            parts.append(f"partition {p}: read {read[p]}, {held}")
        errors = f"; consumer errors: {self._errors[-5:]}" if self._errors else ""
        return "; ".join(parts) + errors

    def _consume(self) -> list[Any]:
        """One poll: appends the records it got, and returns every message."""
        if not self._assign_once_led():
            time.sleep(0.2)  # the topic is not there yet: look again
            return []
        messages = self._consumer.consume(CONSUME_BATCH, timeout=0.5)
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    self._errors.append(f"partition {msg.partition()}: {err}")
                continue  # transient: the consumer retries by itself
            raw = msg.value()
            self.records.append(
                Record(
                    msg.partition(),
                    msg.offset(),
                    msg.timestamp()[1],
                    msg.key(),
                    json.loads(raw),
                    raw,
                )
            )
        return list(messages)

    def close(self) -> None:
        self._consumer.close()


def nsq_read(tcp_address: str, topic: str, expected: int, timeout: float = 30.0) -> list[bytes]:
    """Subscribe to `topic` on nsqd over its TCP protocol (V2) and return `expected` bodies."""
    host, _, port = tcp_address.rpartition(":")
    bodies: list[bytes] = []
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(b"  V2")
        sock.sendall(f"SUB {topic} test\n".encode())
        sock.sendall(b"RDY 1000\n")
        deadline = time.monotonic() + timeout
        buffer = b""

        def frame() -> tuple[int, bytes]:
            nonlocal buffer
            while True:
                if len(buffer) >= 4:
                    size = struct.unpack(">I", buffer[:4])[0]
                    if len(buffer) >= 4 + size:
                        kind = struct.unpack(">I", buffer[4:8])[0]
                        data = buffer[8 : 4 + size]
                        buffer = buffer[4 + size :]
                        return kind, data
                if time.monotonic() > deadline:
                    raise AssertionError(f"nsq {topic}: {len(bodies)} of {expected} messages")
                chunk = sock.recv(65536)
                if not chunk:
                    raise AssertionError(f"nsq {topic}: connection closed")
                buffer += chunk

        while len(bodies) < expected:
            kind, data = frame()
            if kind == 0 and data == b"_heartbeat_":
                sock.sendall(b"NOP\n")
            elif kind == 1:
                raise AssertionError(f"nsq {topic}: {data!r}")
            elif kind == 2:
                message_id = data[10:26]
                bodies.append(data[26:])
                sock.sendall(b"FIN " + message_id + b"\n")
    return bodies


def purge_binlogs_to(conn: Any, newest: str, gone: str) -> None:
    """PURGE BINARY LOGS TO `newest` until no older file is listed (`gone` among them):
    MariaDB keeps a file until its binlog checkpoint has passed it, so one PURGE may
    leave some. A file left between `gone` and `newest` would let a GTID reader find
    its position there and stream on, instead of meeting the purge."""

    def purged() -> bool:
        with conn.cursor() as cur:
            cur.execute(f"PURGE BINARY LOGS TO '{newest}'")
            cur.execute("SHOW BINARY LOGS")
            listed = [str(row[0]) for row in cur.fetchall()]
        assert gone <= newest, f"{gone} is not older than {newest}"
        return all(name >= newest for name in listed)

    wait_for(f"binlogs before {newest} (with {gone}) to be purged", purged)


class PrivateMariaDB:
    """A MariaDB server of a test's own, for server-wide settings and PURGE BINARY LOGS."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.data = workdir / "data"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        mariadbd = shutil.which("mariadbd", path="/usr/sbin:/usr/local/sbin:/sbin") or "mariadbd"
        subprocess.run(
            [
                "mariadb-install-db",
                "--no-defaults",
                f"--datadir={self.data}",
                f"--user={getpass.getuser()}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            check=True,
            capture_output=True,
        )
        self.proc = subprocess.Popen(
            [
                mariadbd,
                "--no-defaults",
                f"--datadir={self.data}",
                f"--socket={workdir / 'mysqld.sock'}",
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                f"--user={getpass.getuser()}",
                "--skip-name-resolve",
                f"--pid-file={workdir / 'mysqld.pid'}",
                "--server-id=7",
                f"--log-bin={self.data / 'binlog'}",
                "--binlog-format=ROW",
                "--binlog-row-image=FULL",
                "--binlog-row-metadata=FULL",
                "--innodb-buffer-pool-size=32M",
                "--character-set-server=utf8mb4",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(workdir / "mysqld.err").open("wb"),
        )
        try:
            wait_for("private MariaDB", self._up, timeout=60)
            with self.root() as conn, conn.cursor() as cur:
                cur.execute("CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY ''")
                cur.execute("GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION")
        except BaseException:
            self.stop()
            raise

    def _up(self) -> bool:
        try:
            self.root().close()
        except pymysql.MySQLError:
            return False
        return True

    def root(self) -> Any:
        return pymysql.connect(
            unix_socket=str(self.dir / "mysqld.sock"), user="root", password="", autocommit=True
        )

    def env(self) -> dict[str, str]:
        return {
            "SHARDCTL_MYSQL_HOST": "127.0.0.1",
            "SHARDCTL_MYSQL_PORT": str(self.port),
            "SHARDCTL_MYSQL_USER": "root",
            "SHARDCTL_MYSQL_PASSWORD": "",
        }

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@contextlib.contextmanager
def private_mariadb(workdir: Path) -> Iterator[PrivateMariaDB]:
    server = PrivateMariaDB(workdir)
    try:
        yield server
    finally:
        server.stop()
