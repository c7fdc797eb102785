"""Maxwell's partition numbers on real MariaDB and Kafka (`kafka_partition_hash`).

The expected partition of each record is computed from the record itself with
Maxwell's rules (AbstractMaxwellPartitioner.getHashString, RowIdentity.toConcatString,
RowMap.buildPartitionKey; DDL by database) and the hashes of tests/maxwell_reference.py,
written from the documented algorithms, not with cdc.partitioner.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cdc_support import ReaderProcess, TopicReader, binlog_end, reader_env
from tests.maxwell_reference import maxwell_partition

pytestmark = pytest.mark.integration

# Not a power of two, so that the low bits alone do not decide.
SHARDS = 7


def _execute(conn: Any, *statements: str) -> None:
    with conn.cursor() as cur:
        for sql in statements:
            cur.execute(sql)


def _run(
    stack: Any,
    tmp_path: Path,
    unique: str,
    db: str,
    statements: list[str],
    expected: int,
    **cdc: Any,
) -> list[Any]:
    conn = stack.mysql_root(db)
    with stack.mysql_root() as root:
        start = binlog_end(root)
    topic = f"{unique}_{cdc['kafka_partition_hash']}"
    env = reader_env(
        stack,
        unique,
        f"src_{cdc['kafka_partition_hash']}",
        num_shards=SHARDS,
        kafka_topic=topic,
        dead_letter_topic=f"{topic}_dlq",
        filter=f"exclude: *.*, include: {db}.*",
        start_position=start,
        **cdc,
    )
    reader = ReaderProcess(env, tmp_path, f"reader_{cdc['kafka_partition_hash']}")
    try:
        _execute(conn, *statements)
        records = TopicReader(stack.kafka_bootstrap, topic, SHARDS).read_until(
            lambda r: len(r) >= expected
        )
    finally:
        assert reader.terminate() == 0, reader.stderr()
    assert len(records) == expected
    return records


def _text(value: Any) -> str:
    # Java's toString of what Maxwell holds: the test's values are ints, strings and
    # DECIMALs read back exactly as Decimal (whose str is BigDecimal's toString).
    return str(value)


def test_default_hash_by_primary_key_matches_maxwell(
    stack: Any, unique: str, mysql_db: str, tmp_path: Path
) -> None:
    conn = stack.mysql_root(mysql_db)
    _execute(
        conn,
        "CREATE TABLE items (id INT, code VARCHAR(20) CHARACTER SET utf8mb4,"
        " price DECIMAL(12,2), PRIMARY KEY (id, code))",
        "CREATE TABLE plain (n INT, note VARCHAR(10))",
    )
    rows = [(i, f"c{i}-{'äß€'[i % 3]}{'😀' if i % 5 == 0 else ''}") for i in range(1, 41)]
    statements = [
        "INSERT INTO items VALUES " + ",".join(f"({i},'{c}',{i}.25)" for i, c in rows),
        "UPDATE items SET price = 12.5 WHERE id <= 5",
        "INSERT INTO plain VALUES (1, 'a'), (2, 'b')",
    ]
    records = _run(
        stack,
        tmp_path,
        unique,
        mysql_db,
        statements,
        40 + 5 + 2,
        kafka_partition_hash="default",
        producer_partition_by="primary_key",
    )
    partitions = set()
    for record in records:
        doc = record.value
        if doc["table"] == "items":
            # RowIdentity.toConcatString: key values' toString, no separator.
            text = _text(doc["data"]["id"]) + doc["data"]["code"]
        else:
            # A table without a primary key: database + table.
            text = mysql_db + "plain"
        assert record.partition == maxwell_partition(text, SHARDS, "default"), doc
        partitions.add(record.partition)
    assert len(partitions) > 3, "rows spread over the partitions"


# Both read stages: the hash and the partition rules reach the second process too.
@pytest.mark.parametrize("pipeline", ["one-process", "two-process"])
def test_murmur3_by_column_with_fallback_and_ddl_by_database(
    stack: Any, unique: str, mysql_db: str, tmp_path: Path, pipeline: str
) -> None:
    conn = stack.mysql_root(mysql_db)
    _execute(
        conn,
        "CREATE TABLE orders (id INT PRIMARY KEY, customer VARCHAR(20), amount DECIMAL(10,2))",
    )
    statements = [
        "INSERT INTO orders VALUES "
        + ",".join(
            f"({i},{'NULL' if i % 4 == 0 else repr(f'cust{i % 9}')},"
            f"{'NULL' if i % 8 == 0 else f'{i}.50'})"
            for i in range(1, 33)
        ),
        "ALTER TABLE orders ADD COLUMN note TEXT",
    ]
    records = _run(
        stack,
        tmp_path,
        unique,
        mysql_db,
        statements,
        32 + 1,
        kafka_partition_hash="murmur3",
        producer_partition_by="column",
        producer_partition_columns='["customer", "amount"]',
        producer_partition_by_fallback="table",
        output_ddl="true",
        pipeline=pipeline,
    )
    ddl = [r for r in records if r.value["type"] == "table-alter"]
    assert len(ddl) == 1
    # Maxwell's DDL partitioner hashes the database.
    assert ddl[0].partition == maxwell_partition(mysql_db, SHARDS, "murmur3")
    fell_back = 0
    for record in records:
        # DECIMALs read exactly as published (`12.50`, not 12.5).
        doc = json.loads(record.raw, parse_float=Decimal)
        if doc["type"] != "insert":
            continue
        data = doc["data"]
        # RowMap.buildPartitionKey: the non-NULL values, concatenated; empty -> fallback.
        text = "".join(_text(data[c]) for c in ("customer", "amount") if data[c] is not None)
        if not text:
            text = "orders"
            fell_back += 1
        assert record.partition == maxwell_partition(text, SHARDS, "murmur3"), doc
    assert fell_back == 4
