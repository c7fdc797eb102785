"""Incremental snapshot logic: the window filter against an in-memory binlog,
the state machine, chunk SQL, progress and request documents."""

from __future__ import annotations

import dataclasses
import json
from decimal import Decimal
from typing import Any

import pymysql
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cdc.bootstrap import BootstrapRequest
from cdc.replication.position import BinlogPosition, Checkpoint
from cdc.snapshot.chunks import chunk_sql, connection_lost, decode_key, encode_key
from cdc.snapshot.control import SnapshotStatus
from cdc.snapshot.progress import Progress
from cdc.snapshot.state import Event, SnapshotState, TransitionError, transition
from cdc.snapshot.watermark import Watermark
from cdc.snapshot.window import ChunkWindow
from shardctl.cli.main import app

FILE = "bin.000001"

# A write: (key, value), value None for a delete.
writes = st.lists(st.tuples(st.integers(0, 25), st.none() | st.integers(0, 9)), max_size=6)
action = st.one_of(
    st.tuples(st.just("write"), writes),
    st.tuples(st.just("stream"), st.integers(1, 4)),
    st.tuples(st.just("chunk"), writes, writes, writes),
    st.tuples(st.just("hand_over")),
)


class _Simulation:
    """A table, its binlog, a lagging stream and the snapshot, all in memory. The
    window, watermarks and their comparisons are the real ones.

    A chunk is read as on the snapshot's thread: the read starts (from then on the
    stream's changes are noted), writes may commit before its low watermark, between
    the watermarks and after its SELECT; the stream may go on (past the high
    watermark, too) before the rows are handed over and the window opens."""

    def __init__(self, initial: dict[int, int], chunk_size: int) -> None:
        self.table = dict(initial)
        self.binlog: list[tuple[int, int | None]] = []  # event i ends at position i + 1
        self.streamed = 0
        self.out: list[tuple[str, int, int | None]] = [("bootstrap-start", -1, None)]
        self.chunk_size = chunk_size
        self.after: int | None = None
        self.finished = False
        self.window: ChunkWindow[tuple[int, int]] | None = None
        self.low: Watermark | None = None
        self.high: Watermark | None = None
        # A read done but not handed over: its watermarks and rows; and the stream's
        # changes noted since the read started.
        self.pending: tuple[Watermark, Watermark, list[tuple[int, int]]] | None = None
        self.noted: list[tuple[bytes, Checkpoint]] | None = None

    def position(self) -> Watermark:
        return Watermark("mariadb", BinlogPosition(FILE, len(self.binlog)), None)

    def write(self, changes: list[tuple[int, int | None]]) -> None:
        for key, value in changes:
            if value is None:
                self.table.pop(key, None)
            else:
                self.table[key] = value
            self.binlog.append((key, value))

    def stream(self, count: int) -> None:
        for _ in range(count):
            if self.streamed == len(self.binlog):
                return
            key, value = self.binlog[self.streamed]
            self.streamed += 1
            end = Checkpoint(FILE, self.streamed, None, 0, 1)
            if self.noted is not None:
                self.noted.append((_key(key), end))
            elif self.window is not None and self.low is not None and self.low.is_after(end):
                self.window.drop(_key(key))
            self.out.append(("change", key, value))
            self.release_if_reached()

    def release_if_reached(self) -> None:
        end = Checkpoint(FILE, self.streamed, None, 0, 1)
        if self.window is not None and self.high is not None and self.high.reached_by(end):
            for key, value in self.window.release():
                self.out.append(("bootstrap-insert", key, value))
            self.window = None

    def chunk(self, before_low: list[Any], before: list[Any], after_read: list[Any]) -> None:
        if self.window is not None or self.pending is not None or self.finished:
            return
        self.noted = []
        self.write(before_low)
        low = self.position()
        self.write(before)
        keys = sorted(k for k in self.table if self.after is None or k > self.after)
        rows = [(k, self.table[k]) for k in keys[: self.chunk_size]]
        self.write(after_read)
        self.pending = (low, self.position(), rows)

    def hand_over(self) -> None:
        if self.pending is None or self.noted is None:
            return
        (low, high, rows), self.pending = self.pending, None
        noted, self.noted = self.noted, None
        if not rows:
            self.out.append(("bootstrap-complete", -1, None))
            self.finished = True
            return
        self.after = rows[-1][0]
        self.window = ChunkWindow.opened(((_key(k), (k, v)) for k, v in rows), low, noted)
        self.low, self.high = low, high
        self.release_if_reached()


