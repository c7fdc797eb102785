"""Maxwell's message form on real MariaDB and Kafka. The expected messages are built
from Maxwell's own rules, each named where it is used:

- keys: `RowIdentity` in `kafka_key_format=hash` form, primary-key column names
  lowercased (`pk.userid` for a column `UserId`); `primary_key_columns` keeps the
  table's case;
- commit information: `RowMap.toJSON` with the code defaults of `MaxwellConfig`
  (`output_commit_info` and `output_xoffset` true): `xid` on every row, `xoffset`
  on every row but the transaction's last, `"commit":true` on the last row only;
  `output_commit_info=false` leaves out all three (`xoffset` depends on it).

shardctl's own options are checked too: `every_row` (the earlier form) and
`output_event_id=false`.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from shardctl.core.config import Settings
from shardctl.core.event_ids import order_key
from tests.conftest import StackHandle
from tests.integration.cdc_support import (
    ReaderProcess,
    Record,
    TopicReader,
    binlog_end,
    reader_env,
)
from tests.integration.workers_support import delete_cluster, delete_topics

pytestmark = pytest.mark.integration

SHARDS = 2
# (UserId, Region, Score) per transaction: three rows, then one.
TRANSACTIONS = [[(1, "eu", 10), (2, "us", 20), (3, "eu", 30)], [(4, "ap", 40)]]


def _load(stack: StackHandle, db: str) -> str:
    """The rows above; returns the binlog position before them."""
    with stack.mysql_root() as root:
        start = binlog_end(root)
    conn = stack.mysql_root(db)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "CREATE TABLE Users (UserId INT, Region VARCHAR(5), Score INT,"
                " PRIMARY KEY (UserId, Region))"
            )
            for rows in TRANSACTIONS:
                cur.executemany("INSERT INTO Users VALUES (%s, %s, %s)", rows)
                conn.commit()
    finally:
        conn.close()
    return start


def _read(
    stack: StackHandle,
    settings: Settings,
    cluster: str,
    db: str,
    start: str,
    tmp_path: Path,
    **options: Any,
) -> list[Record]:
    topic = f"{cluster}_users"
    env = reader_env(
        stack,
        cluster,
        "main",
        num_shards=SHARDS,
        kafka_topic=topic,
        dead_letter_topic=f"{cluster}_dlq",
        filter=f"exclude: *.*, include: {db}.*",
        start_position=start,
        output_primary_key_columns="true",
        **options,
    )
    reader = ReaderProcess(env, tmp_path, f"reader-{cluster}")
    users = TopicReader(stack.kafka_bootstrap, topic, SHARDS)
    count = sum(len(rows) for rows in TRANSACTIONS)
    try:
        records = users.read_until(lambda r: len(r) >= count)
    finally:
        assert reader.terminate() == 0, reader.stderr()
        asyncio.run(delete_cluster(settings.model_copy(update={"cluster": cluster})))
        users.close()
        delete_topics(stack.kafka_bootstrap, [topic, f"{cluster}_dlq"])
    assert len(records) == count
    return records


def _in_commit_order(records: list[Record]) -> list[Record]:
    return sorted(records, key=lambda r: order_key(r.value["event_id"]) or ("", ()))


def _expected_key(db: str, user_id: int, region: str) -> dict[str, Any]:
    # RowIdentity, hash form: database, table, then pk.<lowercased column> in key order.
    return {"database": db, "table": "Users", "pk.userid": user_id, "pk.region": region}


@pytest.mark.parametrize("pipeline", ["one-process", "two-process"])
def test_maxwell_form_by_default(
    stack: StackHandle,
    settings: Settings,
    unique: str,
    mysql_db: str,
    tmp_path: Path,
    pipeline: str,
) -> None:
    start = _load(stack, mysql_db)
    records = _in_commit_order(
        _read(stack, settings, unique, mysql_db, start, tmp_path, pipeline=pipeline)
    )
    flat = [
        (txn, index, row) for txn, rows in enumerate(TRANSACTIONS) for index, row in enumerate(rows)
    ]
    xids: dict[int, int] = {}
    for record, (txn, index, (user_id, region, score)) in zip(records, flat, strict=True):
        doc = record.value
        last = index == len(TRANSACTIONS[txn]) - 1
        assert json.loads(record.key) == _expected_key(mysql_db, user_id, region)
        assert record.key.startswith(
            f'{{"database":"{mysql_db}","table":"Users","pk.userid":'.encode()
        )
        xid = xids.setdefault(txn, doc["xid"])
        # RowMap.toJSON: xid on every row, xoffset on all but the last, commit on the last.
        expected: dict[str, Any] = {
            "database": mysql_db,
            "table": "Users",
            "type": "insert",
            "ts": doc["ts"],
            "xid": xid,
            **({"commit": True} if last else {"xoffset": index}),
            "event_id": doc["event_id"],
            "source": doc["source"],
            "primary_key_columns": ["UserId", "Region"],
            "data": {"UserId": user_id, "Region": region, "Score": score},
        }
        assert list(doc.items()) == list(expected.items())
        assert doc["event_id"].endswith(f"#{index}")
    assert len(set(xids.values())) == len(TRANSACTIONS)


def test_every_row_form_and_no_event_id(
    stack: StackHandle, settings: Settings, unique: str, mysql_db: str, tmp_path: Path
) -> None:
    start = _load(stack, mysql_db)
    every = _read(
        stack,
        settings,
        f"{unique}_e",
        mysql_db,
        start,
        tmp_path,
        output_commit_info="every_row",
        output_xoffset="every_row",
    )
    flat = [(txn, index) for txn, rows in enumerate(TRANSACTIONS) for index in range(len(rows))]
    for record, (txn, index) in zip(_in_commit_order(every), flat, strict=True):
        doc = record.value
        assert doc["xoffset"] == index
        assert doc["commit"] is (index == len(TRANSACTIONS[txn]) - 1)
        assert list(doc)[4:7] == ["xid", "xoffset", "commit"]
    bare = _read(
        stack,
        settings,
        f"{unique}_n",
        mysql_db,
        start,
        tmp_path,
        output_commit_info="false",
        output_event_id="false",
    )
    for record in bare:
        # Maxwell without commit info: no xid, xoffset or commit; and no shardctl ids.
        assert list(record.value) == [
            "database",
            "table",
            "type",
            "ts",
            "primary_key_columns",
            "data",
        ]
    # The keys, and so the shards, do not depend on the options.
    assert sorted((r.partition, r.key) for r in bare) == sorted((r.partition, r.key) for r in every)
