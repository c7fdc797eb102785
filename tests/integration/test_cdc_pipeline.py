"""The read stage in a second process (`cdc.pipeline=two-process`) against
the same stage in the reader's own process, on real MariaDB and Kafka: the same binlog
range gives the same messages, byte for byte, in the same order on every shard."""

from __future__ import annotations

import asyncio
from pathlib import Path

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
    stored_checkpoint,
    wait_for,
)
from tests.integration.test_decoding_mariadb import COLUMNS_SQL, DELETE_SQL, ROWS, UPDATE_SQL
from tests.integration.workers_support import delete_cluster, delete_topics

pytestmark = pytest.mark.integration

SHARDS = 4
# More rows in one transaction than one hand-off chunk holds (CHUNK_MESSAGES).
BULK_ROWS = 2500


def _load(stack: StackHandle, db: str) -> tuple[str, str, int]:
    """Every supported column type, an update, a delete, a key change, a DDL, and one
    transaction of several chunks; returns the binlog range and the row message count."""
    with stack.mysql_root() as root:
        start = binlog_end(root)
    conn = stack.mysql_root(db)
    try:
        with conn.cursor() as cur:
            # Zero dates and the empty ENUM member need a permissive sql_mode.
            cur.execute("SET SESSION time_zone = '+00:00', SESSION sql_mode = ''")
            cur.execute(f"CREATE TABLE `{db}`.types ({COLUMNS_SQL}) ENGINE=InnoDB")
            for row in ROWS:
                names = list(row)
                cur.execute(
                    f"INSERT INTO `{db}`.types ({', '.join(names)}) "
                    f"VALUES ({', '.join(['%s'] * len(names))})",
                    [row[n][0] for n in names],
                )
            conn.commit()
            cur.execute(UPDATE_SQL.format(db=db))
            cur.execute(DELETE_SQL.format(db=db))
            conn.commit()
            cur.execute(
                f"CREATE TABLE `{db}`.bulk (Id INT PRIMARY KEY, Name VARCHAR(20), n BIGINT)"
            )
            cur.executemany(
                f"INSERT INTO `{db}`.bulk VALUES (%s, %s, %s)",
                [(i, f"row {i}", i * 7) for i in range(BULK_ROWS)],
            )
            cur.execute(f"UPDATE `{db}`.bulk SET Id = 100000 WHERE Id = 5")  # split: 2 messages
            cur.execute(f"ALTER TABLE `{db}`.bulk ADD COLUMN note TEXT")
            cur.execute(f"UPDATE `{db}`.bulk SET note = 'x' WHERE Id < 3")
            conn.commit()
        with stack.mysql_root() as root:
            end = binlog_end(root)
    finally:
        conn.close()
    messages = len(ROWS) + 2 + BULK_ROWS + 2 + 3
    return start, end, messages


