"""The SQL sink on real MariaDB: data and offsets in one transaction, stale tokens
refused, a batch applied twice has one effect."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pymysql
import pytest

from tests.conftest import StackHandle
from tests.integration.workers_support import MIXED_CHANGES, MIXED_RESULT, maxwell, row_event
from workers.events import Batch, Event, decode_message
from workers.handlers import Fenced, HandlerContext
from workers.sinks.sql import MariaDBDialect, SqlSink

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
def sink(stack: StackHandle, mysql_db: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[SqlSink]:
    conn = stack.mysql_root(mysql_db)
    with conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(50), "
            "payload VARBINARY(16) NULL, doc JSON NULL)"
        )
        # Counts every row written: a duplicate effect cannot hide.
        cur.execute("CREATE TABLE effects (n INT NOT NULL)")
        cur.execute("INSERT INTO effects VALUES (0)")
        cur.execute(
            "CREATE TRIGGER count_ins AFTER INSERT ON items FOR EACH ROW "
            "UPDATE effects SET n = n + 1"
        )
        cur.execute(
            "CREATE TRIGGER count_upd AFTER UPDATE ON items FOR EACH ROW "
            "UPDATE effects SET n = n + 1"
        )
        cur.execute(
            "CREATE TRIGGER count_del AFTER DELETE ON items FOR EACH ROW "
            "UPDATE effects SET n = n + 1"
        )
    conn.close()
    monkeypatch.setenv("SHARDCTL_SINK_SQL_PORT", str(stack.mysql_port))
    monkeypatch.setenv("SHARDCTL_SINK_SQL_USER", "root")
    monkeypatch.delenv("SHARDCTL_SINK_SQL_PASSWORD", raising=False)
    made = SqlSink(HandlerContext(options={"database": mysql_db, "scope": "test"}))
    yield made
    made.on_close()


def _query(stack: StackHandle, db: str, sql: str) -> list[tuple[Any, ...]]:
    conn = stack.mysql_root(db)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall())
    finally:
        conn.close()


def test_rows_and_offsets_commit_together_and_a_replayed_batch_has_no_effect(
    stack: StackHandle, mysql_db: str, sink: SqlSink
) -> None:
    sink.on_assign(2, 100)
    assert sink.resume_positions(2) == {}
    first = _batch(
        2,
        100,
        [
            _event(0, 2, 100),
            _event(1, 2, 100, data={"id": 1, "name": "b", "payload": "AAEC", "doc": {"a": [1]}}),
            _event(2, 2, 100),
            _event(3, 2, 100, kind="update", data={"id": 0, "name": "renamed"}),
            _event(4, 2, 100, kind="delete", data={"id": 2, "name": "n2"}),
        ],
    )
    sink.on_events(first)
    # Folded per key: row 0 written once (its insert and update), row 1 once, and row
    # 2 (inserted, then deleted) only deleted: there was nothing to delete.
    assert _query(stack, mysql_db, "SELECT n FROM effects") == [(2,)]
    rows = _query(stack, mysql_db, "SELECT id, name, payload, doc FROM items ORDER BY id")
    assert rows == [(0, "renamed", None, None), (1, "b", b"\x00\x01\x02", '{"a": [1]}')]
    assert sink.resume_positions(2) == {"orders": 5}
    assert _query(stack, mysql_db, "SELECT position, event_id, token FROM shardctl_offsets") == [
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
    assert _query(stack, mysql_db, "SELECT n FROM effects") == [(3,)], "a duplicate applied"
    assert sink.resume_positions(2) == {"orders": 6}


def test_a_change_the_reader_published_again_has_no_second_effect(
    stack: StackHandle, mysql_db: str, sink: SqlSink
) -> None:
    """After a CDC failover the reader publishes its tail again, at new offsets but with
    the same event ids: the sink applies each source change once."""
    sink.on_assign(1, 7)

    def change(offset: int, gtid_seq: int, row: int, topic: str = "orders") -> Event:
        return _event(
            offset,
            1,
            7,
            topic=topic,
            kind="update",
            data={"id": 1, "name": f"v{gtid_seq}.{row}"},
            event_id=f"0-1-{gtid_seq}#{row}",
            xid=gtid_seq,  # a replay repeats the transaction exactly
        )

    sink.on_events(_batch(1, 7, [_event(0, 1, 7, data={"id": 1, "name": "v0"})]))
    # Three changes to row 1 fold into one write.
    sink.on_events(_batch(1, 7, [change(1, 10, 0), change(2, 11, 0), change(3, 11, 1)]))
    assert _query(stack, mysql_db, "SELECT n FROM effects") == [(2,)]
    # The tail again (offsets 4-5 repeat gtid 11), then a new change.
    sink.on_events(_batch(1, 7, [change(4, 11, 0), change(5, 11, 1), change(6, 12, 0)]))
    assert _query(stack, mysql_db, "SELECT n FROM effects") == [(3,)], "a replayed change applied"
    assert _query(stack, mysql_db, "SELECT name FROM items WHERE id = 1") == [("v12.0",)]
    # Another topic of the same shard has its own order: an older GTID there still applies.
    sink.on_events(_batch(1, 7, [change(0, 9, 0, topic="customers")]))
    assert _query(stack, mysql_db, "SELECT n FROM effects") == [(4,)]


def test_a_stale_token_is_refused_and_writes_nothing(
    stack: StackHandle, mysql_db: str, sink: SqlSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink.on_assign(1, 7)
    sink.on_events(_batch(1, 7, [_event(0, 1, 7)]))
    # A new owner (token 9) takes the shard; the old one is now a zombie.
    newer = SqlSink(HandlerContext(options={"database": mysql_db, "scope": "test"}))
    try:
        newer.on_assign(1, 9)
        assert newer.resume_positions(1) == {"orders": 1}
        with pytest.raises(Fenced, match="token 7 is older than 9"):
            sink.on_events(_batch(1, 7, [_event(1, 1, 7), _event(2, 1, 7)]))
        assert _query(stack, mysql_db, "SELECT id FROM items") == [(0,)]
        assert _query(stack, mysql_db, "SELECT n FROM effects") == [(1,)]
        newer.on_events(_batch(1, 9, [_event(1, 1, 9)]))
        assert _query(stack, mysql_db, "SELECT token, position FROM shardctl_offsets") == [(9, 2)]
        # Another scope (another cluster) has fences of its own.
        other = SqlSink(HandlerContext(options={"database": mysql_db, "scope": "other"}))
        other.on_assign(1, 3)
        other.on_events(_batch(1, 3, [_event(7, 1, 3)]))
        other.on_close()
    finally:
        newer.on_close()
    assert _query(stack, mysql_db, "SELECT id FROM items ORDER BY id") == [(0,), (1,), (7,)]


def test_a_failing_event_rolls_back_its_whole_batch(
    stack: StackHandle, mysql_db: str, sink: SqlSink
) -> None:
    sink.on_assign(0, 5)
    bad = _event(1, 0, 5, data={"id": 1, "no_such_column": 1})
    with pytest.raises(LookupError, match="no column"):
        sink.on_events(_batch(0, 5, [_event(0, 0, 5), bad]))
    assert _query(stack, mysql_db, "SELECT COUNT(*) FROM items") == [(0,)]
    assert sink.resume_positions(0) == {}


def test_a_column_added_to_the_target_after_it_was_read_is_written(
    stack: StackHandle, mysql_db: str, sink: SqlSink
) -> None:
    """The sink reads a target table's columns once; an ALTER that followed the
    source's must not make it refuse (and dead-letter) the rows that use the column."""
    sink.on_assign(0, 7)
    sink.on_events(_batch(0, 7, [_event(0, 0, 7)]))
    conn = stack.mysql_root(mysql_db)
    with conn.cursor() as cur:
        cur.execute("ALTER TABLE items ADD COLUMN note VARCHAR(20) NULL")
    conn.close()
    sink.on_events(_batch(0, 7, [_event(1, 0, 7, data={"id": 1, "name": "b", "note": "new"})]))
    assert _query(stack, mysql_db, "SELECT id, note FROM items ORDER BY id") == [
        (0, None),
        (1, "new"),
    ]
    # A column the target really lacks is still refused, naming it.
    with pytest.raises(LookupError, match=r"has no column\(s\) \['missing'\]"):
        sink.on_events(_batch(0, 7, [_event(2, 0, 7, data={"id": 2, "missing": 1})]))


