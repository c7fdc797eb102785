"""A bootstrap never lets the checkpoint pass a transaction Kafka has not acknowledged."""

from __future__ import annotations

import asyncio
import logging
import threading
import zlib
from collections.abc import Callable
from typing import Any

import pytest

from cdc.bootstrap import submit_request
from cdc.options import CdcOptions
from cdc.producers import build_producer
from cdc.producers.base import Ack, Outgoing, Producer
from cdc.reader import Reader
from cdc.replication.position import BinlogPosition
from shardctl.core.config import Settings
from shardctl.core.etcd.client import EtcdClient
from shardctl.core.keyspace import Keyspace
from tests.integration.cdc_support import binlog_end, stored_checkpoint, wait_for

pytestmark = pytest.mark.integration


class WithholdingProducer(Producer):
    """A real producer whose acknowledgements of one table's messages are withheld,
    as if the broker had not confirmed them yet."""

    def __init__(self, inner: Producer, table: str) -> None:
        self.inner = inner
        self.table = table
        self.withheld: list[Outgoing] = []

    def send(self, message: Outgoing, on_ack: Ack) -> None:
        if message.table == self.table:
            self.withheld.append(message)
            self.inner.send(message, lambda: None)
        else:
            self.inner.send(message, on_ack)

    def poll(self, timeout: float = 0.0) -> None:
        self.inner.poll(timeout)

    def flush(self, timeout: float) -> None:
        self.inner.flush(timeout)

    def close(self) -> None:
        self.inner.close()


class LogLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _bootstrap_keys(settings: Settings, source: str) -> int:
    async def go() -> int:
        async with EtcdClient(settings.etcd) as client:
            found = await client.get_prefix(Keyspace.of(settings).cdc_bootstrap_prefix(source))
            return len(found.items)

    return asyncio.run(go())


def test_bootstrap_does_not_checkpoint_the_next_unacknowledged_transaction(
    stack: Any, settings: Settings, unique: str, mysql_db: str
) -> None:
    conn = stack.mysql_root(mysql_db)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE boot (id INT PRIMARY KEY)")
        cur.execute("INSERT INTO boot VALUES (1), (2), (3)")
        cur.execute("CREATE TABLE other (id INT PRIMARY KEY)")
        cur.execute("CREATE TABLE held (id INT PRIMARY KEY)")
    with stack.mysql_root() as root:
        start = binlog_end(root)
    options = CdcOptions(
        source="main",
        reader_id="r1",
        server_id=20_000 + zlib.crc32(unique.encode()) % 1_000_000,
        num_shards=2,
        kafka_topic=f"{unique}_%{{table}}",
        dead_letter_topic=f"{unique}_dlq",
        filter=f"exclude: *.*, include: {mysql_db}.*",
        start_position=start,
        # No heartbeat while the test runs: the reader acts only on transactions, so
        # the armed bootstrap is due exactly before the next transaction.
        heartbeat_s=30,
        checkpoint_interval_s=0.05,
        bootstrap_poll_s=0.05,
        lease_ttl_s=5,
    )
    producers: list[WithholdingProducer] = []

    def factory(num_shards: int) -> Producer:
        producer = WithholdingProducer(build_producer(settings, options, num_shards), "held")
        producers.append(producer)
        return producer

    reader = Reader(settings, options, producer_factory=factory)
    failure: list[BaseException] = []

    def run(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:
            failure.append(exc)

    lines = LogLines()
    bootstrap_log = logging.getLogger("cdc.bootstrap")
    level = bootstrap_log.level
    bootstrap_log.setLevel(logging.INFO)
    bootstrap_log.addHandler(lines)
    thread = threading.Thread(target=run, args=(reader.run,), daemon=True)
    thread.start()
    try:
        wait_for("initial checkpoint", lambda: stored_checkpoint(settings, "main"))
        asyncio.run(_submit(settings, mysql_db))
        with conn.cursor() as cur:
            cur.execute("INSERT INTO other VALUES (1)")  # the reader arms after this one
        wait_for("bootstrap armed", lambda: any("armed at snapshot" in x for x in lines.lines))
        with stack.mysql_root() as root:
            before_held = BinlogPosition.parse(binlog_end(root))
        with conn.cursor() as cur:
            cur.execute("INSERT INTO held VALUES (1)")  # its acknowledgement never comes
        wait_for("bootstrap published", lambda: _bootstrap_keys(settings, "main") == 0)
        wait_for("held row sent", lambda: producers and producers[0].withheld)
        reader.stop("test done")
        thread.join(60)
        assert not thread.is_alive()
        assert not failure, failure
        checkpoint = stored_checkpoint(settings, "main")
        assert checkpoint is not None
        assert checkpoint.position.sort_key() <= before_held.sort_key(), (
            f"checkpoint {checkpoint.describe()} passes the unacknowledged transaction "
            f"that starts at {before_held}"
        )
    finally:
        reader.stop("test over")
        thread.join(60)
        bootstrap_log.removeHandler(lines)
        bootstrap_log.setLevel(level)
        conn.close()


async def _submit(settings: Settings, database: str) -> None:
    async with EtcdClient(settings.etcd) as client:
        await submit_request(
            client, Keyspace.of(settings), "main", database, "boot", None, blocking=True
        )
