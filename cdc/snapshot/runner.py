"""Runs incremental snapshots inside the leading reader's stream (see `cdc.snapshot`).

The reader calls `observe` with every chunk of streamed messages before it
publishes them, and `step` at every transaction boundary and idle moment. One
snapshot runs at a time, oldest request first; everything here is done between
two transactions, so the stream never stops for more than one chunk's SELECT
and the publishing of its rows.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import pymysql

from cdc.acks import AckTracker
from cdc.bootstrap import BootstrapError, BootstrapRequest, edge_messages, insert_message
from cdc.etcd_calls import call_with_retry
from cdc.filtering import Filter
from cdc.options import CdcOptions
from cdc.producers.base import Outgoing, Producer
from cdc.publisher import Publisher
from cdc.replication.position import Checkpoint
from cdc.replication.server_check import ServerInfo, check_server
from cdc.snapshot.chunks import ChunkReader, KeyValues, decode_key, encode_key
from cdc.snapshot.progress import Progress
from cdc.snapshot.state import Event, SnapshotState, transition
from cdc.snapshot.watermark import Watermark, read_watermark
from cdc.snapshot.window import ChunkWindow
from cdc.stage import Chunk
from shardctl.core import health
from shardctl.core.etcd.client import Delete, EtcdClient, EtcdUnavailable, KeyValue, Put
from shardctl.core.etcd.election import Leadership, NotLeader
from shardctl.core.etcd.loop_thread import LoopThread
from shardctl.core.etcd.watch import Mirror
from shardctl.core.keyspace import Keyspace

log = logging.getLogger(__name__)

# How often the request (watched) is looked at for the operator's pause, resume or
# cancel.
_CONTROL_CHECK_S = 0.25
# Heartbeats after a chunk's high watermark that release it when the stream
# shows no transaction reaching it (an idle source whose binlog only gained
# non-transaction events). The first could have been sent before the watermark.
_HEARTBEATS_TO_RELEASE = 2
# Longest run of chunks read in one go on an idle source before the reader's loop
# gets control back.
_LOOP_BUDGET_S = 5.0


@dataclass
class _Active:
    request: BootstrapRequest
    request_key: str
    progress_key: str
    reader: ChunkReader
    progress: Progress
    after: KeyValues | None
    window: ChunkWindow[Outgoing] | None = None
    low: Watermark | None = None
    high: Watermark | None = None
    chunk_last_key: KeyValues | None = None
    heartbeats: int = 0
    read_started: float = 0.0
    next_read_at: float = 0.0
    next_control_check: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.request.id} of {self.progress.table}"


class IncrementalSnapshots:
    def __init__(
        self,
        loop: LoopThread,
        client: EtcdClient,
        keyspace: Keyspace,
        options: CdcOptions,
        connect: dict[str, Any],
        publisher: Publisher,
        row_filter: Filter,
        leadership: Leadership,
        stopping: Callable[[], bool],
    ) -> None:
        self._loop = loop
        self._stopping = stopping
        self._client = client
        self._requests = keyspace.cdc_bootstrap_prefix(options.source)
        self._progress = keyspace.cdc_snapshot_prefix(options.source)
        self._options = options
        self._connect = connect
        self._publisher = publisher
        self._filter = row_filter
        self._leadership = leadership
        self._timeout = 10.0
        self._next_poll = 0.0
        self._server: ServerInfo | None = None
        self._mirror: Mirror | None = None
        self.active: _Active | None = None
        self.completed = 0

    # -- the stream's side ------------------------------------------------------

    def observe(self, chunk: Chunk) -> None:
        """Drop from the buffered chunk every key this streamed transaction changes,
        if it committed after the chunk's low watermark."""
        active = self.active
        if active is None or active.window is None or active.low is None:
            return
        if not active.low.is_after(chunk.end):
            return
        database, table = active.request.database, active.request.table
        for message in chunk.messages:
            if message.table == table and message.database == database:
                active.window.drop(message.key)
                old_key = self._old_key(active, message)
                if old_key is not None:
                    active.window.drop(old_key)

    def _old_key(self, active: _Active, message: Outgoing) -> bytes | None:
        """With `primary_key_change = update`, an update that changes the key moves
        the row away from its old key: that key is dropped too."""
        if self._options.primary_key_change != "update":
            return None
        doc = json.loads(message.value)
        old = doc.get("old")
        if doc.get("type") != "update" or not isinstance(old, dict):
            return None
        table = active.reader.definition
        if not any(pk in old for pk in table.primary_key):
            return None
        before = {**doc.get("data", {}), **old}
        return insert_message(self._publisher, table, "", before).key

    def step(
        self,
        producer: Producer,
        tracker: AckTracker[Checkpoint],
        published: Checkpoint,
        heartbeat: bool = False,
    ) -> None:
        """At a transaction boundary (`published` is the stream's last end): release
        a chunk whose high watermark the stream reached, read the next one, or pick
        up a request."""
        try:
            self._step(producer, tracker, published, heartbeat)
        except EtcdUnavailable as exc:
            # Like the checkpoint, progress only lags: it is stored again after the
            # next chunk, and a request not yet read is read at the next poll.
            log.warning("source %s: snapshot progress not stored: %s", self._options.source, exc)

    def _step(
        self,
        producer: Producer,
        tracker: AckTracker[Checkpoint],
        published: Checkpoint,
        heartbeat: bool,
    ) -> None:
        now = time.monotonic()
        if self.active is None:
            # A new request shows in the watch at once; the poll is a fallback.
            changed = self._mirror is not None and self._mirror.changed.is_set()
            if now < self._next_poll and not changed:
                return
            self._next_poll = now + self._options.bootstrap_poll_s
            self._take_next(producer, tracker, published)
            if self.active is None:
                return
        active = self.active
        # Chunk after chunk while each is released at once: the stream stands at its
        # high watermark, so nothing waits. A write to the source shows as a watermark
        # the stream has not reached, and the loop returns to it; so does a stop, and
        # the end of a time budget (the reader's periodic work: checkpoint, reshard).
        budget_end = now + _LOOP_BUDGET_S
        try:
            while True:
                if active.window is not None:
                    # A heartbeat counts for the chunk whose window was open when it came.
                    active.heartbeats += heartbeat
                    heartbeat = False
                    if not self._reached(active, published):
                        return
                    self._release(active, producer, tracker, published)
                now = time.monotonic()
                if self._stopping() or now >= budget_end:
                    return
                if now >= active.next_control_check and not self._control(active):
                    return
                if active.progress.state is SnapshotState.PAUSED or now < active.next_read_at:
                    return
                health.beat()
                if not self._leadership.session.is_valid():
                    raise NotLeader(f"snapshot {active.name}: leadership lost")
                self._read_chunk(active, producer, tracker, published)
                if self.active is None:
                    return
        except BootstrapError as exc:
            self._fail(active, str(exc))
        except pymysql.err.MySQLError as exc:
            where = "at its start" if active.after is None else f"after key {list(active.after)}"
            self._fail(active, f"bootstrap {active.name}, reading {where}: {exc}")

    @staticmethod
    def _reached(active: _Active, published: Checkpoint) -> bool:
        assert active.high is not None
        return active.high.reached_by(published) or active.heartbeats >= _HEARTBEATS_TO_RELEASE

    # -- requests ----------------------------------------------------------------

    def _take_next(
        self, producer: Producer, tracker: AckTracker[Checkpoint], published: Checkpoint
    ) -> None:
        for kv in sorted(self._request_keys().values(), key=lambda kv: kv.key):
            try:
                request = BootstrapRequest.from_json(kv.value)
            except (ValueError, KeyError, TypeError) as exc:
                log.error("bootstrap request %s is unreadable: %s", kv.key, exc)
                continue
            if request.error is not None or request.blocking:
                continue
            self._begin(request, kv.key, producer, tracker, published)
            if self.active is not None:
                return

    def _request_keys(self) -> dict[str, KeyValue]:
        """The request keys, from a watch of their prefix (read once when the watch
        is not ready yet or has stopped)."""
        if self._mirror is None:
            self._mirror = self._loop.run(self._start_mirror(), timeout=self._timeout)
        seen = self._loop.run(self._mirror_items(self._mirror), timeout=self._timeout)
        if seen is not None:
            return seen
        listing = call_with_retry(
            self._loop,
            lambda: self._client.get_prefix(self._requests),
            f"reading {self._requests}",
            deadline_s=5.0,
            timeout_s=self._timeout,
        )
        return {kv.key: kv for kv in listing.items}

    async def _start_mirror(self) -> Mirror:
        return Mirror(self._client, self._requests).start()

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

    def _begin(
        self,
        request: BootstrapRequest,
        key: str,
        producer: Producer,
        tracker: AckTracker[Checkpoint],
        published: Checkpoint,
    ) -> None:
        name = f"{request.database}.{request.table}"
        progress_key = self._progress + request.id
        stored = call_with_retry(
            self._loop,
            lambda: self._client.get(progress_key),
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
        try:
            if not self._filter.includes_table(request.database, request.table):
                raise BootstrapError(f"bootstrap of {name}: the table is excluded by cdc.filter")
            reader = ChunkReader(
                self._connect,
                request.database,
                request.table,
                request.where,
                self._options.snapshot_chunk_size,
            )
        except BootstrapError as exc:
            self._fail_request(request, key, progress, str(exc))
            return
        except pymysql.err.MySQLError as exc:
            self._fail_request(request, key, progress, f"bootstrap of {name}: {exc}")
            return
        after = decode_key(progress.last_key) if progress.last_key is not None else None
        active = _Active(request, key, progress_key, reader, progress, after)
        self.active = active
        try:
            if progress.state is SnapshotState.PENDING:
                progress = dataclasses.replace(progress, rows_estimated=reader.estimated_rows())
                start = edge_messages(
                    self._publisher,
                    "bootstrap-start",
                    reader.definition,
                    f"bootstrap:{request.id}#start",
                )
                self._send(producer, tracker, published, start)
                active.progress = dataclasses.replace(
                    progress, state=transition(progress.state, Event.START)
                )
                self._store(active)
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
        except pymysql.err.MySQLError as exc:
            self._fail(active, f"bootstrap {active.name}, starting: {exc}")

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
            self._store(active)
            log.info("snapshot %s: %s", active.name, after.value)
        return True

    # -- chunks ----------------------------------------------------------------

    def _watermark(self, active: _Active) -> Watermark:
        connection = active.reader.connection
        if self._server is None:
            self._server = check_server(connection, self._options.server_id)
        return read_watermark(connection, self._server)

    def _read_chunk(
        self,
        active: _Active,
        producer: Producer,
        tracker: AckTracker[Checkpoint],
        published: Checkpoint,
    ) -> None:
        active.progress = dataclasses.replace(
            active.progress, state=transition(active.progress.state, Event.READ)
        )
        active.read_started = time.monotonic()
        low = self._watermark(active)
        rows = active.reader.read(active.after, active.name)
        high = self._watermark(active)
        if not rows:
            active.progress = dataclasses.replace(active.progress, state=SnapshotState.RUNNING)
            complete = edge_messages(
                self._publisher,
                "bootstrap-complete",
                active.reader.definition,
                f"bootstrap:{active.request.id}#complete",
            )
            self._send(producer, tracker, published, complete)
            # Delivered in full before the request is removed: a crash before that
            # publishes the complete again (same event ids).
            producer.flush(60)
            self._finish(active, transition(active.progress.state, Event.EXHAUSTED))
            return
        base = active.progress.rows_done
        table = active.reader.definition
        active.window = ChunkWindow.of(
            (message.key, message)
            for message in (
                insert_message(
                    self._publisher, table, f"bootstrap:{active.request.id}#{base + i}", row.data
                )
                for i, row in enumerate(rows, start=1)
            )
        )
        active.low, active.high, active.heartbeats = low, high, 0
        active.chunk_last_key = rows[-1].key

    def _release(
        self,
        active: _Active,
        producer: Producer,
        tracker: AckTracker[Checkpoint],
        published: Checkpoint,
    ) -> None:
        window = active.window
        assert window is not None
        messages = window.release()
        self._send(producer, tracker, published, messages)
        # Progress moves only past delivered rows: a crash before the store reads
        # this chunk again (the one chunk in flight).
        producer.flush(60)
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
        self._store(active)
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

    # -- etcd and ends -------------------------------------------------------------

    def _send(
        self,
        producer: Producer,
        tracker: AckTracker[Checkpoint],
        published: Checkpoint,
        messages: list[Outgoing],
    ) -> None:
        # Registered with the stream's last end: their acks vouch for nothing newer.
        ack = partial(tracker.ack, tracker.open(published, len(messages)))
        producer.send_many(messages, ack)
        producer.poll(0)

    def _store(self, active: _Active) -> None:
        active.progress = dataclasses.replace(active.progress, updated=time.time())
        self._write(
            [Put(active.progress_key, active.progress.to_json())],
            f"storing {active.progress_key}",
        )

    def _write(self, ops: list[Put | Delete], what: str) -> None:
        # Fenced by the leadership, like the checkpoint: NotLeader ends the lead.
        call_with_retry(
            self._loop,
            lambda: self._leadership.guarded_txn(ops),
            what,
            timeout_s=self._timeout,
        )

    def _finish(self, active: _Active, state: SnapshotState) -> None:
        active.progress = dataclasses.replace(active.progress, state=state, updated=time.time())
        self._close()
        self._write(
            [Delete(active.request_key), Put(active.progress_key, active.progress.to_json())],
            f"ending {active.request_key}",
        )
        if state is SnapshotState.DONE:
            self.completed += 1
        log.info("snapshot %s %s: %s", active.name, state.value, active.progress.describe())

    def _fail(self, active: _Active, error: str) -> None:
        self._close()
        self._fail_request(active.request, active.request_key, active.progress, error)

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
            try:
                active.reader.close()
            except pymysql.err.MySQLError as exc:
                log.warning("snapshot %s: closing its connection: %s", active.name, exc)

    def close(self) -> None:
        self._close()
        mirror, self._mirror = self._mirror, None
        if mirror is not None:
            try:
                self._loop.run(mirror.stop(), timeout=self._timeout)
            except TimeoutError:
                log.warning("bootstrap requests: the watch did not stop in time")
