"""The reader process: elected per source, it streams binlog → messages → producer.

Its lifecycle (`ReaderState`, one transition per line):

    STANDBY --won the election--> LEADING
    STANDBY --stop() while campaigning--> STOPPED
    STANDBY --an error no retry mends (a setting, the server): raised--> FAILED
    LEADING --stop(), or another shard count asked (at a transaction boundary)--> FLUSHING
    LEADING --leadership lost or etcd unreachable: a new session, campaign again--> STANDBY
    LEADING --a delivery, decode or source error: raised, the process exits non-zero--> FAILED
    FLUSHING --delivered and checkpointed, to lead with the new shard count--> LEADING
    FLUSHING --delivered and checkpointed, then resigned--> STOPPED
    FLUSHING --leadership lost or etcd unreachable while flushing--> STANDBY
    FLUSHING --a delivery failed while flushing: raised--> FAILED

Several readers may run for one source; they share `cdc.server_id`. Each holds
an etcd session (lease) and campaigns on `cdc/<source>/leader`; the winner's
token (the key's create_revision) fences every checkpoint write, so a deposed
leader cannot move the checkpoint. A standby takes over when the leader's lease
expires (within `lease_ttl_s`) or it resigns on a clean stop.

While leading:
1. Read the checkpoint (or, on first start, take `start_position` and store it
   at once, so a crash before the first transaction loses nothing).
2. Stream transactions from the checkpoint through the read stage (`cdc.stage`:
   binlog reading, decoding and formatting, in this process or a second one);
   publish each one's messages and register the transaction with the ack tracker.
3. Every `checkpoint_interval_s`, store the end of the newest transaction whose
   messages, and all before it, were acknowledged (`cdc.acks`).
4. On stop: flush the producer, store the final checkpoint, resign. A stop in the
   middle of a transaction delivers its first chunks, but the checkpoint stays
   at the transaction's start (the acks of a transaction's chunks but the last
   vouch only for the end before it).
5. When `shardctl shards set` asks for another shard count: at a transaction
   boundary, flush and store the checkpoint as on stop, then lead again from it,
   keeping the leadership; `cdc.reshard` switches the count at that boundary and
   records it, and the read stage is built again with the new count.

Between transactions the leader also runs incremental snapshots (`cdc.snapshot`:
`observe` each streamed chunk, `step` at each boundary, the stream read through
`paced` so that the snapshot's thread may work while the loop waits), and with
`snapshot_mode = when_needed` a purged checkpoint restarts at the server's current
position with a snapshot of every included table (`cdc.snapshot.modes`).

After a crash the new leader resumes at the stored boundary, which is at or
before the last delivered transaction: messages after it are published again,
with the same event ids. A delivery error stops the reader without moving the
checkpoint past the undelivered message.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable
from enum import Enum
from functools import partial
from typing import Any

import pymysql

from cdc.acks import AckTracker
from cdc.bootstrap import BootstrapRunner
from cdc.checkpoint import CheckpointStore
from cdc.decoding.json_columns import JsonSchemaModel
from cdc.etcd_calls import call_with_retry
from cdc.filtering import Filter
from cdc.leader_context import LeaderContext
from cdc.options import CdcOptions
from cdc.producers import build_producer
from cdc.producers.base import DeliveryError, Producer
from cdc.replication.errors import PurgedBinlogError, SessionSettingError
from cdc.replication.position import BinlogPosition, Checkpoint
from cdc.replication.server_check import binlog_lag_bytes, check_server, current_position
from cdc.replication.source import Heartbeat
from cdc.reshard import ShardSwitch
from cdc.snapshot.modes import recover_from_purged, request_initial_snapshots
from cdc.snapshot.runner import IncrementalSnapshots
from cdc.stage import (
    Chunk,
    LocalStage,
    ProcessStage,
    StageItem,
    StageSpec,
    build_publisher,
    prepare_stage,
    recovery_command,
    start_stage,
)
from shardctl.core import health
from shardctl.core.backoff import ETCD_RETRY, Backoff
from shardctl.core.config import ConfigError, Settings
from shardctl.core.etcd.client import EtcdClient, EtcdUnavailable
from shardctl.core.etcd.election import Election, Leadership, NotLeader
from shardctl.core.etcd.loop_thread import LoopThread
from shardctl.core.etcd.session import Session, SessionLost
from shardctl.core.keyspace import Keyspace
from shardctl.core.metrics import (
    CDC_CHECKPOINT,
    CDC_DELIVERY_FAILURES,
    CDC_IN_FLIGHT,
    CDC_LAG_BYTES,
    CDC_LAG_SECONDS,
    CDC_LEADER,
    CDC_PUBLISH_AGE,
    CDC_ROWS,
)
from shardctl.core.states import Transitions

log = logging.getLogger(__name__)

__all__ = [
    "READER_TRANSITIONS",
    "LagMonitor",
    "Reader",
    "ReaderState",
    "recovery_command",
    "resolve_start",
    "server_charset",
]


class ReaderState(Enum):
    STANDBY = "standby"  # a session is open; campaigning
    LEADING = "leading"  # publishing
    FLUSHING = "flushing"  # stopped at a boundary: delivering and storing the checkpoint
    STOPPED = "stopped"
    FAILED = "failed"


READER_TRANSITIONS = Transitions(
    "reader",
    {
        ReaderState.STANDBY: {ReaderState.LEADING, ReaderState.STOPPED, ReaderState.FAILED},
        ReaderState.LEADING: {ReaderState.FLUSHING, ReaderState.STANDBY, ReaderState.FAILED},
        ReaderState.FLUSHING: {
            ReaderState.LEADING,
            ReaderState.STOPPED,
            ReaderState.STANDBY,
            ReaderState.FAILED,
        },
    },
)


class LagMonitor:
    """Sets the lag gauges every `interval_s` on its own thread, so that a publish
    loop blocked on the broker shows growing lag instead of a frozen value.

    Lag in bytes: the server's binlog end minus the end of the newest transaction
    read. Lag in seconds: now minus the later of that transaction's commit time and
    the last moment the reader had read the whole binlog (an idle source is
    current, not late). A failed probe is logged; it never stops the stream.
    """

    def __init__(
        self,
        source: str,
        connect: dict[str, Any],
        interval_s: float,
        in_flight: Callable[[], int],
    ) -> None:
        self._source = source
        self._connect = connect
        self._interval_s = interval_s
        self._in_flight = in_flight
        self._newest: tuple[Checkpoint, float] | None = None  # (end, commit time)
        self._current_at = 0.0  # wall time the reader last had the whole binlog
        self._connection: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"cdc-{source}-lag", daemon=True)

    def read(self, end: Checkpoint, committed_at: float) -> None:
        """The stream read the transaction that ends at `end` (from the reader's thread)."""
        self._newest = (end, committed_at)  # one assignment: the monitor sees a pair

    def start(self) -> LagMonitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self._interval_s + 10)
        if self._connection is not None:
            with contextlib.suppress(pymysql.err.MySQLError):
                self._connection.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.update()
            self._stop.wait(self._interval_s)

    def update(self) -> None:
        CDC_IN_FLIGHT.labels(self._source).set(self._in_flight())
        newest = self._newest
        if newest is None:
            return
        end, committed_at = newest
        now = time.time()
        behind = self._bytes_behind(end)
        if behind is not None:
            CDC_LAG_BYTES.labels(self._source).set(behind)
            if behind == 0:
                self._current_at = now
        lag = now - max(committed_at, self._current_at)
        CDC_LAG_SECONDS.labels(self._source).set(max(0.0, lag))

    def _bytes_behind(self, end: Checkpoint) -> int | None:
        try:
            if self._connection is None:
                self._connection = pymysql.connect(**self._connect)
            return binlog_lag_bytes(self._connection, end.position)
        except pymysql.err.MySQLError as exc:
            log.warning("source %s: binlog lag not measured: %s", self._source, exc)
            connection, self._connection = self._connection, None
            if connection is not None:
                with contextlib.suppress(pymysql.err.MySQLError):
                    connection.close()
            return None


