"""The whole pipeline into PostgreSQL: MariaDB -> CDC reader -> Kafka -> 2 workers ->
PostgreSQL sink, with one worker killed (kill -9) during the run.

The sink table ends equal to the source table row by row (ids, text, DECIMAL as
NUMERIC, VARBINARY as BYTEA, compared as Python values), and a trigger on the sink
table counts every row write: the count equals the number of source row changes, so
no change was applied twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shardctl.core.config import Settings
from tests.conftest import StackHandle
from tests.e2e.test_pipeline_sql_sink import (
    NUM_SHARDS,
    TABLE,
    Pipeline,
    _settle_in,
    random_writes,
    wait_for_sink,
)
from tests.integration.postgres_support import count_effects, pg_query, postgres_up
from tests.integration.workers_support import create_topic
from tests.polling import wait_for

pytestmark = pytest.mark.e2e

SINK_TABLE = (
    "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(64) NOT NULL, "
    "amount NUMERIC(12,2) NOT NULL, payload BYTEA NULL)"
)


def _normalised(value: Any) -> Any:
    """One Python type per column whatever the driver gave (bytes for binary)."""
    return bytes(value) if isinstance(value, bytearray | memoryview) else value


class PostgresPipeline(Pipeline):
    handler = "postgres"

    def __init__(self, stack: StackHandle, settings: Settings, source_db: str, workdir: Path):
        super().__init__(stack, settings, source_db, workdir)
        self.admin = postgres_up(stack)
        self.pg = {**self.admin, "dbname": self.sink_db}
        self.env["SHARDCTL_SINK_POSTGRES_DATABASE"] = self.sink_db
        self.env["SHARDCTL_SINK_POSTGRES_TARGET_SCHEMA"] = "public"
        self.env.pop("SHARDCTL_SINK_POSTGRES_PASSWORD", None)

    def sql(self, db: str, statement: str, args: Any = None) -> list[tuple[Any, ...]]:
        """The sink database is in PostgreSQL; the source in MariaDB."""
        rows = (
            pg_query(self.pg, statement, args)
            if db == self.sink_db
            else super().sql(db, statement, args)
        )
        return [tuple(_normalised(v) for v in row) for row in rows]

    def prepare(self) -> None:
        self.sql(self.source_db, TABLE)
        pg_query(self.admin, f'CREATE DATABASE "{self.sink_db}"')
        pg_query(self.pg, SINK_TABLE)
        count_effects(self.pg, "items")
        create_topic(self.stack.kafka_bootstrap, self.topic, NUM_SHARDS)
        done = self.shardctl("shards", "set", str(NUM_SHARDS))
        assert done.returncode == 0, done.stderr

    def close(self) -> None:
        try:
            super().close()
        finally:
            pg_query(self.admin, f'DROP DATABASE IF EXISTS "{self.sink_db}" WITH (FORCE)')


def owned_shards(p: Pipeline) -> dict[str, list[int]]:
    """worker id -> the shards it owns now (`shardctl status --json`)."""
    status = p.shardctl("status", "--json")
    assert status.returncode == 0, status.stderr
    return {w["id"]: w["owned"] for w in json.loads(status.stdout)["workers"]}


@pytest.fixture
def pipeline(
    stack: StackHandle, settings: Settings, mysql_db: str, tmp_path: Path
) -> Iterator[PostgresPipeline]:
    p = PostgresPipeline(stack, settings, mysql_db, tmp_path)
    try:
        p.prepare()
        p.start_cdc()
        p.start_coordinator()
        yield p
    finally:
        p.close()


def test_exactly_once_into_postgres_while_a_worker_is_killed(pipeline: PostgresPipeline) -> None:
    for name in ("w1", "w2"):
        pipeline.start_worker(name)
    _settle_in(pipeline)
    # Both workers own shards before the kill, so the kill interrupts a live owner.
    wait_for(
        "both workers own shards", lambda: all(owned_shards(pipeline).get(w) for w in ("w1", "w2"))
    )
    killed: list[int] = []

    def chaos(txn: int) -> None:
        if txn == 40:
            killed.extend(owned_shards(pipeline)["w2"])
            pipeline.procs["w2"].kill()  # kill -9, mid-batch or not
            pipeline.procs["w2"].wait(10)

    changes = random_writes(pipeline, 600, seed=13, between=chaos)
    assert killed, "the run ended before the worker was killed"
    wait_for_sink(pipeline, changes)
    # The killed worker's shards were taken over by the survivor.
    wait_for(
        "w1 owns every shard",
        lambda: set(owned_shards(pipeline).get("w1", [])) == set(range(NUM_SHARDS)),
    )
    assert pipeline.sql(pipeline.sink_db, "SELECT count(*) FROM items")[0][0] > 0
    assert "dead-lettered" not in pipeline.log("w1")
