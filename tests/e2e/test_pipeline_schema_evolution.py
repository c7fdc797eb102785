"""Schema evolution through the whole pipeline: MariaDB -> CDC reader -> Kafka ->
worker -> SQL sink (MariaDB) or PostgreSQL sink, with `schema_evolution = basic` and
no target table.

The sink creates the table from the first rows, adds the columns an ALTER TABLE ...
ADD COLUMN on the source brings, and ends equal to the source row by row. A value
the target cannot hold exactly (a text with U+0000, which MariaDB stores and
PostgreSQL cannot; a DOUBLE of 1e-40, past DECIMAL(65,30)) is dead-lettered with the
reason naming its column, and nothing else is lost.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from shardctl.core.config import Settings
from tests.conftest import StackHandle
from tests.e2e.test_pipeline_postgres_sink import PostgresPipeline, owned_shards
from tests.e2e.test_pipeline_sql_sink import NUM_SHARDS, Pipeline
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


@dataclass(frozen=True)
class Variant:
    """One target: its column `tag`, a first value of it the target cannot hold, the
    reason given, a value it can, and the types the sink makes."""

    tag_type: str
    bad_tag: Any
    reason: str
    good_tag: Any
    types: dict[str, str]


VARIANTS = {
    "postgres": Variant(
        "VARCHAR(8)",
        "x\x00y",
        "cannot hold the character U+0000",
        "t22",
        {"id": "bigint", "name": "text", "amount": "numeric", "note": "text", "tag": "text"},
    ),
    "sql": Variant(
        "DOUBLE",
        1e-40,
        "40 digits after the point; DECIMAL(65,30) keeps 30",
        2.5,
        {
            "id": "bigint(20)",
            "name": "longtext",
            "amount": "decimal(65,30)",
            "note": "longtext",
            "tag": "decimal(65,30)",
        },
    ),
}


class EvolvingSqlPipeline(Pipeline):
    """The MariaDB-sink pipeline, with no sink table: the sink makes it."""

    def __init__(self, stack: StackHandle, settings: Settings, source_db: str, workdir: Path):
        super().__init__(stack, settings, source_db, workdir)
        self.env["SHARDCTL_SINK_SQL_SCHEMA_EVOLUTION"] = "basic"

    def prepare(self) -> None:
        self.sql(self.source_db, SOURCE_TABLE)
        self.sql(self.source_db, f"CREATE DATABASE `{self.sink_db}`")
        create_topic(self.stack.kafka_bootstrap, self.topic, NUM_SHARDS)
        done = self.shardctl("shards", "set", str(NUM_SHARDS))
        assert done.returncode == 0, done.stderr

    def sink_types(self) -> dict[str, str]:
        rows = self.sql(
            self.sink_db,
            "SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS WHERE "
            "TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'items'",
        )
        return {str(c): str(t).lower() for c, t in rows}

    def sink_rows(self) -> list[tuple[Any, ...]]:
        have = self.sink_types()
        if not have:
            return []
        picked = ", ".join(c if c in have else "NULL" for c in COLUMNS.split(", "))
        return self.sql(self.sink_db, f"SELECT {picked} FROM items ORDER BY id")


class EvolvingPostgresPipeline(PostgresPipeline):
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

    def sink_types(self) -> dict[str, str]:
        return dict(
            pg_query(
                self.pg,
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE "
                "attrelid = to_regclass('public.items') AND attnum > 0 AND NOT attisdropped",
            )
        )

    def sink_rows(self) -> list[tuple[Any, ...]]:
        have = self.sink_types()
        if not have:
            return []
        picked = ", ".join(c if c in have else "NULL" for c in COLUMNS.split(", "))
        return pg_query(self.pg, f"SELECT {picked} FROM items ORDER BY id")


EvolvingPipeline = EvolvingSqlPipeline | EvolvingPostgresPipeline


@pytest.fixture(params=["sql", "postgres"])
def pipeline(
    request: pytest.FixtureRequest,
    stack: StackHandle,
    settings: Settings,
    mysql_db: str,
    tmp_path: Path,
) -> Iterator[EvolvingPipeline]:
    kind = EvolvingSqlPipeline if request.param == "sql" else EvolvingPostgresPipeline
    p = kind(stack, settings, mysql_db, tmp_path)
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
    variant = VARIANTS[p.handler]
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
        "ALTER TABLE items ADD COLUMN note VARCHAR(20) NULL, "
        f"ADD COLUMN tag {variant.tag_type} NULL",
    )
    for n in range(11, 21):
        p.sql(
            p.source_db,
            "INSERT INTO items (id, name, amount, note) VALUES (%s, %s, %s, %s)",
            (n, f"n{n}", f"{n}.05", f"note {n}"),
        )
    p.sql(p.source_db, "UPDATE items SET note = 'first', amount = 0.01 WHERE id = 1")
    wait_for("the new column applied", lambda: p.sink_rows() == _source(p), timeout=120)
    # `tag` only had nulls: nothing to make it from yet.
    assert p.sink_types() == {c: t for c, t in variant.types.items() if c != "tag"}
    assert p.sink_rows()[0] == (1, "n1", Decimal("0.01"), "first", None)

    # The first value of `tag` is one the target cannot hold.
    p.sql(
        p.source_db,
        "INSERT INTO items (id, name, amount, tag) VALUES (21, 'n21', 1, %s)",
        (variant.bad_tag,),
    )
    letters = _dead_letters(p, 1)
    assert len(letters) == 1, letters
    letter = letters[0]
    assert json.loads(letter["event"])["data"]["id"] == 21
    assert "'tag'" in letter["error"] and variant.reason in letter["error"], letter["error"]
    assert letter["error_type"] == "Unmappable"

    # A later value of `tag` makes the column; the refused row stays out of the sink.
    p.sql(
        p.source_db,
        "INSERT INTO items (id, name, amount, tag) VALUES (22, 'n22', 2, %s)",
        (variant.good_tag,),
    )
    wait_for(
        "the sink equal to the source but the refused row",
        lambda: p.sink_rows() == _source(p, "WHERE id <> 21"),
        timeout=120,
    )
    assert p.sink_types() == variant.types
    log = p.log("w1")
    assert "created table" in log and "added column" in log, log[-3000:]
    assert len(_dead_letters(p, 1)) == 1, "a second event was dead-lettered"