class LeadershipLost(Exception):
    """This reader no longer leads its source; it must stop publishing at once."""


def server_charset(connect: Callable[[], Any]) -> str:
    """The server's `character_set_server`: Maxwell's charset for a CREATE
    DATABASE that names none."""
    conn = connect()
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT @@character_set_server")
            row = cursor.fetchone()
    finally:
        conn.close()
    return str(row[0])


def resolve_start(options: CdcOptions, connect: dict[str, Any]) -> Checkpoint:
    """The checkpoint to use when the source has none: `cdc.start_position`."""
    connection = pymysql.connect(**connect)
    try:
        info = check_server(connection, options.server_id)
        spec = options.start_position.strip()
        if spec == "current":
            position, gtid = current_position(connection, info)
            return Checkpoint(position.file, position.pos, gtid or None, 0, info.server_id)
        if spec.startswith("gtid:"):
            if options.mode != "gtid":
                raise ConfigError("cdc.start_position: a gtid: start needs cdc.mode=gtid")
            position, _ = current_position(connection, info)
            return Checkpoint(position.file, 4, spec[5:], 0, info.server_id)
        try:
            at = BinlogPosition.parse(spec)
        except ValueError as exc:
            raise ConfigError(f"cdc.start_position: {exc}") from None
        if options.mode == "gtid":
            raise ConfigError("cdc.start_position: cdc.mode=gtid needs 'current' or 'gtid:<state>'")
        return Checkpoint(at.file, at.pos, None, 0, info.server_id)
    finally:
        connection.close()


