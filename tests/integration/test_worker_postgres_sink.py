"""The PostgreSQL sink on real PostgreSQL: data and offsets in one transaction, stale
tokens refused, a batch or a change applied twice has one effect."""

from __future__ import annotations

import base64
import json
import os
import shlex
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.conftest import StackHandle
from tests.integration.cdc_support import SHARDCTL
from tests.integration.postgres_support import count_effects, fresh_database, pg_query
from tests.integration.workers_support import MIXED_CHANGES, MIXED_RESULT, maxwell, row_event
from workers.events import Batch, Event, decode_message
from workers.handlers import Fenced, HandlerContext, ShardHalted
from workers.sinks.postgres import BULK_ROWS, PostgresSink
from workers.sinks.schema_evolution import Unmappable

pytestmark = pytest.mark.integration


def _event(n: int, shard: int, token: int, topic: str = "orders", **kwargs: Any) -> Event:
    raw = maxwell(n, shard, **kwargs)
    return Event(
        shard=shard,
        topic=topic,
        position=n,
        key=None,
        raw=raw,
        message=decode_message(raw, shard, topic, n),
        token=token,
    )


def _batch(shard: int, token: int, events: list[Event]) -> Batch:
    return Batch.of(shard, token, tuple(events))


@pytest.fixture
def pg(stack: StackHandle, unique: str) -> Iterator[dict[str, Any]]:
    with fresh_database(stack, unique) as args:
        pg_query(
            args,
            "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(50), "
            "payload BYTEA NULL, doc JSONB NULL, amount NUMERIC(30, 2) NULL)",
        )
        count_effects(args, "items")
        yield args


def _sink(pg: dict[str, Any], scope: str = "test") -> PostgresSink:
    return PostgresSink(
        HandlerContext(
            options={"database": pg["dbname"], "target_schema": "public", "scope": scope}
        )
    )