def _publish(
    stack: StackHandle,
    settings: Settings,
    cluster: str,
    db: str,
    start: str,
    end: str,
    rows: int,
    pipeline: str,
    tmp_path: Path,
) -> tuple[list[Record], list[Record]]:
    """Row and DDL records that a reader with this pipeline publishes for the range."""
    topic = f"{cluster}_{pipeline.replace('-', '_')}"
    env = reader_env(
        stack,
        cluster,
        "main",
        pipeline=pipeline,
        num_shards=SHARDS,
        kafka_topic=f"{topic}_%{{table}}",
        ddl_kafka_topic=f"{topic}_ddl",
        dead_letter_topic=f"{topic}_dlq",
        output_ddl="true",
        filter=f"exclude: *.*, include: {db}.*",
        start_position=start,
    )
    own = settings.model_copy(update={"cluster": cluster})  # this reader's etcd keys
    reader = ReaderProcess(env, tmp_path, f"reader-{pipeline}")
    types = TopicReader(stack.kafka_bootstrap, f"{topic}_types", SHARDS)
    bulk = TopicReader(stack.kafka_bootstrap, f"{topic}_bulk", SHARDS)
    ddl = TopicReader(stack.kafka_bootstrap, f"{topic}_ddl", SHARDS)
    try:
        bulk.read_until(lambda r: len(r) >= BULK_ROWS + 5)
        got_types = types.read_until(lambda r: len(r) >= rows - BULK_ROWS - 5)
        got_ddl = ddl.read_until(lambda r: len(r) >= 3)
        end_file, end_pos = end.split(":")

        def at_end() -> bool:
            cp = stored_checkpoint(own, "main")
            return cp is not None and (cp.file, cp.pos) >= (end_file, int(end_pos))

        wait_for("the checkpoint at the end of the range", at_end)
        # Nothing more arrives once the checkpoint passed the range's end.
        got_rows = got_types + bulk.read_until(lambda r: True)
    finally:
        assert reader.terminate() == 0, reader.stderr()
        asyncio.run(delete_cluster(own))
        for topic_reader in (types, bulk, ddl):
            topic_reader.close()
        delete_topics(
            stack.kafka_bootstrap,
            [f"{topic}_types", f"{topic}_bulk", f"{topic}_ddl", f"{topic}_dlq"],
        )
    assert len(got_rows) == rows
    return got_rows, got_ddl


def _by_partition(records: list[Record]) -> dict[tuple[str, int], list[Record]]:
    """Records per (table, partition), in offset order."""
    out: dict[tuple[str, int], list[Record]] = {}
    for r in sorted(records, key=lambda r: r.offset):
        out.setdefault((str(r.value["table"]), r.partition), []).append(r)
    return out


def _bytes(records: list[Record]) -> dict[tuple[str, int], list[tuple[bytes, bytes]]]:
    return {where: [(r.key, r.raw) for r in rs] for where, rs in _by_partition(records).items()}


def _ddl_bytes(records: list[Record]) -> list[tuple[int, bytes, bytes]]:
    return [
        (r.partition, r.key, r.raw) for r in sorted(records, key=lambda r: (r.partition, r.offset))
    ]


def test_two_process_stage_publishes_what_the_one_process_stage_does(
    stack: StackHandle, settings: Settings, unique: str, mysql_db: str, tmp_path: Path
) -> None:
    start, end, rows = _load(stack, mysql_db)
    one_rows, one_ddl = _publish(
        stack, settings, f"{unique}_a", mysql_db, start, end, rows, "one-process", tmp_path
    )
    two_rows, two_ddl = _publish(
        stack, settings, f"{unique}_b", mysql_db, start, end, rows, "two-process", tmp_path
    )
    # Byte for byte, shard by shard, in the same order.
    assert _bytes(two_rows) == _bytes(one_rows)
    assert _ddl_bytes(two_ddl) == _ddl_bytes(one_ddl)
    # P4: within a shard, the changes are in commit order (their event ids grow).
    for records in _by_partition(two_rows).values():
        keys = [order_key(r.value["event_id"], r.value["source"]) for r in records]
        assert None not in keys and keys == sorted(keys)  # type: ignore[type-var]
        assert len(set(keys)) == len(keys)


def test_the_read_stage_process_ends_with_the_reader(
    stack: StackHandle, unique: str, mysql_db: str, tmp_path: Path
) -> None:
    with stack.mysql_root() as root:
        start = binlog_end(root)
    env = reader_env(
        stack,
        unique,
        "main",
        num_shards=SHARDS,
        kafka_topic=f"{unique}_%{{table}}",
        dead_letter_topic=f"{unique}_dlq",
        filter=f"exclude: *.*, include: {mysql_db}.*",
        start_position=start,
        pipeline="two-process",
    )
    reader = ReaderProcess(env, tmp_path, "reader")
    try:
        wait_for("the reader to lead", lambda: "leads source main" in reader.stderr())
        wait_for("the read stage process", lambda: _children(reader.proc.pid))
        children = _children(reader.proc.pid)
    finally:
        reader.kill9()
    wait_for("the read stage process to end", lambda: not any(_alive(c) for c in children))


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