@pytest.mark.parametrize(
    ("fold", "writes"),
    # Folded: rows 1 and 2 deleted then written, row 3 deleted, rows 5 and 6 written
    # (row 4's delete finds nothing). Unfolded: each of the 12 changes writes one row,
    # the key move two.
    [(True, 7), (False, 13)],
)
def test_several_changes_to_one_key_end_in_the_state_of_the_last_one(
    stack: StackHandle, mysql_db: str, sink: SqlSink, fold: bool, writes: int
) -> None:
    sink.settings.fold_changes = fold
    sink.on_assign(0, 7)
    sink.on_events(
        _batch(0, 7, [row_event(n, "insert", {"id": n, "name": f"n{n}"}) for n in (1, 2, 3)])
    )
    batch = [row_event(4 + n, kind, data, old) for n, (kind, data, old) in enumerate(MIXED_CHANGES)]
    sink.on_events(_batch(0, 7, batch))
    assert (
        _query(stack, mysql_db, "SELECT id, name, payload FROM items ORDER BY id") == MIXED_RESULT
    )
    assert _query(stack, mysql_db, "SELECT n FROM effects") == [(3 + writes,)]
    assert sink.resume_positions(0) == {"orders": 4 + len(MIXED_CHANGES)}


def test_a_failure_in_the_middle_of_a_batch_rolls_back_data_and_offsets_together(
    stack: StackHandle, mysql_db: str, sink: SqlSink
) -> None:
    """The batch's DELETE statement has run when its upsert fails on the server: the
    delete, the rows before the bad one and the offsets are all rolled back."""
    conn = stack.mysql_root(mysql_db)
    with conn.cursor() as cur:
        cur.execute("ALTER TABLE items ADD CONSTRAINT no_bad_name CHECK (name <> 'bad')")
    conn.close()
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
    with pytest.raises(pymysql.err.OperationalError, match="no_bad_name"):
        sink.on_events(_batch(0, 7, failing))
    assert _query(stack, mysql_db, "SELECT id, name FROM items ORDER BY id") == [
        (0, "n0"),
        (1, "n1"),
    ]
    assert _query(stack, mysql_db, "SELECT n FROM effects") == [(2,)]
    assert sink.resume_positions(0) == {"orders": 2}
    # Without the bad row (as the worker's one-by-one retry sends it) the rest applies.
    sink.on_events(_batch(0, 7, failing[:2] + failing[3:]))
    assert _query(stack, mysql_db, "SELECT id, name FROM items ORDER BY id") == [
        (1, "changed"),
        (6, "n6"),
    ]
    assert sink.resume_positions(0) == {"orders": 6}


