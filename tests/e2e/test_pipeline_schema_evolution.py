"""Schema evolution through the whole pipeline: MariaDB -> CDC reader -> Kafka ->
worker -> PostgreSQL sink with `schema_evolution = basic` and no target table.

The sink creates the table from the first rows, adds the columns an ALTER TABLE ...
ADD COLUMN on the source brings, and ends equal to the source row by row. A value
PostgreSQL cannot hold (a text with U+0000, which MariaDB stores) is dead-lettered
with the reason naming its column, and nothing else is lost.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from shardctl.config import Settings
from tests.conftest import StackHandle
from tests.e2e.test_pipeline_postgres_sink import PostgresPipeline, owned_shards
from tests.e2e.test_pipeline_sql_sink import NUM_SHARDS
from tests.integration.cdc_support import stored_checkpoint
from tests.integration.postgres_support import pg_query
from tests.integration.workers_support import create_topic, read_all
from tests.polling import wait_for

pytestmark = pytest.mark.e2e

SOURCE_TABLE = (
    "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(64) NOT NULL, "
    "amount DECIMAL(12,2) NOT NULL)"
)
COLUMNS = "id, name, amount, note, tag"


class EvolvingPipeline(PostgresPipeline):
    """The PostgreSQL pipeline, with no sink table: the sink makes it."""

    def __init__(self, stack: StackHandle, settings: Settings, source_db: str, workdir: Path):
        super().__init__(stack, settings, source_db, workdir)
        self.env["SHARDCTL_SINK_POSTGRES_SCHEMA_EVOLUTION"] = "basic"

    def prepare(self) -> None:
        self.sql(self.source_db, SOURCE_TABLE)
        pg_query(self.admin, f'CREATE DATABASE "{self.sink_db}"')
        create_topic(self.stack.kafka_bootstrap, self.topic, NUM_SHARDS)
        done = self.shardctl("shards", "set", str(NUM_SHARDS))
        assert done.returncode == 0, done.stderr

    def sink_rows(self) -> list[tuple[Any, ...]]:
        if not pg_query(self.pg, "SELECT to_regclass('public.items')")[0][0]:
            return []
        have = {
            c
            for (c,) in pg_query(
                self.pg,
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'items'",
            )
        }
        picked = ", ".join(c if c in have else "NULL" for c in COLUMNS.split(", "))
        return pg_query(self.pg, f"SELECT {picked} FROM items ORDER BY id")

    def sink_types(self) -> dict[str, str]:
        return dict(
            pg_query(
                self.pg,
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE "
                "attrelid = to_regclass('public.items') AND attnum > 0 AND NOT attisdropped",
            )
        )


@pytest.fixture
def pipeline(
    stack: StackHandle, settings: Settings, mysql_db: str, tmp_path: Path
) -> Iterator[EvolvingPipeline]:
    p = EvolvingPipeline(stack, settings, mysql_db, tmp_path)
    try:
        p.prepare()
        p.start_cdc()
        p.start_coordinator()
        yield p
    finally:
        p.close()


def _source(p: EvolvingPipeline, where: str = "") -> list[tuple[Any, ...]]:
    return p.sql(p.source_db, f"SELECT {COLUMNS} FROM items {where} ORDER BY id")


def _dead_letters(p: EvolvingPipeline, expect: int) -> list[dict[str, Any]]:
    found = read_all(p.stack.kafka_bootstrap, f"{p.topic}.dlq", 1, expect=expect, timeout=60)
    return [json.loads(m.value()) for m in found]


def test_the_sink_follows_the_source_schema_and_refuses_what_it_cannot_hold(
    pipeline: EvolvingPipeline,
) -> None:
    p = pipeline
    p.start_worker("w1")
    # The reader streams (its first checkpoint), and the worker owns every shard.
    wait_for("the reader live", lambda: stored_checkpoint(p.settings, "src"), timeout=60)
    wait_for(
        "w1 owns every shard",
        lambda: set(owned_shards(p).get("w1", [])) == set(range(NUM_SHARDS)),
        timeout=60,
    )
    for n in range(1, 11):
        p.sql(p.source_db, "INSERT INTO items VALUES (%s, %s, %s)", (n, f"n{n}", f"{n}.50"))
    wait_for("the sink table made from the rows", lambda: len(p.sink_rows()) == 10, timeout=120)

    p.sql(
        p.source_db,
        "ALTER TABLE items ADD COLUMN note VARCHAR(20) NULL, ADD COLUMN tag VARCHAR(8) NULL",
    )
    for n in range(11, 21):
        p.sql(
            p.source_db,
            "INSERT INTO items (id, name, amount, note) VALUES (%s, %s, %s, %s)",
            (n, f"n{n}", f"{n}.05", f"note {n}"),
        )
    p.sql(p.source_db, "UPDATE items SET note = 'first', amount = 0.01 WHERE id = 1")
    wait_for("the new column applied", lambda: p.sink_rows() == _source(p), timeout=120)
    types = p.sink_types()
    # `tag` only had nulls: nothing to make it from yet.
    assert types == {"id": "bigint", "name": "text", "amount": "numeric", "note": "text"}
    assert p.sink_rows()[0] == (1, "n1", Decimal("0.01"), "first", None)

    # The first value of `tag` holds U+0000: MariaDB keeps it, PostgreSQL's text cannot.
    p.sql(
        p.source_db,
        "INSERT INTO items (id, name, amount, tag) VALUES (21, 'n21', 1, %s)",
        ("x\x00y",),
    )
    letters = _dead_letters(p, 1)
    assert len(letters) == 1, letters
    letter = letters[0]
    assert json.loads(letter["event"])["data"]["id"] == 21
    assert "'tag'" in letter["error"] and "U+0000" in letter["error"], letter["error"]
    assert letter["error_type"] == "Unmappable"

    # Later values of `tag` make the column; the refused row stays out of the sink.
    p.sql(p.source_db, "INSERT INTO items (id, name, amount, tag) VALUES (22, 'n22', 2, 't22')")
    wait_for(
        "the sink equal to the source but the refused row",
        lambda: p.sink_rows() == _source(p, "WHERE id <> 21"),
        timeout=120,
    )
    assert p.sink_types()["tag"] == "text"
    log = p.log("w1")
    assert "created table" in log and "added column" in log, log[-3000:]
    assert len(_dead_letters(p, 1)) == 1, "a second event was dead-lettered"