def _key(key: int) -> bytes:
    return json.dumps({"pk.id": key}).encode()


@settings(max_examples=300, deadline=None)
@given(
    initial=st.dictionaries(st.integers(0, 25), st.integers(0, 9), max_size=20),
    chunk_size=st.integers(1, 6),
    actions=st.lists(action, max_size=40),
)
def test_applying_the_stream_ends_equal_to_the_table(
    initial: dict[int, int], chunk_size: int, actions: list[tuple[Any, ...]]
) -> None:
    sim = _Simulation(initial, chunk_size)
    for kind, *args in actions:
        getattr(sim, kind)(*args)
    while not sim.finished:  # the rest of the snapshot, on an idle table
        sim.stream(len(sim.binlog))
        sim.hand_over()
        sim.stream(len(sim.binlog))
        sim.chunk([], [], [])
    sim.stream(len(sim.binlog))
    assert sim.window is None
    # A consumer that starts at bootstrap-start and applies everything in order.
    state: dict[int, int] = {}
    started = False
    for kind, key, value in sim.out:
        if kind == "bootstrap-start":
            started = True
        elif kind == "bootstrap-insert":
            state[key] = value  # type: ignore[assignment]
        elif kind == "change" and started:
            if value is None:
                state.pop(key, None)
            else:
                state[key] = value
    assert state == sim.table
    assert sim.out[-1][0] != "bootstrap-start"


def test_window_opened_drops_only_changes_after_its_low_watermark() -> None:
    low = Watermark("mariadb", BinlogPosition(FILE, 10), None)
    streamed = [(b"a", Checkpoint(FILE, 9, None, 0, 1)), (b"b", Checkpoint(FILE, 11, None, 0, 1))]
    window = ChunkWindow.opened([(b"a", 1), (b"b", 2), (b"c", 3)], low, streamed)
    assert (window.read, window.dropped) == (3, 1)
    assert window.release() == [1, 3]


def test_window_drops_and_releases_in_read_order() -> None:
    window = ChunkWindow.of([(b"a", 1), (b"b", 2), (b"c", 3)])
    window.drop(b"b")
    window.drop(b"zz")
    assert (window.read, window.dropped) == (3, 1)
    assert window.release() == [1, 3]
    assert window.release() == []


def test_state_machine_paths() -> None:
    state = transition(SnapshotState.PENDING, Event.START)
    assert state is SnapshotState.RUNNING
    state = transition(state, Event.READ)
    assert state is SnapshotState.WINDOW
    # A chunk in its window is finished before a pause takes effect.
    with pytest.raises(TransitionError, match="window cannot pause"):
        transition(state, Event.PAUSE)
    state = transition(transition(state, Event.RELEASED), Event.PAUSE)
    assert state is SnapshotState.PAUSED
    with pytest.raises(TransitionError):
        transition(state, Event.READ)
    state = transition(state, Event.RESUME)
    assert transition(state, Event.EXHAUSTED) is SnapshotState.DONE
    assert transition(SnapshotState.WINDOW, Event.CANCEL) is SnapshotState.CANCELLED
    assert transition(SnapshotState.PAUSED, Event.FAIL) is SnapshotState.FAILED
    assert transition(SnapshotState.DONE, Event.CANCEL) is SnapshotState.DONE
    with pytest.raises(TransitionError):
        transition(SnapshotState.DONE, Event.FAIL)


def test_chunk_sql_single_composite_and_where() -> None:
    sql, args = chunk_sql("db", "t`x", ("a",), None, None, 10)
    assert sql == "SELECT * FROM `db`.`t``x` ORDER BY `a` LIMIT 10"
    assert args == []
    sql, args = chunk_sql("db", "t", ("a", "b"), "v > 3", (1, "x"), 5)
    assert sql == (
        "SELECT * FROM `db`.`t` WHERE (v > 3) AND (`a`,`b`) > (%s,%s) ORDER BY `a`,`b` LIMIT 5"
    )
    assert args == [1, "x"]


