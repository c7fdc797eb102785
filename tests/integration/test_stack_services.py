"""Each service of the local stack is real: it does what the project relies on."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.request
from typing import Any

import nsq
import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.row_event import WriteRowsEvent

from tests.conftest import StackHandle

pytestmark = pytest.mark.integration


def _etcd(stack: StackHandle, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """One call to etcd's v3 JSON gateway (the same server the gRPC clients use)."""
    req = urllib.request.Request(
        f"http://{stack.etcd_endpoint}/v3/{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_etcd_lease_expiry_deletes_its_key(stack: StackHandle, unique: str) -> None:
    key = _b64(f"/shardctl-test/{unique}/leased")
    lease = _etcd(stack, "lease/grant", {"TTL": 2})
    _etcd(stack, "kv/put", {"key": key, "value": _b64("alive"), "lease": lease["ID"]})
    assert _etcd(stack, "kv/range", {"key": key}).get("count") == "1"

    deadline = time.monotonic() + 30
    while _etcd(stack, "kv/range", {"key": key}).get("count") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _etcd(stack, "kv/range", {"key": key}).get("count"), "leased key outlived its lease"
    ttl = _etcd(stack, "lease/timetolive", {"ID": lease["ID"]})
    assert int(ttl["TTL"]) == -1  # etcd's answer for a lease that no longer exists


def test_kafka_produce_and_consume_with_acks_all(stack: StackHandle, unique: str) -> None:
    topic = f"test-{unique}"
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic].result(30)

    producer = Producer(
        {"bootstrap.servers": stack.kafka_bootstrap, "acks": "all", "enable.idempotence": True}
    )
    delivered: list[tuple[int, int]] = []

    def on_delivery(err: KafkaError | None, msg: Any) -> None:
        assert err is None, f"delivery to {topic} failed: {err}"
        delivered.append((msg.partition(), msg.offset()))

    for i in range(5):
        producer.produce(
            topic,
            key=f"k{i}".encode(),
            value=f"v{i}".encode(),
            partition=2,
            on_delivery=on_delivery,
        )
    assert producer.flush(30) == 0
    assert delivered == [(2, i) for i in range(5)]

    consumer = Consumer(
        {
            "bootstrap.servers": stack.kafka_bootstrap,
            "group.id": unique,
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, 2, 0)])
    got: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(got) < 5 and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None:
            assert msg.error() is None, msg.error()
            got.append(msg.value())
    consumer.close()
    assert got == [f"v{i}".encode() for i in range(5)]


def test_nsq_publish_and_subscribe(stack: StackHandle, unique: str) -> None:
    topic, channel = f"test-{unique}", "workers"
    # The channel exists before publishing, so nsqd queues the messages for it.
    urllib.request.urlopen(
        urllib.request.Request(f"http://{stack.nsqd_http}/topic/create?topic={topic}", data=b"")
    )
    urllib.request.urlopen(
        urllib.request.Request(
            f"http://{stack.nsqd_http}/channel/create?topic={topic}&channel={channel}", data=b""
        )
    )
    for i in range(3):
        urllib.request.urlopen(
            urllib.request.Request(
                f"http://{stack.nsqd_http}/pub?topic={topic}", data=f"m{i}".encode()
            )
        )

    async def subscribe() -> list[bytes]:
        got: list[bytes] = []
        done = asyncio.Event()

        def handler(message: Any) -> bool:
            got.append(bytes(message.body))
            if len(got) == 3:
                done.set()
            return True

        reader = nsq.Reader(
            topic=topic,
            channel=channel,
            message_handler=handler,
            nsqd_tcp_addresses=[stack.nsqd_tcp],
            max_in_flight=10,
        )
        try:
            await asyncio.wait_for(done.wait(), 30)
        finally:
            reader.close()
        return got

    assert sorted(asyncio.run(subscribe())) == [b"m0", b"m1", b"m2"]


def test_mariadb_binlog_rows_have_names_blob_and_enum(
    stack: StackHandle, mysql_db: str, unique: str
) -> None:
    blob = bytes([0xDA, 0x00, 0xFF, 0x80, 0x41])  # not valid UTF-8 on purpose
    conn = stack.mysql_root(mysql_db)
    with conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE t (id INT PRIMARY KEY, name VARCHAR(20), payload BLOB,"
            " color ENUM('red','green','blue'))"
        )
        cur.execute("SHOW MASTER STATUS")
        log_file, log_pos = cur.fetchone()[:2]
        cur.execute("INSERT INTO t VALUES (1, 'ünïcode', %s, 'green')", (blob,))
    conn.close()

    env = stack.env()
    with open(env["SHARDCTL_MYSQL_PASSWORD_FILE"]) as fh:
        password = fh.read().strip()
    reader = BinLogStreamReader(
        connection_settings={
            "host": stack.mysql_host,
            "port": stack.mysql_port,
            "user": env["SHARDCTL_MYSQL_USER"],
            "password": password,
        },
        server_id=1000 + int(unique[1:7], 16) % 100000,
        # File/pos mode: with is_mariadb=True the library ignores log_file/log_pos.
        is_mariadb=False,
        log_file=log_file,
        log_pos=log_pos,
        resume_stream=True,
        blocking=False,
        only_events=[WriteRowsEvent],
        only_schemas=[mysql_db],
    )
    try:
        rows = [row["values"] for event in reader for row in event.rows]
    finally:
        reader.close()
    assert rows == [{"id": 1, "name": "ünïcode", "payload": blob, "color": "green"}]


def test_mariadb_runs_with_the_settings_cdc_needs(stack: StackHandle) -> None:
    conn = stack.mysql_root()
    with conn.cursor() as cur:
        cur.execute(
            "SELECT @@log_bin, @@binlog_format, @@binlog_row_image,"
            " @@binlog_row_metadata, @@gtid_strict_mode"
        )
        assert cur.fetchone() == (1, "ROW", "FULL", "FULL", 1)
        cur.execute(f"SHOW GRANTS FOR '{stack.env()['SHARDCTL_MYSQL_USER']}'@'127.0.0.1'")
        grants = " ".join(row[0] for row in cur.fetchall())
    conn.close()
    # The CDC user reads the binlog and the schema, and can change nothing.
    assert "REPLICATION SLAVE" in grants and "SELECT" in grants
    for write in ("INSERT", "UPDATE", "DELETE", "ALL PRIVILEGES", "SUPER"):
        assert write not in grants, grants
