"""Runs incremental snapshots beside the leading reader's stream (see `cdc.snapshot`).

The reader calls `observe` with every chunk of streamed messages before it
publishes them, `step` at every transaction boundary, and iterates the stream
through `paced`. One snapshot runs at a time, oldest request first.

Where the time goes, and who spends it:

- reading a chunk (low watermark, SELECT, high watermark, building its messages)
  is a job on the snapshot's thread (`background.py`), on the chunk reader's own
  server connection; the stream goes on meanwhile, and the changes it publishes
  are noted for the chunk's window (`window.py`);
- the rest (opening the window when the rows are in, releasing it once the
  stream reaches the high watermark, storing progress, requests and control) is
  done under the snapshot's lock, at a transaction boundary: by the reader's loop
  at each boundary, or by the snapshot's thread while the loop waits for the
  stream;
- progress is stored once acknowledged: a released chunk's messages, and every
  message of the snapshot before them, must be delivered before its last key is
  stored (an etcd write that runs while the stream goes on), and the next chunk
  is released only after that store. So the stream never waits on the broker or
  on etcd for a snapshot, and a crash publishes again at most the one chunk
  released after the stored key.

A chunk in flight: read (its job) -> window (rows buffered until the stream
reaches the high watermark) -> released (sent) -> acknowledged -> stored. The
next chunk's read runs while the released one is acknowledged and stored.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import pymysql

from cdc.acks import AckTracker
from cdc.bootstrap import BootstrapError, BootstrapRequest, edge_messages, insert_message
from cdc.etcd_calls import call_with_retry
from cdc.leader_context import LeaderContext
from cdc.producers.base import Outgoing, Producer
from cdc.replication.position import Checkpoint
from cdc.replication.server_check import ServerInfo, check_server
from cdc.snapshot.background import SnapshotThread
from cdc.snapshot.chunks import (
    ChunkReader,
    KeyValues,
    connection_lost,
    decode_key,
    encode_key,
)
from cdc.snapshot.new_tables import NewTables
from cdc.snapshot.progress import Progress
from cdc.snapshot.state import Event, SnapshotState, transition
from cdc.snapshot.watermark import Watermark, read_watermark
from cdc.snapshot.window import ChunkWindow
from cdc.stage import Chunk
from shardctl.core.backoff import Backoff
from shardctl.core.etcd.client import Delete, EtcdUnavailable, KeyValue, Put
from shardctl.core.etcd.election import NotLeader
from shardctl.core.etcd.watch import Mirror

log = logging.getLogger(__name__)

T = TypeVar("T")

# How often the request (watched) is looked at for the operator's pause, resume or
# cancel.
_CONTROL_CHECK_S = 0.25
# Heartbeats after a chunk's high watermark that release it when the stream
# shows no transaction reaching it (an idle source whose binlog only gained
# non-transaction events). The first could have been sent before the watermark.
_HEARTBEATS_TO_RELEASE = 2
# How soon the snapshot's thread takes its next turn: while a chunk is in flight
# (its read, window, acknowledgement or store), and otherwise.
_BUSY_S = 0.005
_IDLE_S = 0.25
# How long a chunk's read tries again after losing its server connection (a
# server restart, a killed connection) before the snapshot fails.
_RECONNECT_FOR_S = 60.0


@dataclass(frozen=True, slots=True)
class ChunkRead:
    """What a chunk's read job hands over."""

    low: Watermark
    high: Watermark
    messages: list[tuple[bytes, Outgoing]]  # (key, bootstrap-insert), in key order
    last_key: KeyValues | None  # of the last row read; None when no row was left
    started: float  # monotonic time the read began (for the rate limit)


@dataclass(frozen=True)
class _Opening:
    request: BootstrapRequest
    request_key: str
    progress: Progress
    reader: concurrent.futures.Future[tuple[ChunkReader, int]]


