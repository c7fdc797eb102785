"""Schema evolution of the SQL sinks on real MariaDB and PostgreSQL: with
`schema_evolution = basic` a missing table is created and a new column added from
the row values; a value the target cannot hold exactly is refused with its reason,
and never rounded; with `none` a new column is refused naming table and column."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest

from tests.conftest import StackHandle
from tests.integration.postgres_support import fresh_database, pg_query
from workers.events import Batch, Event, decode_message
from workers.handlers import HandlerContext
from workers.sinks.postgres import PostgresSink
from workers.sinks.schema_evolution import Unmappable
from workers.sinks.sql import SqlSink, json_text

pytestmark = pytest.mark.integration

SHARD, TOKEN = 3, 11


def _event(
    n: int,
    data: dict[str, Any],
    kind: str = "insert",
    primary_key: list[str] | None = None,
    key: bytes | None = None,
) -> Event:
    doc: dict[str, Any] = {
        "database": "shop",
        "table": "items",
        "type": kind,
        "ts": 1700000000,
        "xid": n,
        "commit": True,
        "event_id": f"0-1-{n}#0",
        "source": "src/1",
    }
    if primary_key is not None:
        doc["primary_key_columns"] = primary_key
    doc["data"] = data
    # Decimals as JSON numbers, digit for digit, as the reader writes them.
    raw = json_text(doc).encode()
    message = decode_message(raw, SHARD, "orders", n)
    return Event(SHARD, "orders", n, key, raw, message, TOKEN)


def _batch(*events: Event) -> Batch:
    return Batch.of(SHARD, TOKEN, events)


@dataclass
class Target:
    """One target database: how to make its sink, and to query it."""

    name: str
    namespace: str
    make_sink: Callable[[str], SqlSink]
    query: Callable[[str], list[tuple[Any, ...]]]
    columns_sql: str  # (column, full type) of table items
    made: list[SqlSink] = field(default_factory=list)

    def sink(self, schema_evolution: str = "basic") -> SqlSink:
        made = self.make_sink(schema_evolution)
        self.made.append(made)
        made.on_assign(SHARD, TOKEN)
        return made

    def columns(self) -> dict[str, str]:
        return {str(c): str(t).lower() for c, t in self.query(self.columns_sql)}


def _mariadb(stack: StackHandle, db: str, monkeypatch: pytest.MonkeyPatch) -> Target:
    monkeypatch.setenv("SHARDCTL_SINK_SQL_PORT", str(stack.mysql_port))
    monkeypatch.setenv("SHARDCTL_SINK_SQL_USER", "root")
    monkeypatch.delenv("SHARDCTL_SINK_SQL_PASSWORD", raising=False)

    def query(sql: str) -> list[tuple[Any, ...]]:
        conn = stack.mysql_root(db)
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return list(cur.fetchall())
        finally:
            conn.close()

    def make(evolution: str) -> SqlSink:
        options = {"database": db, "scope": "test", "schema_evolution": evolution}
        return SqlSink(HandlerContext(options=options))

    return Target(
        "sql",
        db,
        make,
        query,
        "SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS WHERE "
        f"TABLE_SCHEMA = '{db}' AND TABLE_NAME = 'items'",
    )


def _postgres(args: dict[str, Any], stack: StackHandle, monkeypatch: pytest.MonkeyPatch) -> Target:
    for key, value in stack.env().items():
        if key.startswith("SHARDCTL_SINK_POSTGRES_"):
            monkeypatch.setenv(key, value)
    monkeypatch.delenv("SHARDCTL_SINK_POSTGRES_PASSWORD", raising=False)

    def make(evolution: str) -> SqlSink:
        options = {
            "database": args["dbname"],
            "target_schema": "public",
            "scope": "test",
            "schema_evolution": evolution,
        }
        return PostgresSink(HandlerContext(options=options))

    return Target(
        "postgres",
        "public",
        make,
        lambda sql: pg_query(args, sql),
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE "
        "attrelid = to_regclass('public.items') AND attnum > 0 AND NOT attisdropped",
    )


@pytest.fixture(params=["sql", "postgres"])
def target(
    request: pytest.FixtureRequest,
    stack: StackHandle,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Target]:
    if request.param == "sql":
        db = request.getfixturevalue("mysql_db")
        made = _mariadb(stack, db, monkeypatch)
        yield made
        for sink in made.made:
            sink.on_close()
        return
    with fresh_database(stack, unique) as args:
        made = _postgres(args, stack, monkeypatch)
        yield made
        for sink in made.made:
            sink.on_close()


# The types a new column is made with, per target, as the catalog shows them.
EXPECTED_TYPES = {
    "sql": {
        "id": "bigint(20)",
        "name": "longtext",
        "amount": "decimal(65,30)",
        "big": "bigint(20) unsigned",
        "doc": "longtext",  # MariaDB's JSON is LONGTEXT with a json_valid check
    },
    "postgres": {
        "id": "bigint",
        "name": "text",
        "amount": "numeric",
        "big": "numeric(20,0)",
        "doc": "jsonb",
    },
}


def _amounts(target: Target) -> list[tuple[int, Decimal]]:
    return [
        (int(i), Decimal(a).normalize())
        for i, a in target.query("SELECT id, amount FROM items ORDER BY id")
    ]


def test_a_missing_table_is_created_from_the_row_values(target: Target) -> None:
    sink = target.sink()
    first = {
        "id": 1,
        "name": "a",
        "amount": Decimal("10.50"),
        "big": 2**64 - 1,
        "doc": {"k": [1, "x"]},
        "flag": None,  # nothing to make a column from yet
    }
    sink.on_events(_batch(_event(0, first, primary_key=["id"])))
    assert target.columns() == EXPECTED_TYPES[target.name]
    rows = target.query("SELECT id, name, amount, big, doc FROM items")
    assert len(rows) == 1
    row_id, name, amount, big, doc = rows[0]
    assert (row_id, name, Decimal(amount), int(big)) == (1, "a", Decimal("10.50"), 2**64 - 1)
    assert (json.loads(doc) if isinstance(doc, str) else doc) == {"k": [1, "x"]}
    assert sink.resume_positions(SHARD) == {"orders": 1}


def test_a_column_the_source_gained_is_added_and_applied(target: Target) -> None:
    sink = target.sink()
    sink.on_events(_batch(_event(0, {"id": 1, "name": "a"}, primary_key=["id"])))
    # The source gained `note` (ALTER TABLE ... ADD COLUMN): later rows carry it. The
    # same sink read the table before; it must add the column, not refuse the row.
    sink.on_events(
        _batch(
            _event(1, {"id": 2, "name": "b", "note": "new"}, primary_key=["id"]),
            _event(2, {"id": 1, "name": "a2", "note": None, "late": None}, "update", ["id"]),
        )
    )
    assert "note" in target.columns()
    assert "late" not in target.columns()
    assert target.query("SELECT id, name, note FROM items ORDER BY id") == [
        (1, "a2", None),
        (2, "b", "new"),
    ]
    # A second sink (another worker) knows the table as it is now.
    other = target.sink()
    other.on_events(_batch(_event(3, {"id": 3, "name": "c", "note": "n3"}, primary_key=["id"])))
    assert target.query("SELECT id, note FROM items WHERE id = 3") == [(3, "n3")]


def test_the_key_comes_from_the_kafka_key_and_keys_keep_case_and_spaces(
    target: Target,
) -> None:
    sink = target.sink()

    def keyed(n: int, code: str) -> Event:
        key = json.dumps({"database": "shop", "table": "items", "pk.code": code}).encode()
        return _event(n, {"code": code, "n": n}, key=key)

    sink.on_events(_batch(keyed(0, "A"), keyed(1, "a"), keyed(2, "a "), keyed(3, "a")))
    assert sorted(target.query("SELECT code, n FROM items")) == [("A", 0), ("a", 3), ("a ", 2)]


def test_a_table_without_a_known_primary_key_is_not_created(target: Target) -> None:
    sink = target.sink()
    with pytest.raises(LookupError, match=r"cannot create .*items.*no primary key"):
        sink.on_events(_batch(_event(0, {"id": 1, "name": "a"})))
    assert target.columns() == {}


# A value each target cannot hold exactly in the column it would make for it.
UNMAPPABLE = {
    "sql": (Decimal("1E-40"), r"'tiny'.*40 digits after the point.*keeps 30"),
    "postgres": ("x\x00y", r"'tiny'.*cannot hold the character U\+0000"),
}


def test_an_unmappable_value_is_refused_with_its_reason_and_nothing_is_written(
    target: Target,
) -> None:
    sink = target.sink()
    sink.on_events(_batch(_event(0, {"id": 1, "name": "a"}, primary_key=["id"])))
    value, reason = UNMAPPABLE[target.name]
    bad = _event(1, {"id": 2, "name": "b", "tiny": value}, primary_key=["id"])
    with pytest.raises(Unmappable, match=reason) as refused:
        sink.on_events(_batch(bad))
    assert "event 0-1-1#0" in str(refused.value)
    assert "tiny" not in target.columns()
    assert target.query("SELECT id FROM items ORDER BY id") == [(1,)]
    assert sink.resume_positions(SHARD) == {"orders": 1}


def test_with_schema_evolution_none_a_new_column_is_refused_naming_it(target: Target) -> None:
    target.sink().on_events(_batch(_event(0, {"id": 1, "name": "a"}, primary_key=["id"])))
    plain = target.sink("none")
    with pytest.raises(LookupError, match=r"items.*no column\(s\) \['note'\].*schema_evolution"):
        plain.on_events(_batch(_event(1, {"id": 2, "name": "b", "note": "x"}, primary_key=["id"])))
    assert "note" not in target.columns()


def test_with_schema_evolution_none_a_missing_table_is_refused_naming_it(target: Target) -> None:
    plain = target.sink("none")
    with pytest.raises(LookupError, match=r"items does not exist.*schema_evolution = basic"):
        plain.on_events(_batch(_event(0, {"id": 1, "name": "a"}, primary_key=["id"])))


def test_a_number_its_column_would_round_is_refused(target: Target) -> None:
    """Both databases round a number with more digits after the point than a
    DECIMAL/NUMERIC column keeps, without an error: the sink refuses it instead."""
    target.query("CREATE TABLE items (id INT PRIMARY KEY, amount NUMERIC(12,2))")
    sink = target.sink("none")
    sink.on_events(
        _batch(
            _event(0, {"id": 1, "amount": Decimal("1.50")}),
            _event(1, {"id": 2, "amount": Decimal("2.500")}),  # trailing zeros lose nothing
        )
    )
    with pytest.raises(Unmappable, match=r"'amount'.*1\.005 has 3 digits after the point"):
        sink.on_events(_batch(_event(2, {"id": 3, "amount": Decimal("1.005")})))
    assert _amounts(target) == [(1, Decimal("1.5")), (2, Decimal("2.5"))]


def test_adding_a_column_another_worker_just_added_is_no_error(target: Target) -> None:
    """Two workers may add the same new column at once: the second ADD finds it there
    (MySQL 8 has no ADD COLUMN IF NOT EXISTS; the MariaDB dialect takes the duplicate
    column error as done)."""
    sink = target.sink()
    sink.on_events(_batch(_event(0, {"id": 1, "name": "a"}, primary_key=["id"])))
    conn = sink._conn(SHARD)
    name = sink.dialect.qualified(target.namespace, "items")
    kind = sink.dialect.column_types["text"]
    for _ in range(2):
        sink.dialect.add_column(conn, name, "note", kind)
    assert "note" in target.columns()
