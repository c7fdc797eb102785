"""`cdc.snapshot_new_tables = true` against real MariaDB, etcd and Kafka: a table renamed
into the filter is snapshotted; tables created while streaming (CREATE TABLE ...
SELECT, with or without its own columns) reach the consumer as inserts, without a
snapshot; a filter changed between runs snapshots the tables it newly includes and
not those created meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cdc.snapshot.progress import Progress
from shardctl.core.config import Settings
from shardctl.core.etcd.client import EtcdClient
from shardctl.core.keyspace import Keyspace
from tests.integration.cdc_support import ReaderProcess, Record, etcd_get, reader_env, wait_for
from tests.integration.test_cdc_snapshot import (
    SHARDS,
    _applied,
    _execute,
    _fill,
    _marker_ids,
    _read_table,
    _start_reader,
    _truth,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def outside(stack: Any, mysql_db: str) -> Iterator[str]:
    """A second database, which the reader's filter excludes."""
    name = f"{mysql_db}_out"
    with stack.mysql_root() as conn:
        _execute(conn, f"CREATE DATABASE `{name}`")
    try:
        yield name
    finally:
        with stack.mysql_root() as conn:
            _execute(conn, f"DROP DATABASE IF EXISTS `{name}`")


def _snapshots(settings: Settings) -> dict[str, Progress]:
    """Every snapshot's progress, by request id."""
    prefix = Keyspace.of(settings).cdc_snapshot_prefix("main")

    async def go() -> dict[str, Progress]:
        async with EtcdClient(settings.etcd) as client:
            listing = await client.get_prefix(prefix)
        return {kv.key[len(prefix) :]: Progress.from_json(kv.value) for kv in listing.items}

    return asyncio.run(go())


def _done(settings: Settings, table: str) -> list[str] | None:
    """The ids of the finished snapshots of `table` (db.table), if there is one."""
    found = _snapshots(settings).items()
    return [i for i, p in found if p.table == table and p.state.value == "done"] or None


def _kinds(records: list[Record]) -> list[str]:
    return [r.value["type"] for r in records]


def _equal_to_source(stack: Any, unique: str, database: str, table: str) -> list[Record]:
    records = _read_table(stack, unique, database, table)
    assert _applied(records, _marker_ids(records)) == _truth(stack, database, table)
    return records


def test_renamed_into_the_filter_is_snapshotted_created_tables_stream(
    stack: Any, settings: Settings, unique: str, mysql_db: str, outside: str, tmp_path: Path
) -> None:
    out = stack.mysql_root(outside)
    _fill(out, "moved", 700)
    _fill(out, "altered", 300)
    _fill(out, "src", 250)
    _, reader = _start_reader(
        stack,
        settings,
        unique,
        mysql_db,
        tmp_path,
        snapshot_chunk_size=100,
        snapshot_new_tables="true",
    )
    try:
        _execute(
            out,
            f"RENAME TABLE `{outside}`.moved TO `{mysql_db}`.moved",
            f"UPDATE `{mysql_db}`.moved SET v = v + 1000 WHERE id % 7 = 0",
            f"ALTER TABLE `{outside}`.altered ADD COLUMN w INT NOT NULL DEFAULT 1,"
            f" RENAME TO `{mysql_db}`.altered",
            f"DELETE FROM `{mysql_db}`.altered WHERE id % 5 = 0",
            # Created while streaming: every row is in the binlog.
            f"CREATE TABLE `{mysql_db}`.copy AS SELECT * FROM `{outside}`.src",
            f"CREATE TABLE `{mysql_db}`.shaped (id INT PRIMARY KEY, v INT NOT NULL)"
            f" SELECT id, v FROM `{outside}`.src WHERE id <= 120",
            f"UPDATE `{mysql_db}`.copy SET v = v + 1 WHERE id % 3 = 0",
        )
        moved = wait_for("moved snapshotted", lambda: _done(settings, f"{mysql_db}.moved"))
        wait_for("altered snapshotted", lambda: _done(settings, f"{mysql_db}.altered"))
        records = {
            name: _equal_to_source(stack, unique, mysql_db, name)
            for name in ("moved", "altered", "copy", "shaped")
        }
    finally:
        assert reader.terminate() == 0, reader.stderr()

    assert len(moved) == 1 and moved[0].startswith(f"renamed-{mysql_db}.moved-")
    for name in ("moved", "altered"):
        kinds = _kinds(records[name])
        assert kinds.count("bootstrap-start") == kinds.count("bootstrap-complete") == 3
        assert kinds.count("bootstrap-insert") > 0
    for name in ("copy", "shaped"):
        assert not [k for k in _kinds(records[name]) if k.startswith("bootstrap")]
    snapshotted = {p.table for p in _snapshots(settings).values()}
    assert snapshotted == {f"{mysql_db}.moved", f"{mysql_db}.altered"}


def test_a_changed_filter_snapshots_the_tables_it_newly_includes(
    stack: Any, settings: Settings, unique: str, mysql_db: str, outside: str, tmp_path: Path
) -> None:
    out = stack.mysql_root(outside)
    _fill(out, "old", 450)
    _, first = _start_reader(
        stack, settings, unique, mysql_db, tmp_path, snapshot_new_tables="true"
    )
    filter_key = Keyspace.of(settings).cdc_filter("main")
    try:
        wait_for("the filter stored", lambda: etcd_get(settings, filter_key))
    finally:
        assert first.terminate() == 0, first.stderr()
    # While no reader runs: a table created inside the old filter (it streams).
    inside = stack.mysql_root(mysql_db)
    _fill(inside, "during", 40)
    wider = f"exclude: *.*, include: {mysql_db}.*, include: {outside}.*"
    env = reader_env(
        stack,
        unique,
        "main",
        num_shards=SHARDS,
        kafka_topic=f"{unique}_%{{table}}",
        dead_letter_topic=f"{unique}_dlq",
        filter=wider,
        snapshot_new_tables="true",
    )
    second = ReaderProcess(env, tmp_path, "reader-b")
    try:
        ids = wait_for("old snapshotted", lambda: _done(settings, f"{outside}.old"))
        _execute(out, "UPDATE old SET v = v + 1 WHERE id < 50")
        old = _equal_to_source(stack, unique, outside, "old")
        during = _equal_to_source(stack, unique, mysql_db, "during")
    finally:
        assert second.terminate() == 0, second.stderr()
    assert len(ids) == 1 and ids[0].startswith(f"filter-{outside}.old-")
    assert etcd_get(settings, filter_key) == wider.encode()
    assert _kinds(old).count("bootstrap-insert") == 450
    assert not [k for k in _kinds(during) if k.startswith("bootstrap")]
    assert {p.table for p in _snapshots(settings).values()} == {f"{outside}.old"}