@dataclass
class _Active:
    request: BootstrapRequest
    request_key: str
    progress_key: str
    reader: ChunkReader
    progress: Progress  # as released (state, last key, rows, chunks)
    after: KeyValues | None
    # Progress of the last acknowledged chunk: what is (being) stored.
    durable: Progress
    # Delivery of the snapshot's messages, a chunk (or edge) at a time; each
    # registered with the progress that may be stored once it is delivered.
    acks: AckTracker[Progress] = field(default_factory=AckTracker)
    store: concurrent.futures.Future[Any] | None = None  # the progress write in flight
    dirty: bool = False  # progress (or state) changed since the last store was sent
    fetch: concurrent.futures.Future[ChunkRead] | None = None  # the read in flight
    # Changes the stream published while the read was in flight: (key, end).
    streamed: list[tuple[bytes, Checkpoint]] = field(default_factory=list)
    window: ChunkWindow[Outgoing] | None = None
    low: Watermark | None = None
    high: Watermark | None = None
    chunk_last_key: KeyValues | None = None
    heartbeats: int = 0
    read_started: float = 0.0
    next_read_at: float = 0.0
    next_control_check: float = 0.0
    completing: bool = False  # bootstrap-complete sent; done once it is delivered

    @property
    def name(self) -> str:
        return f"{self.request.id} of {self.progress.table}"

    def settled(self) -> bool:
        """Everything sent is delivered and its progress stored."""
        return self.acks.in_flight == 0 and self.store is None and not self.dirty


def _close_opened(future: concurrent.futures.Future[tuple[ChunkReader, int]]) -> None:
    if future.cancelled() or future.exception() is not None:
        return  # no connection was made
    reader, _ = future.result()
    try:
        reader.close()
    except pymysql.err.MySQLError as exc:
        log.warning("snapshot of %s: closing its connection: %s", reader.name, exc)