def test_chunk_sql_stops_at_the_largest_key_of_the_start() -> None:
    sql, args = chunk_sql("db", "t", ("a", "b"), None, (1, "x"), 5, (9, "z"))
    assert sql == (
        "SELECT * FROM `db`.`t` WHERE (`a`,`b`) > (%s,%s) AND (`a`,`b`) <= (%s,%s)"
        " ORDER BY `a`,`b` LIMIT 5"
    )
    assert args == [1, "x", 9, "z"]


@given(
    st.lists(
        st.one_of(
            st.integers(-(2**63), 2**64),
            st.text(max_size=10),
            st.binary(max_size=10),
            st.decimals(allow_nan=False, allow_infinity=False, places=3),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_stored_keys_round_trip(key: list[Any]) -> None:
    stored = json.loads(json.dumps(encode_key(tuple(key))))
    assert decode_key(stored) == tuple(key)
    assert all(type(a) is type(b) for a, b in zip(decode_key(stored), key, strict=True))


def test_progress_document_round_trips_and_describes() -> None:
    progress = Progress("r1", "db.t", SnapshotState.RUNNING, [5, {"b64": "AA=="}], 2048, 4096, 2)
    assert Progress.from_json(progress.to_json()) == progress
    assert progress.describe() == "2048/~4096 rows (50%)"
    assert Progress("r", "db.t", SnapshotState.DONE, rows_done=7).describe() == "7 rows"


def test_requests_from_before_the_incremental_snapshot_are_blocking() -> None:
    old = b'{"id":"1","database":"db","table":"t","where":null,"error":null}'
    assert BootstrapRequest.from_json(old).blocking
    new = BootstrapRequest("2", "db", "t", rows_per_s=50.0, control="pause")
    assert BootstrapRequest.from_json(new.to_json()) == new
    assert not new.blocking
    with pytest.raises(ValueError, match="control"):
        BootstrapRequest.from_json(b'{"id":"1","database":"d","table":"t","control":"stop"}')
    assert Decimal("1.5") == decode_key(encode_key((Decimal("1.5"),)))[0]


@pytest.mark.parametrize(
    "args",
    [
        ["cdc", "bootstrap", "nodot"],
        ["cdc", "bootstrap", "--where", "id > 1", "nodot"],
        ["cdc", "bootstrap", "start", "nodot"],
        ["cdc", "bootstrap", "db.t", "--blocking", "--rows-per-s", "10"],
    ],
)
def test_bootstrap_command_keeps_its_short_form(args: list[str]) -> None:
    # `cdc bootstrap db.table` is `cdc bootstrap start db.table`; both refuse bad
    # usage with exit 2 before contacting anything.
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert "error: bootstrap:" in result.output


def test_status_of_a_snapshot_from_its_request_and_progress() -> None:
    request = BootstrapRequest("r1", "db", "t", where="id > 5")
    running = Progress("r1", "db.t", SnapshotState.RUNNING, rows_done=10, rows_estimated=40)
    assert SnapshotStatus("r1", "db.t", request, None).state == "pending"
    assert SnapshotStatus("r1", "db.t", request, running).state == "running"
    pausing = dataclasses.replace(request, control="pause")
    assert SnapshotStatus("r1", "db.t", pausing, running).state == "pausing"
    done = dataclasses.replace(running, state=SnapshotState.DONE)
    assert SnapshotStatus("r1", "db.t", None, done).state == "done"
    failed = dataclasses.replace(request, error="no primary key")
    status = SnapshotStatus("r1", "db.t", failed, None)
    assert status.state == "failed"
    assert status.line() == (
        "r1  db.t  incremental  failed  -  where id > 5  error: no primary key"
    )
    assert SnapshotStatus("r1", "db.t", request, running).line() == (
        "r1  db.t  incremental  running  10/~40 rows (25%)  where id > 5"
    )


def test_a_lost_connection_is_told_from_a_failed_query() -> None:
    lost = [
        pymysql.err.OperationalError(2013, "Lost connection to server during query"),
        pymysql.err.OperationalError(2006, "Server has gone away"),
        pymysql.err.OperationalError(1927, "Connection was killed"),
        pymysql.err.InterfaceError(0, ""),
    ]
    assert all(connection_lost(exc) for exc in lost)
    failed = [
        pymysql.err.ProgrammingError(1146, "Table 'db.t' doesn't exist"),
        pymysql.err.OperationalError(1054, "Unknown column 'v' in 'SELECT'"),
        pymysql.err.OperationalError(),
    ]
    assert not any(connection_lost(exc) for exc in failed)