@pytest.mark.parametrize("sql_mode", ["", "NO_BACKSLASH_ESCAPES"])
def test_the_dialect_writes_values_in_as_pymysql_binds_them(
    stack: StackHandle, mysql_db: str, sql_mode: str
) -> None:
    """MariaDBDialect.execute writes the values into the statement itself (ints as
    digits, repeated strings escaped once): the server reads back exactly what
    PyMySQL's own binding sends, under either escaping mode."""
    values: list[Any] = [
        0,
        -(2**63),
        2**64 - 1,
        True,
        None,
        "it's",
        "back\\slash",
        "nul\x00byte",
        "it's",  # repeated: escaped once
        "ünïcödé 😀",
        Decimal("12345678901234567890.123456789"),
        b"\x00\xff'\\",
        1.5,
    ]
    statement = "SELECT " + ", ".join(["%s"] * len(values))
    conn = stack.mysql_root(mysql_db)
    try:
        with conn.cursor() as cur:
            cur.execute("SET SESSION sql_mode = %s", (sql_mode,))
            cur.execute(statement, values)
            bound = cur.fetchone()
            MariaDBDialect().execute(cur, statement, values)
            written = cur.fetchone()
    finally:
        conn.close()
    assert bound is not None
    assert written == bound
    assert written[5] == "it's" and written[7] == "nul\x00byte" and written[11] == b"\x00\xff'\\"