class IncrementalSnapshots:
    def __init__(self, context: LeaderContext, stopping: Callable[[], bool]) -> None:
        self._ctx = context
        self._stopping = stopping
        self._requests = context.keyspace.cdc_bootstrap_prefix(context.options.source)
        self._progress = context.keyspace.cdc_snapshot_prefix(context.options.source)
        self._timeout = 10.0
        self._next_poll = 0.0
        self._server: ServerInfo | None = None  # read on the snapshot's thread
        self._mirror: Mirror | None = None
        self._thread = SnapshotThread(f"cdc-{context.options.source}-snapshot", self._turn)
        self._new_tables = NewTables(context)
        self._filter_checked = False
        self._next_filter_check = 0.0
        self._opening: _Opening | None = None  # a snapshot whose connection is being made
        # The stream's side, as of its last transaction boundary (under the lock).
        self._producer: Producer | None = None
        self._tracker: AckTracker[Checkpoint] | None = None
        self._published: Checkpoint | None = None
        self._in_transaction = False
        self.active: _Active | None = None
        self.completed = 0

    # -- the stream's side ------------------------------------------------------

    def paced(self, items: Iterable[T]) -> Iterator[T]:
        """The stream's items; while the reader waits for the next one, the snapshot's
        thread may move the snapshot on (see `background.py`)."""
        return self._thread.paced(items)

    def observe(self, chunk: Chunk) -> None:
        """Drop from the buffered chunk every key this streamed transaction changes,
        if it committed after the chunk's low watermark; note the keys while the
        chunk is being read."""
        self._in_transaction = not chunk.last
        if chunk.statement is not None:
            self._new_tables.renamed(chunk.statement, chunk.ctx)
        active = self.active
        if active is None:
            return
        reading = active.fetch is not None
        window = active.window
        if not reading and (
            window is None or active.low is None or not active.low.is_after(chunk.end)
        ):
            return
        database, table = active.request.database, active.request.table
        for message in chunk.messages:
            if message.table != table or message.database != database:
                continue
            keys = [message.key]
            old_key = self._old_key(active, message)
            if old_key is not None:
                keys.append(old_key)
            for key in keys:
                if reading:
                    active.streamed.append((key, chunk.end))
                elif window is not None:
                    window.drop(key)

    def _old_key(self, active: _Active, message: Outgoing) -> bytes | None:
        """With `primary_key_change = update`, an update that changes the key moves
        the row away from its old key: that key is dropped too."""
        if self._ctx.options.primary_key_change != "update":
            return None
        doc = json.loads(message.value)
        old = doc.get("old")
        if doc.get("type") != "update" or not isinstance(old, dict):
            return None
        table = active.reader.definition
        if not any(pk in old for pk in table.primary_key):
            return None
        before = {**doc.get("data", {}), **old}
        return insert_message(self._ctx.publisher, table, "", before).key

    def step(
        self,
        producer: Producer,
        tracker: AckTracker[Checkpoint],
        published: Checkpoint,
        heartbeat: bool = False,
    ) -> None:
        """At a transaction boundary (`published` is the stream's last end): open the
        window of a chunk just read, release one whose high watermark the stream
        reached, store acknowledged progress, start the next read, or pick up a
        request. Never waits for a read, a delivery or a store."""
        if self._thread.error is not None:
            raise self._thread.error
        self._producer, self._tracker, self._published = producer, tracker, published
        self._in_transaction = False
        active = self.active
        if heartbeat and active is not None and active.window is not None:
            # A heartbeat counts for the chunk whose window was open when it came.
            active.heartbeats += 1
        self._advance()

    def _turn(self) -> float:
        """The snapshot thread's turn (under the lock): seconds until the next."""
        if self._in_transaction or self._published is None:
            # Nothing to move on: with no snapshot under way, idle waits keep this
            # thread from contending with a busy stream for the interpreter.
            busy = self.active is not None or self._opening is not None
            return _BUSY_S if busy else _IDLE_S
        return self._advance()

    # -- moving on ----------------------------------------------------------------

    def _advance(self) -> float:
        try:
            return self._advance_active()
        except EtcdUnavailable as exc:
            # Like the checkpoint, progress only lags: it is stored again later, and a
            # request not yet read is read at the next poll.
            log.warning(
                "source %s: snapshot progress not stored: %s", self._ctx.options.source, exc
            )
            return _IDLE_S

    def _advance_active(self) -> float:
        now = time.monotonic()
        if not self._filter_checked and now >= self._next_filter_check:
            # Once per lead; after an etcd failure, again at the next poll.
            self._next_filter_check = now + self._ctx.options.bootstrap_poll_s
            self._new_tables.filter_changed()
            self._filter_checked = True
        opening = self._opening
        if opening is not None:
            if not opening.reader.done():
                return _BUSY_S
            self._opening = None
            self._opened(opening)
        if self.active is None:
            # A new request shows in the watch at once; the poll is a fallback.
            changed = self._mirror is not None and self._mirror.changed.is_set()
            if now < self._next_poll and not changed:
                return _IDLE_S
            self._next_poll = now + self._ctx.options.bootstrap_poll_s
            self._take_next()
            if self.active is None:
                return _BUSY_S if self._opening is not None else _IDLE_S
        active = self.active
        assert self._producer is not None
        try:
            self._producer.poll(0)
            self._collect(active)
            if active.fetch is not None:
                if not active.fetch.done():
                    return _BUSY_S
                self._open_window(active)
            if active.completing:
                if not active.settled():
                    return _BUSY_S
                self._finish(active, transition(active.progress.state, Event.EXHAUSTED))
                return _IDLE_S
            if active.window is not None:
                # The chunk before is stored first: a crash publishes at most one
                # chunk again.
                if not self._reached(active) or not active.settled():
                    return _BUSY_S
                self._release(active)
            return self._next_read(active, now)
        except BootstrapError as exc:
            self._fail(active, str(exc))
        except pymysql.err.MySQLError as exc:
            where = "at its start" if active.after is None else f"after key {list(active.after)}"
            self._fail(active, f"bootstrap {active.name}, reading {where}: {exc}")
        return _IDLE_S

    def _next_read(self, active: _Active, now: float) -> float:
        if self._stopping():
            return _IDLE_S
        if now >= active.next_control_check and not self._control(active):
            return _IDLE_S
        if active.progress.state is SnapshotState.PAUSED:
            return _CONTROL_CHECK_S
        if now < active.next_read_at:
            return min(active.next_read_at - now, _CONTROL_CHECK_S)
        if not self._ctx.leadership.session.is_valid():
            raise NotLeader(f"snapshot {active.name}: leadership lost")
        active.progress = dataclasses.replace(
            active.progress, state=transition(active.progress.state, Event.READ)
        )
        active.read_started = now
        active.streamed = []
        active.fetch = self._thread.submit(
            partial(
                self._read_chunk,
                active.reader,
                active.request.id,
                active.name,
                active.after,
                active.progress.rows_done,
            )
        )
        return _BUSY_S

    def _reached(self, active: _Active) -> bool:
        assert active.high is not None and self._published is not None
        return (
            active.high.reached_by(self._published) or active.heartbeats >= _HEARTBEATS_TO_RELEASE
        )

    # -- requests ----------------------------------------------------------------

    def _take_next(self) -> None:
        for kv in sorted(self._request_keys().values(), key=lambda kv: kv.key):
            try:
                request = BootstrapRequest.from_json(kv.value)
            except (ValueError, KeyError, TypeError) as exc:
                log.error("bootstrap request %s is unreadable: %s", kv.key, exc)
                continue
            if request.error is not None or request.blocking:
                continue
            self._begin(request, kv.key)
            if self._opening is not None:
                return

    def _request_keys(self) -> dict[str, KeyValue]:
        """The request keys, from a watch of their prefix (read once when the watch
        is not ready yet or has stopped)."""
        if self._mirror is None:
            self._mirror = self._ctx.loop.run(self._start_mirror(), timeout=self._timeout)
        seen = self._ctx.loop.run(self._mirror_items(self._mirror), timeout=self._timeout)
        if seen is not None:
            return seen
        listing = call_with_retry(
            self._ctx.loop,
            lambda: self._ctx.client.get_prefix(self._requests),
            f"reading {self._requests}",
            deadline_s=5.0,
            timeout_s=self._timeout,
        )
        return {kv.key: kv for kv in listing.items}

    async def _start_mirror(self) -> Mirror:
        return Mirror(self._ctx.client, self._requests).start()

    @staticmethod
    async def _mirror_items(mirror: Mirror) -> dict[str, KeyValue] | None:
        try:
            mirror.check()
        except RuntimeError as exc:
            log.warning("bootstrap requests: %s; reading them instead", exc)
            return None
        if not mirror.ready.is_set():
            return None
        mirror.changed.clear()
        return dict(mirror.items)

    def _begin(self, request: BootstrapRequest, key: str) -> None:
        name = f"{request.database}.{request.table}"
        progress_key = self._progress + request.id
        stored = call_with_retry(
            self._ctx.loop,
            lambda: self._ctx.client.get(progress_key),
            f"reading {progress_key}",
            timeout_s=self._timeout,
        )
        progress = (
            Progress.from_json(stored.value)
            if stored is not None
            else Progress(request.id, name, SnapshotState.PENDING)
        )
        if progress.state.final:
            # Finished, but the request was not removed (a crash in between).
            self._write([Delete(key)], f"removing {key}")
            return
        if request.control == "cancel" and progress.state is SnapshotState.PENDING:
            # Cancelled before it started: nothing was published, nothing is.
            cancelled = dataclasses.replace(
                progress, state=transition(progress.state, Event.CANCEL), updated=time.time()
            )
            self._write([Delete(key), Put(progress_key, cancelled.to_json())], f"cancelling {key}")
            log.info("snapshot %s of %s cancelled before it started", request.id, name)
            return
        if not self._ctx.row_filter.includes_table(request.database, request.table):
            error = f"bootstrap of {name}: the table is excluded by cdc.filter"
            self._fail_request(request, key, progress, error)
            return
        # The connection and the table's columns, largest key and size: read on the
        # snapshot's thread while the stream goes on (`_opened` takes them in).
        self._opening = _Opening(
            request, key, progress, self._thread.submit(partial(self._open_reader, request))
        )

    def _open_reader(self, request: BootstrapRequest) -> tuple[ChunkReader, int]:
        reader = ChunkReader(
            self._ctx.connect,
            request.database,
            request.table,
            request.where,
            self._ctx.options.snapshot_chunk_size,
        )
        try:
            return reader, reader.estimated_rows()
        except BaseException:
            reader.close()
            raise

    def _opened(self, opening: _Opening) -> None:
        request, key, progress = opening.request, opening.request_key, opening.progress
        name = f"{request.database}.{request.table}"
        progress_key = self._progress + request.id
        try:
            reader, estimate = opening.reader.result()
        except BootstrapError as exc:
            self._fail_request(request, key, progress, str(exc))
            return
        except pymysql.err.MySQLError as exc:
            self._fail_request(request, key, progress, f"bootstrap of {name}: {exc}")
            return
        if progress.state is SnapshotState.WINDOW:
            progress = dataclasses.replace(progress, state=SnapshotState.RUNNING)
        after = decode_key(progress.last_key) if progress.last_key is not None else None
        active = _Active(request, key, progress_key, reader, progress, after, durable=progress)
        self.active = active
        try:
            if progress.state is SnapshotState.PENDING:
                progress = dataclasses.replace(progress, rows_estimated=estimate)
                active.progress = dataclasses.replace(
                    progress, state=transition(progress.state, Event.START)
                )
                start = edge_messages(
                    self._ctx.publisher,
                    "bootstrap-start",
                    reader.definition,
                    f"bootstrap:{request.id}#start",
                )
                # Stored as running once delivered.
                self._send(active, start, active.progress)
                log.info(
                    "snapshot %s started (%s); chunks of %d rows",
                    active.name,
                    active.progress.describe(),
                    reader.size,
                )
            else:
                log.info(
                    "snapshot %s resumes after key %s (%s)",
                    active.name,
                    progress.last_key,
                    progress.describe(),
                )
        except BootstrapError as exc:
            self._fail(active, str(exc))

    def _control(self, active: _Active) -> bool:
        """Apply the operator's control; False when the snapshot stopped (cancelled)."""
        active.next_control_check = time.monotonic() + _CONTROL_CHECK_S
        kv = self._request_keys().get(active.request_key)
        control = "cancel" if kv is None else BootstrapRequest.from_json(kv.value).control
        state = active.progress.state
        if control == "cancel":
            self._finish(active, transition(state, Event.CANCEL))
            return False
        event = Event.PAUSE if control == "pause" else Event.RESUME
        after = transition(state, event)
        if after is not state:
            active.progress = dataclasses.replace(active.progress, state=after)
            # A pause is stored once the chunk released last is delivered (its ack
            # stores the progress, with the state): a stored "paused" then keeps its
            # rows_done until resumed.
            if after is not SnapshotState.PAUSED or active.acks.in_flight == 0:
                active.dirty = True
            self._collect(active)
            log.info("snapshot %s: %s", active.name, after.value)
        return True

    # -- chunks ----------------------------------------------------------------

    def _read_chunk(
        self, reader: ChunkReader, request_id: str, name: str, after: KeyValues | None, base: int
    ) -> ChunkRead:
        """A chunk's read, on the snapshot's thread (its connection is used by no other).
        A lost connection is opened again and the chunk read again, for up to
        `_RECONNECT_FOR_S`; nothing of the chunk was published, so nothing repeats."""
        backoff = Backoff()
        give_up = time.monotonic() + _RECONNECT_FOR_S
        while True:
            try:
                return self._read_chunk_once(reader, request_id, name, after, base)
            except pymysql.err.MySQLError as exc:
                delay = backoff.next()
                if (
                    not connection_lost(exc)
                    or self._stopping()
                    or time.monotonic() + delay > give_up
                ):
                    raise
                where = "at its start" if after is None else f"after key {list(after)}"
                log.warning(
                    "snapshot %s: the server connection was lost reading %s (%s); "
                    "reconnecting in %.1fs",
                    name,
                    where,
                    exc,
                    delay,
                )
            time.sleep(delay)
            try:
                reader.reconnect()
            except pymysql.err.MySQLError as exc:
                if not connection_lost(exc) or time.monotonic() > give_up:
                    raise
                log.warning("snapshot %s: reconnecting: %s", name, exc)

    def _read_chunk_once(
        self, reader: ChunkReader, request_id: str, name: str, after: KeyValues | None, base: int
    ) -> ChunkRead:
        started = time.monotonic()
        connection = reader.connection
        if self._server is None:
            self._server = check_server(connection, self._ctx.options.server_id)
        low = read_watermark(connection, self._server)
        rows = reader.read(after, name)
        high = read_watermark(connection, self._server)
        table = reader.definition
        messages = [
            (message.key, message)
            for message in (
                insert_message(
                    self._ctx.publisher, table, f"bootstrap:{request_id}#{base + i}", row.data
                )
                for i, row in enumerate(rows, start=1)
            )
        ]
        return ChunkRead(low, high, messages, rows[-1].key if rows else None, started)

    def _open_window(self, active: _Active) -> None:
        """The read is in: buffer its rows (or, when none was left, complete)."""
        assert active.fetch is not None
        fetch, active.fetch = active.fetch, None
        streamed, active.streamed = active.streamed, []
        read = fetch.result()  # a read's error is raised here, on the lead's side
        if read.last_key is None:
            active.progress = dataclasses.replace(active.progress, state=SnapshotState.RUNNING)
            complete = edge_messages(
                self._ctx.publisher,
                "bootstrap-complete",
                active.reader.definition,
                f"bootstrap:{active.request.id}#complete",
            )
            # Delivered in full before the request is removed: a crash before that
            # publishes the complete again (same event ids).
            self._send(active, complete, active.progress)
            active.completing = True
            return
        active.window = ChunkWindow.opened(read.messages, read.low, streamed)
        active.low, active.high, active.heartbeats = read.low, read.high, 0
        active.chunk_last_key = read.last_key
        active.read_started = read.started

    def _release(self, active: _Active) -> None:
        window = active.window
        assert window is not None
        messages = window.release()
        active.after = active.chunk_last_key
        progress = active.progress
        active.progress = dataclasses.replace(
            progress,
            state=transition(progress.state, Event.RELEASED),
            last_key=encode_key(active.after) if active.after is not None else None,
            rows_done=progress.rows_done + window.read,
            chunks=progress.chunks + 1,
        )
        active.window = None
        # Progress moves only past delivered rows (stored once acknowledged): a crash
        # before the store reads this chunk again (the one chunk in flight).
        self._send(active, messages, active.progress)
        rate = active.request.rows_per_s
        if rate:
            active.next_read_at = active.read_started + window.read / rate
        log.debug(
            "snapshot %s: chunk %d released, %d rows published, %d dropped for newer changes",
            active.name,
            active.progress.chunks,
            len(messages),
            window.dropped,
        )

    # -- delivery, etcd and ends -----------------------------------------------------

    def _send(self, active: _Active, messages: list[Outgoing], progress: Progress) -> None:
        """Publish `messages`; `progress` is stored once they (and all before) are
        delivered."""
        assert self._producer is not None and self._tracker is not None
        assert self._published is not None
        # Registered with the stream's last end: their acks vouch for nothing newer.
        tracker, acks = self._tracker, active.acks
        seq = tracker.open(self._published, len(messages))
        own = acks.open(progress, len(messages))

        def ack() -> None:
            tracker.ack(seq)
            acks.ack(own)

        self._producer.send_many(messages, ack)
        self._producer.poll(0)
        self._collect(active)

    def _collect(self, active: _Active) -> None:
        """Store the progress of the newest acknowledged chunk (one write at a time,
        in order), and take in the result of the write before."""
        store = active.store
        if store is not None:
            if not store.done():
                return
            active.store = None
            try:
                store.result()
            except (EtcdUnavailable, TimeoutError) as exc:
                log.warning("snapshot %s: progress not stored yet: %s", active.name, exc)
                active.dirty = True
        safe = active.acks.safe()
        if safe is not None and safe is not active.durable:
            active.durable = safe
            active.dirty = True
        if active.dirty:
            active.dirty = False
            doc = self._document(active, active.progress.state)
            active.store = self._ctx.loop.submit(
                self._ctx.leadership.guarded_txn([Put(active.progress_key, doc.to_json())])
            )

    @staticmethod
    def _document(active: _Active, state: SnapshotState) -> Progress:
        """What is stored: the state now, the position of the last delivered chunk (a
        chunk's window is not stored: it is read again after a crash)."""
        durable = active.durable
        return dataclasses.replace(
            active.progress,
            state=SnapshotState.RUNNING if state is SnapshotState.WINDOW else state,
            last_key=durable.last_key,
            rows_done=durable.rows_done,
            chunks=durable.chunks,
            updated=time.time(),
        )

    def _wait_for_store(self, active: _Active) -> None:
        """The progress write in flight is done before a last one is written."""
        store, active.store = active.store, None
        if store is None:
            return
        try:
            store.result(timeout=self._timeout)
        except (EtcdUnavailable, TimeoutError, concurrent.futures.TimeoutError) as exc:
            log.warning("snapshot %s: progress not stored: %s", active.name, exc)

    def _write(self, ops: list[Put | Delete], what: str) -> None:
        # Fenced by the leadership, like the checkpoint: NotLeader ends the lead.
        call_with_retry(
            self._ctx.loop,
            lambda: self._ctx.leadership.guarded_txn(ops),
            what,
            timeout_s=self._timeout,
        )

    def _finish(self, active: _Active, state: SnapshotState) -> None:
        self._wait_for_store(active)
        active.progress = self._document(active, state)
        self._close()
        self._write(
            [Delete(active.request_key), Put(active.progress_key, active.progress.to_json())],
            f"ending {active.request_key}",
        )
        if state is SnapshotState.DONE:
            self.completed += 1
        log.info("snapshot %s %s: %s", active.name, state.value, active.progress.describe())

    def _fail(self, active: _Active, error: str) -> None:
        self._wait_for_store(active)
        self._close()
        self._fail_request(
            active.request, active.request_key, self._document(active, active.progress.state), error
        )

    def _fail_request(
        self, request: BootstrapRequest, key: str, progress: Progress, error: str
    ) -> None:
        log.error("snapshot %s of %s failed: %s", request.id, progress.table, error)
        failed = dataclasses.replace(
            progress, state=transition(progress.state, Event.FAIL), error=error, updated=time.time()
        )
        self._write(
            [
                Put(key, dataclasses.replace(request, error=error).to_json()),
                Put(self._progress + request.id, failed.to_json()),
            ],
            f"marking {key} failed",
        )

    def _close(self) -> None:
        active, self.active = self.active, None
        if active is not None:
            # After the read in flight, if any, on the thread that reads.
            self._thread.submit(partial(self._close_reader, active))

    @staticmethod
    def _close_reader(active: _Active) -> None:
        try:
            active.reader.close()
        except pymysql.err.MySQLError as exc:
            log.warning("snapshot %s: closing its connection: %s", active.name, exc)

    def close(self) -> None:
        with self._thread.lock:  # the thread's turn, if one is running, ends first
            self._thread.end_turns()
            self._close()
            opening, self._opening = self._opening, None
            if opening is not None:
                # Runs on the snapshot's thread once the connection is made.
                opening.reader.add_done_callback(_close_opened)
        self._thread.stop()  # after closing the reader's connection on it
        mirror, self._mirror = self._mirror, None
        if mirror is not None:
            try:
                self._ctx.loop.run(mirror.stop(), timeout=self._timeout)
            except TimeoutError:
                log.warning("bootstrap requests: the watch did not stop in time")
