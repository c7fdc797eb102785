"""The published JSON Schemas (docs/schemas/) against real output: a `shardctl cdc run`
publishes row and DDL messages and dead-letters a row too large for its topic; a
worker dead-letters events its handler refuses and a message that is not UTF-8.
Every message read from those topics is validated against its schema."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from jsonschema import Draft202012Validator

from shardctl.core.config import Settings
from tests.conftest import StackHandle
from tests.integration.cdc_support import (
    ReaderProcess,
    TopicReader,
    binlog_end,
    reader_env,
    stored_checkpoint,
    wait_for,
)
from tests.integration.workers_support import delete_cluster, delete_topics
from workers.events import Event

pytestmark = pytest.mark.integration

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
CLI = [sys.executable, "-m", "shardctl.cli.main"]
SHARDS = 2
BIG_TOPIC_LIMIT = 20000
ROWS = 20


def schema(name: str) -> Draft202012Validator:
    document = json.loads((SCHEMAS / f"{name}.json").read_text())
    Draft202012Validator.check_schema(document)
    return Draft202012Validator(document)


def refuse_every_fifth(event: Event) -> None:
    """The worker's handler in this test: ids divisible by 5 always fail."""
    if int(event.message["data"]["id"]) % 5 == 0:
        raise ValueError(f"row {event.message['data']['id']} refused by the test handler")


def invalid(validator: Draft202012Validator, document: Any) -> list[str]:
    return [error.message for error in validator.iter_errors(document)]


def test_schemas_reject_what_the_formats_do_not_allow() -> None:
    row = {
        "database": "shop", "table": "t", "type": "update", "ts": 1, "xid": 2, "xoffset": 0,
        "commit": True, "event_id": "0-1-3#0", "source": "main/1", "data": {"id": 1},
        "old": {"id": 2},
    }  # fmt: skip
    assert invalid(schema("row-message"), row) == []
    assert invalid(schema("row-message"), {k: v for k, v in row.items() if k != "source"})
    assert invalid(schema("row-message"), {k: v for k, v in row.items() if k != "old"})
    assert invalid(schema("row-message"), {**row, "type": "insert"})  # `old` on an insert
    assert invalid(schema("row-message"), {**row, "source": "main"})
    assert invalid(schema("ddl-message"), {**row, "type": "table-alter"})
    letter = {
        "error": "e", "error_type": "ValueError", "attempts": 5, "handler": "m:f", "shard": 0,
        "topic": "t", "position": 4, "event_id": None, "token": 9, "worker": "w",
        "failed_at": 1.5, "event": "x",
    }  # fmt: skip
    assert invalid(schema("worker-dead-letter"), letter) == []
    assert invalid(schema("worker-dead-letter"), {**letter, "event_base64": "eA=="})
    assert invalid(schema("reader-dead-letter"), letter)


@pytest.fixture
def names(stack: StackHandle, settings: Settings, unique: str) -> Iterator[dict[str, str]]:
    topics = {
        "items": f"{unique}_items",
        "big": f"{unique}_big",
        "raw": f"{unique}_raw",
        "ddl": f"{unique}_ddl",
        "dlq": f"{unique}_dlq",
    }
    yield topics
    asyncio.run(delete_cluster(settings))
    delete_topics(
        stack.kafka_bootstrap,
        [*topics.values(), f"{topics['items']}.dlq", f"{topics['raw']}.dlq"],
    )