@pytest.fixture
def sink_env(stack: StackHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sinks' environment aimed at the stack's PostgreSQL."""
    for key, value in stack.env().items():
        if key.startswith("SHARDCTL_SINK_POSTGRES_"):
            monkeypatch.setenv(key, value)
    monkeypatch.delenv("SHARDCTL_SINK_POSTGRES_PASSWORD", raising=False)


@pytest.fixture(params=["statements", "bulk"])
def sink(
    pg: dict[str, Any], sink_env: None, request: pytest.FixtureRequest
) -> Iterator[PostgresSink]:
    """The sink, writing every group of rows as multi-row statements, or every group
    through the bulk path (COPY into a temporary table and one merge)."""
    made = _sink(pg)
    made.dialect.bulk_rows = 1 if request.param == "bulk" else None
    yield made
    made.on_close()


def test_rows_and_offsets_commit_together_and_a_replayed_batch_has_no_effect(
    pg: dict[str, Any], sink: PostgresSink
) -> None:
    sink.on_assign(2, 100)
    assert sink.resume_positions(2) == {}
    first = _batch(
        2,
        100,
        [
            _event(0, 2, 100),
            _event(
                1,
                2,
                100,
                data={
                    "id": 1,
                    "name": "b",
                    "payload": "AAEC",
                    "doc": {"a": [1]},
                    "amount": 1234567890.12,
                },
            ),
            _event(2, 2, 100),
            _event(3, 2, 100, kind="update", data={"id": 0, "name": "renamed"}),
            _event(4, 2, 100, kind="delete", data={"id": 2, "name": "n2"}),
        ],
    )
    sink.on_events(first)
    # Folded per key: row 0 written once (its insert and update), row 1 once, and row
    # 2 (inserted, then deleted) only deleted: there was nothing to delete.
    assert pg_query(pg, "SELECT n FROM effects") == [(2,)]
    rows = pg_query(pg, "SELECT id, name, payload, doc, amount::text FROM items ORDER BY id")
    assert rows == [
        (0, "renamed", None, None, None),
        (1, "b", b"\x00\x01\x02", {"a": [1]}, "1234567890.12"),
    ]
    assert sink.resume_positions(2) == {"orders": 5}
    assert pg_query(pg, "SELECT position, event_id, token FROM shardctl_offsets") == [
        (5, "ev-2-4", 100)
    ]

    # The same batch again (a redelivery after a crash), then one that overlaps it.
    sink.on_events(first)
    sink.on_events(
        _batch(
            2,
            100,
            [_event(4, 2, 100, kind="delete", data={"id": 2, "name": "n2"}), _event(5, 2, 100)],
        )
    )
    assert pg_query(pg, "SELECT n FROM effects") == [(3,)], "a duplicate applied"
    assert sink.resume_positions(2) == {"orders": 6}


def _change(offset: int, gtid_seq: int, row: int, topic: str = "orders", xid: int = 0) -> Event:
    return _event(
        offset,
        1,
        7,
        topic=topic,
        kind="update",
        data={"id": 1, "name": f"v{gtid_seq}.{row}"},
        event_id=f"0-1-{gtid_seq}#{row}",
        xid=xid or gtid_seq,  # a replay repeats the transaction exactly
    )


def test_a_change_the_reader_published_again_has_no_second_effect(
    pg: dict[str, Any], sink: PostgresSink
) -> None:
    """After a CDC failover the reader publishes its tail again, at new offsets but with
    the same event ids: the sink applies each source change once."""
    sink.on_assign(1, 7)
    sink.on_events(_batch(1, 7, [_event(0, 1, 7, data={"id": 1, "name": "v0"})]))
    # Three changes to row 1 fold into one write.
    sink.on_events(_batch(1, 7, [_change(1, 10, 0), _change(2, 11, 0), _change(3, 11, 1)]))
    assert pg_query(pg, "SELECT n FROM effects") == [(2,)]
    # The tail again (offsets 4-5 repeat gtid 11), then a new change.
    sink.on_events(_batch(1, 7, [_change(4, 11, 0), _change(5, 11, 1), _change(6, 12, 0)]))
    assert pg_query(pg, "SELECT n FROM effects") == [(3,)], "a replayed change applied"
    assert pg_query(pg, "SELECT name FROM items WHERE id = 1") == [("v12.0",)]
    # Another topic of the same shard has its own order: an older GTID there still applies.
    sink.on_events(_batch(1, 7, [_change(0, 9, 0, topic="customers")]))
    assert pg_query(pg, "SELECT n FROM effects") == [(4,)]


def test_a_source_that_went_backwards_stops_the_shard_and_writes_nothing(
    stack: StackHandle, pg: dict[str, Any], sink: PostgresSink
) -> None:
    sink.on_assign(1, 7)
    sink.on_events(_batch(1, 7, [_change(0, 10, 0), _change(1, 11, 0)]))
    # GTID 11 again, but another transaction (another xid): the source was reset.
    with pytest.raises(ShardHalted, match="went backwards") as halted:
        sink.on_events(_batch(1, 7, [_change(2, 12, 0), _change(3, 11, 0, xid=99)]))
    # Two changes of row 1, folded into one write.
    assert pg_query(pg, "SELECT n, (SELECT name FROM items) FROM effects") == [(1, "v11.0")]
    assert sink.resume_positions(1) == {"orders": 2}
    [(stream,)] = pg_query(pg, "SELECT stream FROM shardctl_applied")
    command = (
        f"shardctl worker forget-stream --handler postgres --handler-option scope=test "
        f"--handler-option database={pg['dbname']} --shard 1 --topic orders --stream '{stream}'"
    )
    assert command in str(halted.value)
    # The command the error names, as an operator runs it.
    forget = subprocess.run(
        [SHARDCTL, *shlex.split(command)[1:], "--yes"],
        env={**os.environ, **stack.env()},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert forget.returncode == 0, forget.stderr
    # The newest applied change and the row of the batch's two applied transactions.
    assert f"postgres sink test: shard 1 topic orders stream {stream}: forgot 2 record(s)" in (
        forget.stdout
    )
    # Forgotten: the reset source's changes apply from the next batch on.
    sink.on_events(_batch(1, 7, [_change(2, 11, 0, xid=99), _change(3, 12, 0, xid=100)]))
    assert pg_query(pg, "SELECT name FROM items") == [("v12.0",)]
    assert pg_query(pg, "SELECT n FROM effects") == [(2,)]


def test_a_stale_token_is_refused_and_writes_nothing(
    pg: dict[str, Any], sink: PostgresSink
) -> None:
    sink.on_assign(1, 7)
    sink.on_events(_batch(1, 7, [_event(0, 1, 7)]))
    # A new owner (token 9) takes the shard; the old one is now a zombie.
    newer = _sink(pg)
    try:
        newer.on_assign(1, 9)
        assert newer.resume_positions(1) == {"orders": 1}
        with pytest.raises(Fenced, match="token 7 is older than 9"):
            sink.on_events(_batch(1, 7, [_event(1, 1, 7), _event(2, 1, 7)]))
        assert pg_query(pg, "SELECT id FROM items") == [(0,)]
        assert pg_query(pg, "SELECT n FROM effects") == [(1,)]
        newer.on_events(_batch(1, 9, [_event(1, 1, 9)]))
        assert pg_query(pg, "SELECT token, position FROM shardctl_offsets") == [(9, 2)]
        # An old owner assigned again is refused at once, before any batch.
        with pytest.raises(Fenced, match="already fenced at token 9 > 8"):
            _sink(pg).on_assign(1, 8)
    finally:
        newer.on_close()
    assert pg_query(pg, "SELECT id FROM items ORDER BY id") == [(0,), (1,)]


def test_a_failing_event_rolls_back_its_whole_batch(pg: dict[str, Any], sink: PostgresSink) -> None:
    sink.on_assign(0, 5)
    bad = _event(1, 0, 5, data={"id": 1, "no_such_column": 1})
    with pytest.raises(LookupError, match="no column"):
        sink.on_events(_batch(0, 5, [_event(0, 0, 5), bad]))
    assert pg_query(pg, "SELECT COUNT(*) FROM items") == [(0,)]
    assert sink.resume_positions(0) == {}
    # The connection is usable after the rollback.
    sink.on_events(_batch(0, 5, [_event(0, 0, 5)]))
    assert pg_query(pg, "SELECT id FROM items") == [(0,)]


@pytest.mark.parametrize(
    ("fold", "writes"),
    # Folded: rows 1 and 2 deleted then written, row 3 deleted, rows 5 and 6 written
    # (row 4's delete finds nothing). Unfolded: each of the 12 changes writes one row,
    # the key move two.
    [(True, 7), (False, 13)],
)
def test_several_changes_to_one_key_end_in_the_state_of_the_last_one(
    pg: dict[str, Any], sink: PostgresSink, fold: bool, writes: int
) -> None:
    sink.settings.fold_changes = fold
    sink.on_assign(0, 7)
    first = [row_event(n, "insert", {"id": n, "name": f"n{n}"}) for n in (1, 2, 3)]
    sink.on_events(_batch(0, 7, first))
    batch = [row_event(4 + n, kind, data, old) for n, (kind, data, old) in enumerate(MIXED_CHANGES)]
    sink.on_events(_batch(0, 7, batch))
    assert pg_query(pg, "SELECT id, name, payload FROM items ORDER BY id") == MIXED_RESULT
    assert pg_query(pg, "SELECT n FROM effects") == [(3 + writes,)]
    assert sink.resume_positions(0) == {"orders": 4 + len(MIXED_CHANGES)}


def test_a_failure_in_the_middle_of_a_batch_rolls_back_data_and_offsets_together(
    pg: dict[str, Any], sink: PostgresSink
) -> None:
    """The batch's DELETE statement has run when its upsert fails on the server: the
    delete, the rows before the bad one and the offsets are all rolled back."""
    pg_query(pg, "ALTER TABLE items ADD CONSTRAINT no_bad_name CHECK (name <> 'bad')")
    sink.on_assign(0, 7)
    sink.on_events(
        _batch(0, 7, [row_event(n, "insert", {"id": n, "name": f"n{n}"}) for n in (0, 1)])
    )
    failing = [
        row_event(2, "delete", {"id": 0, "name": "n0"}),
        row_event(3, "update", {"id": 1, "name": "changed"}, {"name": "n1"}),
        row_event(4, "insert", {"id": 5, "name": "bad"}),
        row_event(5, "insert", {"id": 6, "name": "n6"}),
    ]
    with pytest.raises(psycopg.errors.CheckViolation, match="no_bad_name"):
        sink.on_events(_batch(0, 7, failing))
    assert pg_query(pg, "SELECT id, name FROM items ORDER BY id") == [(0, "n0"), (1, "n1")]
    assert pg_query(pg, "SELECT n FROM effects") == [(2,)]
    assert sink.resume_positions(0) == {"orders": 2}
    # Without the bad row (as the worker's one-by-one retry sends it) the rest applies.
    sink.on_events(_batch(0, 7, failing[:2] + failing[3:]))
    assert pg_query(pg, "SELECT id, name FROM items ORDER BY id") == [(1, "changed"), (6, "n6")]
    assert sink.resume_positions(0) == {"orders": 6}


def test_a_large_batch_keeps_every_type_exactly(pg: dict[str, Any], sink: PostgresSink) -> None:
    """Hundreds of rows in one batch, copied and merged (bulk, at the default
    threshold) or in multi-row statements: NUMERIC digits, JSONB, BYTEA, dates, times
    and text with tabs, newlines and backslashes arrive as the source had them, and
    the deletes of the batch take effect."""
    if sink.dialect.bulk_rows is not None:
        sink.dialect.bulk_rows = BULK_ROWS
    pg_query(
        pg,
        "CREATE TABLE typed (id BIGINT PRIMARY KEY, amount NUMERIC(30, 10), doc JSONB, "
        "payload BYTEA, day DATE, at TIMESTAMP(6), note TEXT)",
    )
    count = 3 * BULK_ROWS

    def row(n: int) -> dict[str, Any]:
        return {
            "id": n,
            "doc": {"n": n, "price": "0.10", "list": [1, "x\\y"]},
            "payload": base64.b64encode(bytes([n % 256, 0, 255, 92])).decode(),
            "day": f"2024-02-{1 + n % 28:02d}",
            "at": f"2024-02-29 23:59:59.{n:06d}",
            "note": f"tab\there, newline\nthere, backslash \\ {n}",
        }

    def change(offset: int, kind: str, n: int) -> Event:
        doc = {
            "database": "shop",
            "table": "typed",
            "type": kind,
            "ts": 1700000000,
            "xid": offset,
            "commit": True,
            "data": {**row(n), "amount": "AMOUNT"},
            "event_id": f"0-1-{offset + 1}#0",
        }
        # A JSON number with more digits than a float keeps, as Maxwell writes DECIMAL.
        raw = json.dumps(doc).replace('"AMOUNT"', f"12345678901234567890.{n:010d}").encode()
        return Event(0, "orders", offset, None, raw, decode_message(raw, 0, "orders", offset), 7)

    sink.on_assign(0, 7)
    inserts = [change(n, "insert", n) for n in range(count)]
    sink.on_events(_batch(0, 7, inserts))
    # Every other row deleted, in one batch of more than BULK_ROWS deletes.
    deletes = [change(count + i, "delete", n) for i, n in enumerate(range(0, count, 2))]
    sink.on_events(_batch(0, 7, deletes))
    stored = pg_query(
        pg,
        "SELECT id, amount::text, doc, payload, day::text, at::text, note FROM typed ORDER BY id",
    )
    expected = [
        (
            n,
            f"12345678901234567890.{n:010d}",
            {"n": n, "price": "0.10", "list": [1, "x\\y"]},
            bytes([n % 256, 0, 255, 92]),
            f"2024-02-{1 + n % 28:02d}",
            f"2024-02-29 23:59:59.{n:06d}",
            f"tab\there, newline\nthere, backslash \\ {n}",
        )
        for n in range(1, count, 2)
    ]
    assert stored == expected
    assert sink.resume_positions(0) == {"orders": count + len(deletes)}
    # The applied transactions: one row per batch, each transaction remembered once.
    assert pg_query(pg, "SELECT COUNT(*), SUM(txns) FROM shardctl_applied_runs") == [
        (2, count + len(deletes))
    ]


def _dated(offset: int, data: dict[str, Any]) -> Event:
    raw = maxwell(offset, 0, table="dated", data=data, event_id=f"0-1-{offset + 1}#0")
    return Event(0, "orders", offset, None, raw, decode_message(raw, 0, "orders", offset), 7)


@pytest.mark.parametrize(
    "zero",
    ["0000-00-00", "0000-00-00 00:00:00.000", "2024-00-15 10:00:00", "2024-03-00"],
)
def test_a_zero_date_is_refused_with_its_reason_or_written_as_null_by_setting(
    pg: dict[str, Any], sink: PostgresSink, zero: str
) -> None:
    """MariaDB keeps dates with a zero year, month or day; PostgreSQL's date and
    timestamp columns have no such value. By default (zero_dates = refuse) the event
    is refused naming the column and the setting; zero_dates = null writes NULL."""
    pg_query(pg, "CREATE TABLE dated (id INT PRIMARY KEY, day DATE, at TIMESTAMP, note TEXT)")
    sink.on_assign(0, 7)
    good = {"id": 1, "day": "2024-02-29", "at": "2024-02-29 10:00:00", "note": zero}
    sink.on_events(_batch(0, 7, [_dated(0, good)]))
    with pytest.raises(Unmappable, match=rf"'at': zero date '{zero}'.*zero_dates = refuse"):
        sink.on_events(_batch(0, 7, [_dated(1, {"id": 2, "day": "2024-01-01", "at": zero})]))
    assert sink.resume_positions(0) == {"orders": 1}

    sink.settings.zero_dates = "null"
    sink.on_events(_batch(0, 7, [_dated(1, {"id": 2, "day": zero, "at": zero, "note": zero})]))
    assert pg_query(pg, "SELECT id, day::text, at::text, note FROM dated ORDER BY id") == [
        (1, "2024-02-29", "2024-02-29 10:00:00", zero),  # a text column keeps it as written
        (2, None, None, zero),
    ]


def test_a_zero_date_in_a_primary_key_is_refused_whatever_the_setting(
    pg: dict[str, Any], sink: PostgresSink
) -> None:
    pg_query(pg, "CREATE TABLE dated (day DATE PRIMARY KEY, n INT)")
    sink.settings.zero_dates = "null"
    sink.on_assign(0, 7)
    with pytest.raises(Unmappable, match=r"'day': zero date .*it is a primary key column"):
        sink.on_events(_batch(0, 7, [_dated(0, {"day": "0000-00-00", "n": 1})]))
    assert pg_query(pg, "SELECT COUNT(*) FROM dated") == [(0,)]


def test_workers_assigned_at_once_on_a_fresh_database_all_start(
    pg: dict[str, Any], sink_env: None
) -> None:
    """The first workers of a new database create the bookkeeping tables at the same
    moment: each must start (PostgreSQL's CREATE TABLE IF NOT EXISTS alone fails one
    of two concurrent creators with a unique violation on its catalog)."""
    sinks = [_sink(pg) for _ in range(6)]
    start = threading.Barrier(len(sinks))
    errors: list[BaseException] = []

    def assign(shard: int, sink: PostgresSink) -> None:
        start.wait()
        try:
            sink.on_assign(shard, 1)
        except BaseException as exc:  # reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=assign, args=(n, s)) for n, s in enumerate(sinks)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for sink in sinks:
        sink.on_close()
    assert errors == []
    assert pg_query(pg, "SELECT shard, token FROM shardctl_fences ORDER BY shard") == [
        (n, 1) for n in range(6)
    ]
