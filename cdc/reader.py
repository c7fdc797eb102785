"""The reader process: elected per source, it streams binlog → messages → producer.

    STANDBY --won election--> LEADING --stop()--> FLUSHING --> (checkpoint) --> STOPPED
       ^                         |
       +----leadership lost------+      (new session, campaign again)
    LEADING --delivery/decode/source error--> raise (the process exits non-zero)

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
4. On stop: flush the producer, store the final checkpoint, resign.
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
from collections.abc import Callable
from functools import partial
from typing import Any

import pymysql

from cdc.acks import AckTracker
from cdc.bootstrap import BootstrapRunner
from cdc.checkpoint import CheckpointStore
from cdc.decoding.json_columns import JsonSchemaModel
from cdc.etcd_calls import call_with_retry
from cdc.filtering import Filter
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
    StageSpec,
    build_publisher,
    prepare_stage,
    recovery_command,
    start_stage,
)
from shardctl.core import health
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

log = logging.getLogger(__name__)

__all__ = ["LagMonitor", "Reader", "recovery_command", "resolve_start", "server_charset"]


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
        self.transactions = 0
        self.messages = 0
        self.last_end: Checkpoint | None = None  # end of the last transaction read
        self._relead = "to switch the shard count"  # why _lead asked to lead again

    # -- control --------------------------------------------------------------

    def stop(self, reason: str = "asked to stop") -> None:
        self._stop_reason = reason
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- main loop ------------------------------------------------------------

    def run(self) -> None:
        loop = LoopThread(f"cdc-{self.options.source}-etcd").start()
        client: EtcdClient | None = None
        try:
            client = loop.run(EtcdClient(self.settings.etcd).connect())
            store = CheckpointStore(client, self.keyspace, self.options.source)
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
                    self._stop.wait(1.0)
                    continue
                health.update("standby", session)
                # Started now, so that it is ready (imported) when this reader leads.
                prepared = prepare_stage(self.options)
                try:
                    leadership = self._campaign(loop, client, session)
                    if leadership is None:
                        return
                    while self._lead(loop, client, store, leadership, prepared):
                        # The read stage was built for the old count; the next
                        # lead builds its own.
                        prepared = None
                        if self.stopping:
                            break
                        log.info(
                            "reader %s: leading again %s", self.options.reader_id, self._relead
                        )
                    if self.stopping:
                        loop.run(leadership.resign(), timeout=self.settings.etcd.timeout_s + 1)
                except LeadershipLost as exc:
                    log.error("reader %s: %s; campaigning again", self.options.reader_id, exc)
                except EtcdUnavailable as exc:
                    # Without etcd the checkpoint cannot be kept: stop publishing, and
                    # start over (from the stored checkpoint) once etcd answers again.
                    log.error("reader %s: %s; starting over", self.options.reader_id, exc)
                    self._stop.wait(1.0)
                finally:
                    if prepared is not None:
                        prepared.close()
                    session.close_blocking()
        finally:
            if client is not None:
                loop.run(client.close(), timeout=5)
            loop.stop()

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
        """Publish while leading; True when it ended to switch the shard count."""
        options = self.options
        timeout = self.settings.etcd.timeout_s + 1
        connect = self.settings.mysql.connect_kwargs()
        checkpoint = call_with_retry(loop, store.load, f"reading {store.key}", timeout_s=timeout)
        if checkpoint is None:
            checkpoint = resolve_start(options, connect)
            if options.snapshot_mode in ("initial", "when_needed"):
                request_initial_snapshots(loop, client, self.keyspace, options, connect)
            json_model = JsonSchemaModel.from_server(partial(pymysql.connect, **connect))
            checkpoint = dataclasses.replace(checkpoint, json_columns=json_model.state)
            self._save(loop, store, leadership, checkpoint)
            log.info(
                "source %s: no checkpoint; starting at %s",
                options.source,
                checkpoint.describe(),
                extra={"source": options.source, "position": checkpoint.describe()},
            )
        else:
            log.info(
                "source %s: resuming at checkpoint %s",
                options.source,
                checkpoint.describe(),
                extra={"source": options.source, "position": checkpoint.describe()},
            )
        self.last_end = checkpoint
        # End of the last transaction registered with the ack tracker: the only
        # checkpoint that messages published after it (a bootstrap) may vouch for.
        published = checkpoint
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
        bootstrap = BootstrapRunner(
            loop,
            client,
            self.keyspace,
            options,
            connect,
            build_publisher(spec, row_filter, None),
            row_filter,
        )
        snapshots = IncrementalSnapshots(
            loop,
            client,
            self.keyspace,
            options,
            connect,
            bootstrap.publisher,
            row_filter,
            leadership,
            lambda: self.stopping,
        )
        lost: concurrent.futures.Future[str] = loop.submit(leadership.wait_lost())
        tracker: AckTracker[Checkpoint] = AckTracker()
        saved = checkpoint
        next_save = time.monotonic() + options.checkpoint_interval_s
        next_bootstrap = time.monotonic()
        lag = LagMonitor(options.source, connect, options.lag_interval_s, lambda: tracker.in_flight)
        # A checkpoint without a commit time (a first start): count from now.
        lag.read(checkpoint, checkpoint.ts or time.time())
        clean = False
        switching = False
        in_transaction = False  # chunks of a transaction are arriving
        purged: PurgedBinlogError | None = None

        def check_leadership() -> None:
            health.beat()
            if lost.done() or not leadership.session.is_valid():
                raise LeadershipLost(self._lost_reason(lost, leadership))

        def wait_for_room() -> None:
            """Back-pressure: at most `max_in_flight` messages unacknowledged."""
            producer.poll(0)
            while tracker.in_flight > options.max_in_flight:
                producer.poll(0.05)
                check_leadership()

        CDC_LEADER.labels(options.source).set(1)
        health.update("leading")
        lag.start()
        stage: LocalStage | ProcessStage | None = None
        try:
            stage = start_stage(spec, prepared)
            for item in snapshots.paced(stage):
                check_leadership()
                if isinstance(item, Chunk):
                    if not in_transaction:
                        lag.read(item.end, item.end.ts)
                        if bootstrap.due(item.ctx):
                            # The bootstrap stands between the last published
                            # transaction and this one: its acks may checkpoint the
                            # former, never this one.
                            bootstrap.emit(producer, tracker, published, leadership)
                    snapshots.observe(item)
                    published = self._publish(item, producer, tracker, published)
                    in_transaction = not item.last
                    wait_for_room()
                else:
                    producer.poll(0)
                    if isinstance(item, Heartbeat) and bootstrap.due(None):
                        bootstrap.emit(producer, tracker, published, leadership)
                if not in_transaction:
                    snapshots.step(producer, tracker, published, isinstance(item, Heartbeat))
                now = time.monotonic()
                if now >= next_save:
                    next_save = now + options.checkpoint_interval_s
                    saved = self._advance(loop, store, leadership, tracker, saved)
                if now >= next_bootstrap and bootstrap.armed is None:
                    next_bootstrap = now + options.bootstrap_poll_s
                    try:
                        bootstrap.arm_next(leadership)
                    except EtcdUnavailable as exc:
                        log.warning(
                            "source %s: bootstrap requests not read: %s", options.source, exc
                        )
                if self.stopping:
                    clean = True
                    break
                if not in_transaction and switch.requested():
                    # At a transaction boundary: everything before it goes out with
                    # the old count, flushed and checkpointed below.
                    clean = switching = True
                    break
        except (NotLeader, SessionLost) as exc:
            raise LeadershipLost(str(exc)) from exc
        except PurgedBinlogError as exc:
            if options.snapshot_mode != "when_needed":
                raise
            purged = exc
        except DeliveryError:
            CDC_DELIVERY_FAILURES.labels(options.source).inc()
            raise
        except SessionSettingError:
            # Stop at the boundary just before the transaction: everything before it
            # delivered and checkpointed, so `checkpoint skip` finds the checkpoint
            # sitting at that transaction. A delivery failure here is raised instead.
            producer.flush(60)
            self._advance(loop, store, leadership, tracker, saved)
            raise
        finally:
            CDC_LEADER.labels(options.source).set(0)
            lag.stop()
            if stage is not None:
                stage.close()
            bootstrap.close()
            snapshots.close()
            lost.cancel()
            if clean:
                why = (
                    "to switch the shard count" if switching else f"stopping ({self._stop_reason})"
                )
                log.info("reader %s: %s; flushing", options.reader_id, why)
                producer.flush(60)
                self._advance(loop, store, leadership, tracker, saved)
            producer.close()
        if purged is not None:
            restart = recover_from_purged(loop, client, self.keyspace, options, connect, purged)
            self._save(loop, store, leadership, restart)
            self._relead = "from the new checkpoint"
            return True
        self._relead = "to switch the shard count"
        return switching

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
        if chunk.last:
            self.last_end = chunk.end
            self.transactions += 1
        self.messages += len(messages)
        CDC_ROWS.labels(self.options.source).inc(len(messages))
        return end

    def _last_acked(self, ack: Callable[[], None], committed_at: float) -> None:
        ack()
        CDC_PUBLISH_AGE.labels(self.options.source).observe(max(0.0, time.time() - committed_at))

    def _advance(
        self,
        loop: LoopThread,
        store: CheckpointStore,
        leadership: Leadership,
        tracker: AckTracker[Checkpoint],
        saved: Checkpoint,
    ) -> Checkpoint:
        safe = tracker.safe()
        if safe is None or safe == saved:
            return saved
        try:
            self._save(loop, store, leadership, safe)
        except EtcdUnavailable as exc:
            # Not fatal: the checkpoint only lags; the next interval tries again.
            log.warning(
                "source %s: checkpoint %s not stored yet: %s",
                self.options.source,
                safe.describe(),
                exc,
            )
            return saved
        CDC_CHECKPOINT.labels(self.options.source, safe.file).set(safe.pos)
        return safe

    def _save(
        self, loop: LoopThread, store: CheckpointStore, leadership: Leadership, cp: Checkpoint
    ) -> None:
        try:
            loop.run(store.save(leadership, cp), timeout=self.settings.etcd.timeout_s + 1)
        except (NotLeader, SessionLost) as exc:
            raise LeadershipLost(str(exc)) from exc
        except TimeoutError as exc:
            raise EtcdUnavailable(f"checkpoint write to {store.key} timed out") from exc