def test_real_messages_and_dead_letters_match_the_published_schemas(
    stack: StackHandle,
    settings: Settings,
    unique: str,
    mysql_db: str,
    names: dict[str, str],
    tmp_path: Path,
) -> None:
    with stack.mysql_root() as root:
        start = binlog_end(root)
    env = reader_env(
        stack, unique, "main",
        kafka_topic=f"{unique}_%{{table}}", ddl_kafka_topic=names["ddl"],
        dead_letter_topic=names["dlq"], filter=f"exclude: *.*, include: {mysql_db}.*",
        start_position=start, output_ddl="true", output_binlog_position="true",
        output_row_query="true", output_gtid_position="true", output_server_id="true",
        output_thread_id="true", output_primary_keys="true", output_primary_key_columns="true",
    )  # fmt: skip
    init = subprocess.run(
        [*CLI, "cluster", "init", "--shards", str(SHARDS),
         "--topic", names["items"], "--topic", names["raw"]],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    admin.create_topics(
        [NewTopic(names["big"], SHARDS, 1, config={"max.message.bytes": str(BIG_TOPIC_LIMIT)})]
    )[names["big"]].result(30)

    reader = ReaderProcess(env, tmp_path, "reader")
    procs: list[subprocess.Popen[bytes]] = []
    # The reader makes its topics with one partition per shard; a worker makes a
    # missing dead-letter topic with one partition.
    readers = {
        name: TopicReader(stack.kafka_bootstrap, topic, partitions)
        for name, topic, partitions in [
            ("items", names["items"], SHARDS),
            ("ddl", names["ddl"], SHARDS),
            ("dlq", names["dlq"], SHARDS),
            ("items.dlq", f"{names['items']}.dlq", 1),
            ("raw.dlq", f"{names['raw']}.dlq", 1),
        ]
    }
    try:
        wait_for("the reader's first checkpoint", lambda: stored_checkpoint(settings, "main"))
        # DDL after the schema model's read carries table definitions.
        wait_for("the schema model", lambda: "schema model:" in reader.stderr(), timeout=60)
        conn = stack.mysql_root(mysql_db)
        with conn.cursor() as cur:
            cur.execute(
                "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(40), amount DECIMAL(10,2),"
                " doc JSON, created DATETIME(3), tags SET('a','b'), flag BIT(1),"
                " blob_ VARBINARY(8))"
            )
            cur.execute("CREATE TABLE big (id INT PRIMARY KEY, body LONGTEXT)")
            cur.execute("ALTER TABLE items ADD COLUMN note TEXT")
            for n in range(ROWS):
                cur.execute(
                    "INSERT INTO items VALUES (%s, %s, 10.50, '{\"k\": [1, 2]}',"
                    " '2026-12-01 10:00:00.123', 'a,b', b'1', x'00ff', NULL)",
                    (n, f"name {n}"),
                )
            cur.execute("UPDATE items SET name = 'changed' WHERE id = 1")
            cur.execute("UPDATE items SET id = 100 WHERE id = 2")  # split: delete + insert
            cur.execute("DELETE FROM items WHERE id = 3")
            cur.execute("INSERT INTO big VALUES (1, %s)", ("x" * 32000,))
        conn.commit()
        # Rows: ROWS inserts, one update, a delete and an insert for the key change,
        # one delete.
        expected_rows = ROWS + 4

        for args in (
            ["coordinator", "run", "--id", "c1", "--stabilization", "0.2"],
            ["worker", "run", "--id", "w1", "--ttl", "5",
             "--handler", "tests.integration.test_message_schema:refuse_every_fifth"],
        ):  # fmt: skip
            log = (tmp_path / f"{args[0]}.log").open("wb")
            procs.append(subprocess.Popen([*CLI, *args], env=env, stdout=log, stderr=log))
        not_utf8 = Producer({"bootstrap.servers": stack.kafka_bootstrap})
        not_utf8.produce(names["raw"], value=b"\xff\xfe not a message", partition=1)
        assert not_utf8.flush(30) == 0

        rows = readers["items"].read_until(lambda rs: len(rs) >= expected_rows, timeout=120)
        ddl = readers["ddl"].read_until(lambda rs: len(rs) >= 3)
        too_large = readers["dlq"].read_until(lambda rs: len(rs) >= 1)
        # Refused ids: 0, 5, 10, 15 (inserts) and 100 (the key change's insert).
        refused = readers["items.dlq"].read_until(lambda rs: len(rs) >= 5, timeout=120)
        undecodable = readers["raw.dlq"].read_until(lambda rs: len(rs) >= 1, timeout=120)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)
        assert reader.terminate() == 0, reader.stderr()
        for topic_reader in readers.values():
            topic_reader.close()

    checks = [
        ("row-message", rows, expected_rows),
        ("ddl-message", ddl, 3),
        ("reader-dead-letter", too_large, 1),
        ("worker-dead-letter", refused, 5),
        ("worker-dead-letter", undecodable, 1),
    ]
    for name, records, count in checks:
        validator = schema(name)
        assert len(records) == count, (name, [r.value for r in records])
        for record in records:
            assert invalid(validator, record.value) == [], (name, record.value)

    # The schemas saw the optional fields: row statements and table definitions.
    assert all("query" in r.value for r in rows)
    assert all("def" in r.value for r in ddl)
    assert sorted(r.value["type"] for r in rows).count("update") == 1
    assert {r.value["source"] for r in rows} == {rows[0].value["source"]}
    assert rows[0].value["source"].startswith("main/")
    # DDL messages are partitioned by table (crc32 of their key), so only one table's
    # are in order: the two tables' may come from two partitions in either order.
    assert sorted(r.value["type"] for r in ddl) == ["table-alter", "table-create", "table-create"]
    items_ddl = [r.value["type"] for r in ddl if r.value.get("table") == "items"]
    assert items_ddl == ["table-create", "table-alter"]
    assert too_large[0].value["destination"] == names["big"]
    assert sorted(r.value["event"] and json.loads(r.value["event"])["data"]["id"]
                  for r in refused) == [0, 5, 10, 15, 100]  # fmt: skip
    assert "event_base64" in undecodable[0].value and undecodable[0].value["event_id"] is None