class _TermEnd(Enum):
    """Why a term's stream stopped at a transaction boundary."""

    STOP = "stop"  # Reader.stop()
    SWITCH = "switch"  # `shardctl shards set` asked for another shard count


@dataclasses.dataclass
class _Term:
    """One term of leadership: what it publishes with, and how far it got.

    `published` is the end of the last transaction registered with the ack tracker:
    the only checkpoint that messages published after it (a bootstrap) may vouch
    for. `saved` is the checkpoint last stored. `in_transaction` holds while a
    transaction's chunks are arriving (the stream is not at a boundary).
    """

    loop: LoopThread
    store: CheckpointStore
    leadership: Leadership
    connect: dict[str, Any]  # PyMySQL keyword arguments; holds the password, never logged
    spec: StageSpec
    producer: Producer
    tracker: AckTracker[Checkpoint]
    bootstrap: BootstrapRunner
    snapshots: IncrementalSnapshots
    switch: ShardSwitch
    lag: LagMonitor
    lost: concurrent.futures.Future[str]  # done once the leadership is over
    published: Checkpoint
    saved: Checkpoint
    next_save: float  # time.monotonic() of the next checkpoint store
    next_bootstrap: float = dataclasses.field(default_factory=time.monotonic)
    in_transaction: bool = False


