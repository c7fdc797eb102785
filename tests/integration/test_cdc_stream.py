"""The reader against real MariaDB, Kafka, NSQ and etcd: what reaches the topics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shardctl.core.event_ids import order_key
from shardctl.core.hashing import shard_of
from tests.integration.cdc_support import (
    ReaderProcess,
    TopicReader,
    binlog_end,
    nsq_read,
    reader_env,
    stored_checkpoint,
    wait_for,
)

pytestmark = pytest.mark.integration

SHARDS = 4


def _execute(conn: Any, *statements: str) -> None:
    with conn.cursor() as cur:
        for sql in statements:
            cur.execute(sql)


def _start(stack: Any, tmp_path: Path, unique: str, db: str, **cdc: Any) -> ReaderProcess:
    with stack.mysql_root() as conn:
        start = binlog_end(conn)
    options = {
        "num_shards": SHARDS,
        "kafka_topic": f"{unique}_%{{table}}",
        "dead_letter_topic": f"{unique}_dlq",
        "filter": f"exclude: *.*, include: {db}.*",
        "start_position": start,
        **cdc,
    }
    env = reader_env(stack, unique, "main", **options)
    return ReaderProcess(env, tmp_path, "reader")


def test_row_changes_with_old_values_shards_and_transactions(
    stack: Any, settings: Any, unique: str, mysql_db: str, tmp_path: Path
) -> None:
    conn = stack.mysql_root(mysql_db)
    _execute(
        conn,
        "CREATE TABLE orders (id INT PRIMARY KEY, customer VARCHAR(20), amount DECIMAL(10,2),"
        " note TEXT)",
        "CREATE TABLE items (order_id INT, n INT, sku VARCHAR(10), PRIMARY KEY (order_id, n))",
    )
    reader = _start(stack, tmp_path, unique, mysql_db)
    try:
        _execute(
            conn,
            "INSERT INTO orders VALUES (1,'ann',10.50,'first'),(2,'bob',3.00,NULL)",
            "UPDATE orders SET amount=11.75 WHERE id=1",
            "DELETE FROM orders WHERE id=2",
            # One transaction over two tables, several rows each.
            "BEGIN",
            "INSERT INTO orders VALUES (3,'cy',1.00,'multi')",
            "INSERT INTO items VALUES (3,1,'a'),(3,2,'b')",
            "UPDATE orders SET note='multi-2' WHERE id=3",
            "COMMIT",
        )
        orders = TopicReader(stack.kafka_bootstrap, f"{unique}_orders", SHARDS)
        lines = TopicReader(stack.kafka_bootstrap, f"{unique}_items", SHARDS)
        got_orders = orders.read_until(lambda r: len(r) >= 6)
        got_lines = lines.read_until(lambda r: len(r) >= 2)
    finally:
        assert reader.terminate() == 0, reader.stderr()

    by_id = {r.value["event_id"]: r for r in got_orders + got_lines}
    assert len(by_id) == 8, "each row change is published exactly once in a clean run"
    for record in by_id.values():
        # partition = shard = crc32(key) % num_shards
        assert record.partition == shard_of(record.key, SHARDS)
        doc = record.value
        assert json.loads(record.key) == {
            "database": mysql_db,
            "table": doc["table"],
            **{
                f"pk.{k}": v
                for k, v in doc["data"].items()
                if k in (("id",) if doc["table"] == "orders" else ("order_id", "n"))
            },
        }

    ordered = sorted(by_id.values(), key=lambda r: order_key(r.value["event_id"]) or ("", ()))
    docs = [r.value for r in ordered]
    assert [(d["table"], d["type"]) for d in docs] == [
        ("orders", "insert"),
        ("orders", "insert"),
        ("orders", "update"),
        ("orders", "delete"),
        ("orders", "insert"),
        ("items", "insert"),
        ("items", "insert"),
        ("orders", "update"),
    ]
    assert docs[0]["data"] == {"id": 1, "customer": "ann", "amount": 10.5, "note": "first"}
    raw_update = next(r.raw for r in ordered if r.value["type"] == "update")
    assert b'"amount":11.75' in raw_update and b'"old":{"amount":10.50}' in raw_update
    assert docs[2]["old"] == {"amount": 10.5}
    assert docs[3]["data"]["id"] == 2 and "old" not in docs[3]
    # Maxwell's commit information (RowMap.toJSON, code defaults): xid on every row,
    # xoffset 0..n-2 on every row but the last, `commit:true` on the last row only.
    by_txn: dict[int, list[dict[str, Any]]] = {}
    for d in docs:
        by_txn.setdefault(d["xid"], []).append(d)
    assert [len(v) for v in by_txn.values()] == [2, 1, 1, 4]
    for rows in by_txn.values():
        assert [d.get("xoffset") for d in rows] == [*range(len(rows) - 1), None]
        assert [d.get("commit") for d in rows] == [None] * (len(rows) - 1) + [True]
    multi = by_txn[docs[-1]["xid"]]
    assert [(d["table"], d["type"]) for d in multi] == [
        ("orders", "insert"),
        ("items", "insert"),
        ("items", "insert"),
        ("orders", "update"),
    ]
    assert len({d["event_id"].split("#")[0] for d in multi}) == 1
    # Within one shard, Kafka holds the changes of a row in commit order.
    for reader_records in (got_orders,):
        per_partition: dict[int, list[int]] = {}
        for r in reader_records:
            per_partition.setdefault(r.partition, []).append(r.value["xid"])
        for xids in per_partition.values():
            assert xids == sorted(xids)
    checkpoint = stored_checkpoint(settings, "main")
    assert checkpoint is not None and checkpoint.event_id == docs[-1]["event_id"]
    orders.close()
    lines.close()


def test_filters_ddl_and_columns_after_alter(
    stack: Any, unique: str, mysql_db: str, tmp_path: Path
) -> None:
    conn = stack.mysql_root(mysql_db)
    _execute(
        conn,
        "CREATE TABLE kept (id INT PRIMARY KEY, status VARCHAR(10))",
        "CREATE TABLE skipped (id INT PRIMARY KEY)",
    )
    reader = _start(
        stack,
        tmp_path,
        unique,
        mysql_db,
        filter=f"exclude: *.*, include: {mysql_db}.*, exclude: {mysql_db}.skipped, "
        f"exclude: {mysql_db}.kept.status=void",
        output_ddl="true",
        ddl_kafka_topic=f"{unique}_ddl",
    )
    try:
        _execute(
            conn,
            "INSERT INTO kept VALUES (1,'ok'),(2,'void')",
            "INSERT INTO skipped VALUES (1)",
            "ALTER TABLE kept ADD COLUMN note VARCHAR(10) DEFAULT 'n', RENAME COLUMN status TO st",
            "INSERT INTO kept (id, st) VALUES (3,'new')",
        )
        kept = TopicReader(stack.kafka_bootstrap, f"{unique}_kept", SHARDS)
        ddl = TopicReader(stack.kafka_bootstrap, f"{unique}_ddl", SHARDS)
        # Rows 1 and 3 have their own shards: the first one read is not the first sent.
        rows = kept.read_until(lambda r: {1, 3} <= {x.value["data"]["id"] for x in r})
        ddls = ddl.read_until(lambda r: any(x.value["type"] == "table-alter" for x in r))
    finally:
        assert reader.terminate() == 0, reader.stderr()
    in_commit_order = sorted(rows, key=lambda x: order_key(x.value["event_id"]) or ("", ()))
    assert [x.value["data"] for x in in_commit_order] == [
        {"id": 1, "status": "ok"},
        {"id": 3, "st": "new", "note": "n"},  # names follow the ALTER at its position
    ]
    alter = next(x.value for x in ddls if x.value["type"] == "table-alter")
    assert alter["database"] == mysql_db and alter["table"] == "kept"
    # `position` only with output_binlog_position (off here), as Maxwell's DDLMap.
    assert "RENAME COLUMN" in alter["sql"] and "position" not in alter
    assert not any(x.value.get("table") == "skipped" for x in ddls)
    kept.close()
    ddl.close()


def test_nsq_publishes_one_topic_per_shard(
    stack: Any, unique: str, mysql_db: str, tmp_path: Path
) -> None:
    conn = stack.mysql_root(mysql_db)
    _execute(conn, "CREATE TABLE t (id INT PRIMARY KEY, v INT)")
    reader = _start(
        stack, tmp_path, unique, mysql_db, producer="nsq", nsq_topic=f"{unique}_%{{table}}"
    )
    try:
        _execute(conn, "INSERT INTO t VALUES " + ",".join(f"({i},{i})" for i in range(40)))
        expected: dict[int, int] = {}
        for i in range(40):
            key = json.dumps(
                {"database": mysql_db, "table": "t", "pk.id": i}, separators=(",", ":")
            ).encode()
            expected[shard_of(key, SHARDS)] = expected.get(shard_of(key, SHARDS), 0) + 1
        seen: set[int] = set()
        for shard, count in expected.items():
            bodies = nsq_read(stack.nsqd_tcp, f"{unique}_t.{shard}", count)
            for body in bodies:
                doc = json.loads(body)
                key = json.dumps(
                    {"database": mysql_db, "table": "t", "pk.id": doc["data"]["id"]},
                    separators=(",", ":"),
                ).encode()
                assert shard_of(key, SHARDS) == shard
                seen.add(doc["data"]["id"])
    finally:
        assert reader.terminate() == 0, reader.stderr()
    assert seen == set(range(40))


def test_record_too_large_goes_to_the_dead_letter_topic(
    stack: Any, settings: Any, unique: str, mysql_db: str, tmp_path: Path
) -> None:
    conn = stack.mysql_root(mysql_db)
    _execute(conn, "CREATE TABLE big (id INT PRIMARY KEY, body LONGTEXT)")
    reader = _start(
        stack, tmp_path, unique, mysql_db, kafka_options=json.dumps({"message.max.bytes": "20000"})
    )
    try:
        _execute(conn, "INSERT INTO big VALUES (1, REPEAT('x', 50000)), (2, 'small')")
        dlq = TopicReader(stack.kafka_bootstrap, f"{unique}_dlq", SHARDS)
        dead = dlq.read_until(lambda r: len(r) >= 1)
        main = TopicReader(stack.kafka_bootstrap, f"{unique}_big", SHARDS)
        rows = main.read_until(lambda r: len(r) >= 1)
        wait_for(
            "checkpoint past both rows",
            lambda: (
                (cp := stored_checkpoint(settings, "main")) is not None
                and cp.event_id is not None
                and cp.event_id.endswith("#1")
            ),
        )
    finally:
        assert reader.terminate() == 0, reader.stderr()
    letter = dead[0].value
    assert letter["table"] == "big" and letter["size"] > 50000
    assert json.loads(letter["key"]) == {"database": mysql_db, "table": "big", "pk.id": 1}
    assert letter["event_id"].endswith("#0") and letter["position"]
    assert "too large" in letter["error"].lower() or "size" in letter["error"].lower()
    assert dead[0].partition == shard_of(dead[0].key, SHARDS)
    assert [r.value["data"] for r in rows] == [{"id": 2, "body": "small"}]
    dlq.close()
    main.close()


def test_topic_with_other_partition_count_is_refused(
    stack: Any, unique: str, mysql_db: str, tmp_path: Path
) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    admin.create_topics([NewTopic(f"{unique}_t", 2, 1)])[f"{unique}_t"].result()
    conn = stack.mysql_root(mysql_db)
    _execute(conn, "CREATE TABLE t (id INT PRIMARY KEY)")
    reader = _start(stack, tmp_path, unique, mysql_db)
    _execute(conn, "INSERT INTO t VALUES (1)")
    assert reader.wait(60) == 2
    assert (
        f"cdc.num_shards: kafka topic {unique}_t has 2 partitions but num_shards is {SHARDS}"
    ) in reader.stderr()