class Reader:
    def __init__(
        self,
        settings: Settings,
        options: CdcOptions,
        producer_factory: Callable[[int], Producer] | None = None,
    ) -> None:
        self.settings = settings
        self.options = options
        self.keyspace = Keyspace.of(settings)
        self._producer_factory = producer_factory
        self._stop = threading.Event()
        self._stop_reason = ""
        self._relead = "to switch the shard count"  # why _lead asked to lead again
        self.state = ReaderState.STANDBY

    # -- control --------------------------------------------------------------

    def stop(self, reason: str = "asked to stop") -> None:
        self._stop_reason = reason
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _move(self, new: ReaderState) -> None:
        if new is not self.state:
            self.state = READER_TRANSITIONS.check(self.options.reader_id, self.state, new)
            log.info("reader %s: %s", self.options.reader_id, new.value)
            health.update(new.value)  # ready while standby or leading (`core.health`)

    # -- main loop ------------------------------------------------------------

    def run(self) -> None:
        loop = LoopThread(f"cdc-{self.options.source}-etcd").start()
        client: EtcdClient | None = None
        try:
            client = loop.run(EtcdClient(self.settings.etcd).connect())
            self._serve(loop, client, CheckpointStore(client, self.keyspace, self.options.source))
            self._move(ReaderState.STOPPED)
        except BaseException:
            if self.state is not ReaderState.STOPPED:
                self._move(ReaderState.FAILED)
            raise
        finally:
            if client is not None:
                loop.run(client.close(), timeout=5)
            loop.stop()

    def _serve(self, loop: LoopThread, client: EtcdClient, store: CheckpointStore) -> None:
        """Campaign and lead, one etcd session after another, until stopped."""
        retry = Backoff(ETCD_RETRY)
        while not self.stopping:
            health.beat()
            try:
                session = Session.open_blocking(
                    self.settings.etcd,
                    self.options.lease_ttl_s,
                    name=f"cdc-{self.options.source}-{self.options.reader_id}",
                )
            except EtcdUnavailable as exc:
                log.warning("reader %s: no etcd session yet: %s", self.options.reader_id, exc)
                self._stop.wait(retry.next())
                continue
            self._move(ReaderState.STANDBY)
            health.update(self.state.value, session)
            # Started now, so that it is ready (imported) when this reader leads.
            prepared = prepare_stage(self.options)
            try:
                leadership = self._campaign(loop, client, session)
                if leadership is None:
                    return
                while self._lead(loop, client, store, leadership, prepared):
                    # The read stage was built for the old count; the next lead
                    # builds its own.
                    prepared = None
                    if self.stopping:
                        break
                    log.info("reader %s: leading again %s", self.options.reader_id, self._relead)
                if self.stopping:
                    loop.run(leadership.resign(), timeout=self.settings.etcd.timeout_s + 1)
                retry.reset()
            except LeadershipLost as exc:
                log.error("reader %s: %s; campaigning again", self.options.reader_id, exc)
                self._move(ReaderState.STANDBY)
            except EtcdUnavailable as exc:
                # Without etcd the checkpoint cannot be kept: stop publishing, and
                # start over (from the stored checkpoint) once etcd answers again.
                log.error("reader %s: %s; starting over", self.options.reader_id, exc)
                self._move(ReaderState.STANDBY)
                self._stop.wait(retry.next())
            finally:
                if prepared is not None:
                    prepared.close()
                session.close_blocking()

    def _campaign(
        self, loop: LoopThread, client: EtcdClient, session: Session
    ) -> Leadership | None:
        election = Election(client, self.keyspace.cdc_leader(self.options.source))
        future = loop.submit(election.campaign(session, self.options.reader_id))
        log.info(
            "reader %s: campaigning for source %s", self.options.reader_id, self.options.source
        )
        while True:
            try:
                leadership = future.result(timeout=0.5)
            except concurrent.futures.TimeoutError:
                health.beat()
                if self.stopping:
                    future.cancel()
                    return None
                continue
            except SessionLost as exc:
                raise LeadershipLost(str(exc)) from exc
            log.info(
                "reader %s: leads source %s (token %d)",
                self.options.reader_id,
                self.options.source,
                leadership.token,
                extra={
                    "reader": self.options.reader_id,
                    "source": self.options.source,
                    "token": leadership.token,
                },
            )
            return leadership

    def _lead(
        self,
        loop: LoopThread,
        client: EtcdClient,
        store: CheckpointStore,
        leadership: Leadership,
        prepared: ProcessStage | None = None,
    ) -> bool:
        """One term of leadership: publish until asked to stop or to switch the shard
        count; True when the reader should lead again (a new count, or a new
        checkpoint after a purged binlog)."""
        self._move(ReaderState.LEADING)
        checkpoint = self._starting_checkpoint(loop, client, store, leadership)
        term = self._begin_term(loop, client, store, leadership, checkpoint)
        ending: _TermEnd | None = None  # set when the stream stopped at a boundary
        purged: PurgedBinlogError | None = None
        stage: LocalStage | ProcessStage | None = None
        CDC_LEADER.labels(self.options.source).set(1)
        term.lag.start()
        try:
            stage = start_stage(term.spec, prepared)
            ending = self._stream(term, term.snapshots.paced(stage))
        except (NotLeader, SessionLost) as exc:
            raise LeadershipLost(str(exc)) from exc
        except PurgedBinlogError as exc:
            if self.options.snapshot_mode != "when_needed":
                raise
            purged = exc
        except DeliveryError:
            CDC_DELIVERY_FAILURES.labels(self.options.source).inc()
            raise
        except SessionSettingError:
            # Stop at the boundary just before the transaction: everything before it
            # delivered and checkpointed, so `checkpoint skip` finds the checkpoint
            # sitting at that transaction. A delivery failure here is raised instead.
            term.producer.flush(60)
            self._advance(term)
            raise
        finally:
            self._end_term(term, stage, ending)
        if purged is not None:
            restart = recover_from_purged(
                loop, client, self.keyspace, self.options, term.connect, purged
            )
            self._save(loop, store, leadership, restart)
            self._relead = "from the new checkpoint"
            return True
        self._relead = "to switch the shard count"
        return ending is _TermEnd.SWITCH

    # -- the steps of a term ------------------------------------------------------

    def _starting_checkpoint(
        self, loop: LoopThread, client: EtcdClient, store: CheckpointStore, leadership: Leadership
    ) -> Checkpoint:
        """The stored checkpoint; on a first start, `start_position`, stored at once
        (so a crash before the first transaction loses nothing), and the initial
        snapshots that `snapshot_mode` asks for."""
        options = self.options
        timeout = self.settings.etcd.timeout_s + 1
        connect = self.settings.mysql.connect_kwargs()
        checkpoint = call_with_retry(loop, store.load, f"reading {store.key}", timeout_s=timeout)
        how = "resuming at checkpoint"
        if checkpoint is None:
            how = "no checkpoint; starting at"
            checkpoint = resolve_start(options, connect)
            if options.snapshot_mode in ("initial", "when_needed"):
                request_initial_snapshots(loop, client, self.keyspace, options, connect)
            json_model = JsonSchemaModel.from_server(partial(pymysql.connect, **connect))
            checkpoint = dataclasses.replace(checkpoint, json_columns=json_model.state)
            self._save(loop, store, leadership, checkpoint)
        log.info(
            "source %s: %s %s",
            options.source,
            how,
            checkpoint.describe(),
            extra={"source": options.source, "position": checkpoint.describe()},
        )
        return checkpoint

    def _begin_term(
        self,
        loop: LoopThread,
        client: EtcdClient,
        store: CheckpointStore,
        leadership: Leadership,
        checkpoint: Checkpoint,
    ) -> _Term:
        """Settle the shard count, then build what the term publishes with."""
        options = self.options
        connect = self.settings.mysql.connect_kwargs()
        switch = ShardSwitch(loop, client, self.keyspace, self.settings, options)
        try:
            num_shards, shard_hash = switch.start(leadership, checkpoint)
        except (NotLeader, SessionLost) as exc:
            raise LeadershipLost(str(exc)) from exc
        # The one description of how messages are made and partitioned, for the
        # read stage (in either process) and for the bootstrap alike.
        spec = StageSpec(
            self.settings,
            options,
            checkpoint,
            num_shards,
            shard_hash,
            server_charset(partial(pymysql.connect, **connect)),
        )
        row_filter = Filter(options.filter)
        producer = (
            self._producer_factory(num_shards)
            if self._producer_factory is not None
            else build_producer(self.settings, options, num_shards)
        )
        context = LeaderContext(
            loop,
            client,
            self.keyspace,
            options,
            connect,
            build_publisher(spec, row_filter, None),
            row_filter,
            leadership,
        )
        bootstrap = BootstrapRunner(context)
        snapshots = IncrementalSnapshots(context, lambda: self.stopping)
        tracker: AckTracker[Checkpoint] = AckTracker()
        lag = LagMonitor(options.source, connect, options.lag_interval_s, lambda: tracker.in_flight)
        # A checkpoint without a commit time (a first start): count from now.
        lag.read(checkpoint, checkpoint.ts or time.time())
        return _Term(
            loop=loop,
            store=store,
            leadership=leadership,
            connect=connect,
            spec=spec,
            producer=producer,
            tracker=tracker,
            bootstrap=bootstrap,
            snapshots=snapshots,
            switch=switch,
            lag=lag,
            lost=loop.submit(leadership.wait_lost()),
            published=checkpoint,
            saved=checkpoint,
            next_save=time.monotonic() + options.checkpoint_interval_s,
        )

    def _stream(self, term: _Term, stage: Iterable[StageItem]) -> _TermEnd:
        """Publish what the read stage yields; return why it stopped at a boundary."""
        for item in stage:
            self._check_leadership(term)
            self._take(term, item)
            self._periodic(term)
            if self.stopping:
                return _TermEnd.STOP
            if not term.in_transaction and term.switch.requested():
                # At a transaction boundary: everything before it goes out with the
                # old count, flushed and checkpointed as the term ends.
                return _TermEnd.SWITCH
        # The binlog source reconnects by itself; its end is a bug, never a stop.
        raise RuntimeError(
            f"reader {self.options.reader_id}: the read stage ended after "
            f"{term.published.describe()} without an error"
        )

    def _take(self, term: _Term, item: StageItem) -> None:
        """Publish one chunk of a transaction, or use a pause in the stream; at a
        boundary, let a bootstrap or an incremental snapshot take its turn."""
        if isinstance(item, Chunk):
            if not term.in_transaction:
                term.lag.read(item.end, item.end.ts)
                if term.bootstrap.due(item.ctx):
                    # The bootstrap stands between the last published transaction and
                    # this one: its acks may checkpoint the former, never this one.
                    self._emit_bootstrap(term)
            term.snapshots.observe(item)
            term.published = self._publish(item, term.producer, term.tracker, term.published)
            term.in_transaction = not item.last
            self._wait_for_room(term)
        else:
            term.producer.poll(0)
            if isinstance(item, Heartbeat) and term.bootstrap.due(None):
                self._emit_bootstrap(term)
        if not term.in_transaction:
            term.snapshots.step(
                term.producer, term.tracker, term.published, isinstance(item, Heartbeat)
            )

    @staticmethod
    def _emit_bootstrap(term: _Term) -> None:
        term.bootstrap.emit(term.producer, term.tracker, term.published, term.leadership)

    def _periodic(self, term: _Term) -> None:
        """Every `checkpoint_interval_s` store the checkpoint; every `bootstrap_poll_s`
        look for a blocking bootstrap request."""
        now = time.monotonic()
        if now >= term.next_save:
            term.next_save = now + self.options.checkpoint_interval_s
            self._advance(term)
        if now >= term.next_bootstrap and term.bootstrap.armed is None:
            term.next_bootstrap = now + self.options.bootstrap_poll_s
            try:
                term.bootstrap.arm_next(term.leadership)
            except EtcdUnavailable as exc:
                log.warning("source %s: bootstrap requests not read: %s", self.options.source, exc)

    def _check_leadership(self, term: _Term) -> None:
        health.beat()
        if term.lost.done() or not term.leadership.session.is_valid():
            raise LeadershipLost(self._lost_reason(term.lost, term.leadership))

    def _wait_for_room(self, term: _Term) -> None:
        """Back-pressure: at most `max_in_flight` messages unacknowledged."""
        term.producer.poll(0)
        while term.tracker.in_flight > self.options.max_in_flight:
            term.producer.poll(0.05)
            self._check_leadership(term)

    def _end_term(
        self, term: _Term, stage: LocalStage | ProcessStage | None, ending: _TermEnd | None
    ) -> None:
        """Release what the term held; after a stop at a boundary, deliver everything
        and store the final checkpoint first."""
        CDC_LEADER.labels(self.options.source).set(0)
        term.lag.stop()
        if stage is not None:
            stage.close()
        term.bootstrap.close()
        term.snapshots.close()
        term.lost.cancel()
        try:
            if ending is not None:
                self._move(ReaderState.FLUSHING)
                why = (
                    "to switch the shard count"
                    if ending is _TermEnd.SWITCH
                    else f"stopping ({self._stop_reason})"
                )
                log.info("reader %s: %s; flushing", self.options.reader_id, why)
                term.producer.flush(60)
                self._advance(term)
        finally:
            term.producer.close()

    @staticmethod
    def _lost_reason(lost: concurrent.futures.Future[str], leadership: Leadership) -> str:
        if lost.done() and not lost.cancelled() and lost.exception() is None:
            return lost.result()
        return leadership.session.lost_reason or "lease deadline passed (the reader was paused?)"

    def _publish(
        self,
        chunk: Chunk,
        producer: Producer,
        tracker: AckTracker[Checkpoint],
        published: Checkpoint,
    ) -> Checkpoint:
        """Send one chunk of a transaction's messages; returns the end registered with
        `tracker`.

        The read stage makes a transaction's messages a chunk at a time, and the
        caller waits for room under `max_in_flight` between chunks, so memory stays
        bounded whatever the transaction's size. Every chunk but the last is
        registered with the end already registered before the transaction
        (`published`): its acknowledgement never moves the checkpoint into the
        transaction, and a crash in the middle resumes at the transaction's start.
        """
        messages = chunk.messages
        end = chunk.end if chunk.last else published
        seq = tracker.open(end, len(messages))
        if messages:
            ack = partial(tracker.ack, seq)
            if chunk.last:
                producer.send_many(messages[:-1], ack)
                # The transaction's last acknowledgement measures its publish age.
                producer.send(messages[-1], partial(self._last_acked, ack, chunk.ctx.ts))
            else:
                producer.send_many(messages, ack)
        CDC_ROWS.labels(self.options.source).inc(len(messages))
        return end

    def _last_acked(self, ack: Callable[[], None], committed_at: float) -> None:
        ack()
        CDC_PUBLISH_AGE.labels(self.options.source).observe(max(0.0, time.time() - committed_at))

    def _advance(self, term: _Term) -> None:
        """Store the end of the newest transaction delivered in full, with all before
        it (`AckTracker.safe`), if it moved since the last store."""
        safe = term.tracker.safe()
        if safe is None or safe == term.saved:
            return
        try:
            self._save(term.loop, term.store, term.leadership, safe)
        except EtcdUnavailable as exc:
            # Not fatal: the checkpoint only lags; the next interval tries again.
            log.warning(
                "source %s: checkpoint %s not stored yet: %s",
                self.options.source,
                safe.describe(),
                exc,
            )
            return
        CDC_CHECKPOINT.labels(self.options.source, safe.file).set(safe.pos)
        term.saved = safe

    def _save(
        self, loop: LoopThread, store: CheckpointStore, leadership: Leadership, cp: Checkpoint
    ) -> None:
        try:
            loop.run(store.save(leadership, cp), timeout=self.settings.etcd.timeout_s + 1)
        except (NotLeader, SessionLost) as exc:
            raise LeadershipLost(str(exc)) from exc
        except TimeoutError as exc:
            raise EtcdUnavailable(f"checkpoint write to {store.key} timed out") from exc
