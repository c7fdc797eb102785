"""Per-shard consume loops: fetch, handle, report handled positions, hand shards over.

`Consumer` is the consumer layer of a worker: it implements
`workers.ownership.ShardConsumer`, so `Ownership` drives it and does the fenced offset
commits:

    start(claim)        a shard was acquired (owners/<s> created; claim.token is the
                        owner token, claim.offset the fenced offset read from etcd)
    position(shard)     the position after the last fully handled event: what
                        Ownership commits, fenced, every commit interval
    stop(shard, token)  the shard moves away: stop fetching, finish the batch in hand,
                        return the final position (Ownership commits it, then deletes
                        owners/<s>)
    abort(shards, why)  ownership is gone (lease lost, fenced): stop at once, commit
                        nothing; thread-safe, returns immediately

Each shard goes through (`ShardState`, one transition per line; `start` enters
RUNNING, and the shard is gone once its loop ended in STOPPING, FAILED or DROPPED)

    RUNNING --stop(): finish the batch in hand, then give the position--> STOPPING
    RUNNING --its loop failed (not fenced): Claim.fail()--> FAILED
    RUNNING --abort / sink refused the token / claim no longer valid--> DROPPED
    STOPPING --its loop failed while finishing the batch in hand--> FAILED
    STOPPING --abort / fenced while finishing the batch in hand--> DROPPED
    FAILED --abort / fenced before the release committed--> DROPPED

STOPPING and FAILED still give their position (everything handled before is
committable); DROPPED commits nothing. Fetching is a separate flag (`paused`), the
transport's FETCHING/PAUSED state of the shard.

RUNNING: records of the shard wait in a queue of at most `max_in_flight` records; when
the queue is full the transport pauses the shard, and resumes it once the queue has
drained to half. A slow handler therefore slows fetching, and memory stays bounded.
Batches of up to `batch_size` queued records go through the handler, in order, with
retries and dead-lettering (`workers.retry`). While a transient failure lasts (the
sink or broker away) the shard is STALLED: it waits and retries, dead-letters
nothing, its lag grows, `shardctl_worker_shard_stalled` is 1, and its committed
offset record carries `stalled` (shown by `shardctl doctor`). The position advances only after the
whole batch is handled or dead-lettered (P5). Undecodable messages are dead-lettered
without calling the handler. `claim.valid()` is checked before every batch, so a
zombie (paused past its TTL) handles nothing after it resumes.

With a `gate` (`workers.reshard_gate`), a shard that gains keys in a change of the
shard count handles records only below the gate's limits until the gate opens; the
rest wait in its queue.

A shard whose loop stops by itself must not go silent. If a sink refused the owner
token it is DROPPED (Ownership will see the newer owner); for anything else it is
FAILED and reported through `claim.fail(reason)`: the worker gives that shard up
(`Ownership.fail`), `stop` returns the position handled so far, which is committed
before the shard is released and, after a backoff, acquired again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from shardctl.core.metrics import (
    WORKER_DLQ,
    WORKER_EVENTS,
    WORKER_HANDLER_SECONDS,
    WORKER_STALLED,
    WORKER_TRANSIENT_RETRIES,
)
from shardctl.core.records import OffsetRecord, ShardStall
from shardctl.core.states import Transitions
from workers.deadletters import DeadLetter, DeadLetterWriter
from workers.events import Batch, Event, EventDecodeError, decode_message
from workers.handlers import Fenced, Handler
from workers.offsets import TopicRecreated, check_topic_ids
from workers.retry import RetryPolicy, Stopped, dead_letter, process_batch
from workers.transports.base import Record, Transport, TransportError

log = logging.getLogger(__name__)


class ShardClaim(Protocol):
    """What `start` needs of an owned shard (`workers.ownership.Claim` is one)."""

    @property
    def shard(self) -> int: ...

    @property
    def token(self) -> int: ...

    @property
    def offset(self) -> OffsetRecord | None: ...

    def valid(self) -> bool: ...

    def fail(self, reason: str) -> None: ...


class ShardGate(Protocol):
    """Holds back records of shards that gain keys in a change of the shard count."""

    def limits(self, shard: int) -> Mapping[str, int] | None:
        """Per topic, the first position of `shard` that waits (a topic not in the map
        waits from 0); None when nothing of `shard` waits."""
        ...

    async def wait(self, wake: asyncio.Event, timeout_s: float) -> None:
        """Until the gate changes, `wake` is set, or `timeout_s` passes."""
        ...


@dataclass(frozen=True)
class StaticClaim:
    """A claim without etcd, for readers that own nothing (`shardctl tail`, benchmarks)."""

    shard: int
    token: int = 0
    offset: OffsetRecord | None = None

    def valid(self) -> bool:
        return True

    def fail(self, reason: str) -> None:
        """Nothing to release without etcd: the consumer logged the error, and the shard
        stays stopped."""


@dataclass(frozen=True)
class ConsumerConfig:
    max_in_flight: int = 1000  # records fetched and not yet handled, per shard
    batch_size: int = 200
    idle_wait_s: float = 1.0
    poll_timeout_s: float = 0.2
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # How often the topics' ids are compared with those of the running shards' offsets.
    topic_check_s: float = 30.0
    # A running, unpaused shard that got no record for this long asks the transport
    # whether the broker holds records past its position, and if so to fetch again.
    fetch_stall_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {self.max_in_flight}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


class ShardState(Enum):
    RUNNING = "running"
    STOPPING = "stopping"  # handed over: finishing the batch in hand
    FAILED = "failed"  # stopped by an error of its own; what was handled is committable
    DROPPED = "dropped"  # ownership gone: nothing more is handled or committed


SHARD_TRANSITIONS = Transitions(
    "consumer shard",
    {
        ShardState.RUNNING: {ShardState.STOPPING, ShardState.FAILED, ShardState.DROPPED},
        ShardState.STOPPING: {ShardState.FAILED, ShardState.DROPPED},
        ShardState.FAILED: {ShardState.DROPPED},
    },
)


@dataclass
class _Shard:
    claim: ShardClaim
    queue: deque[Record] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    state: ShardState = ShardState.RUNNING
    # `abort` moves a shard to DROPPED from the keepalive thread.
    _moving: threading.Lock = field(default_factory=threading.Lock, repr=False)
    paused: bool = False  # the transport is not fetching it: its queue is full
    handled: dict[str, int] = field(default_factory=dict)
    last_event_id: str | None = None
    events_handled: int = 0
    dead_lettered: int = 0
    stall: ShardStall | None = None  # waiting out a transient failure since
    fetched_at: float = field(default_factory=time.monotonic)  # its last record came
    topic_ids: dict[str, str] = field(default_factory=dict)  # what its positions belong to

    @property
    def shard(self) -> int:
        return self.claim.shard

    @property
    def token(self) -> int:
        return self.claim.token

    def halted(self) -> bool:
        return self.state is not ShardState.RUNNING

    @property
    def dropped(self) -> bool:
        return self.state is ShardState.DROPPED

    def handling(self) -> bool:
        """Whether it still handles records (the batch in hand, when STOPPING)."""
        return self.state in (ShardState.RUNNING, ShardState.STOPPING)

    def move(
        self, new: ShardState, only_from: Collection[ShardState] | None = None
    ) -> ShardState | None:
        """Move to `new` (`SHARD_TRANSITIONS`) and return the state it left; None, and no
        move, if it already is in `new` or (with `only_from`) in another state than
        those. Any thread: the check and the move are one step."""
        with self._moving:
            old = self.state
            if old is new or (only_from is not None and old not in only_from):
                return None
            self.state = SHARD_TRANSITIONS.check(f"{self.shard} (token {self.token})", old, new)
            return old


class Consumer:
    def __init__(
        self,
        transport: Transport,
        handler: Handler,
        dead_letters: DeadLetterWriter,
        config: ConsumerConfig | None = None,
        worker_id: str = "local",
        gate: ShardGate | None = None,
    ) -> None:
        self.worker_id = worker_id
        self._gate = gate
        handler.observe_seconds = WORKER_HANDLER_SECONDS.labels(worker_id).observe
        self.transport = transport
        self.handler = handler
        self.dead_letters = dead_letters
        self.config = config or ConsumerConfig()
        self._shards: dict[int, _Shard] = {}
        self._cleanups: dict[int, asyncio.Task[None]] = {}
        self._fetcher: asyncio.Task[None] | None = None
        self._topic_watch: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False

    # -- lifecycle -----------------------------------------------------------------

    async def open(self) -> None:
        """Connect the transport and start fetching. Call once before any shard starts."""
        self._loop = asyncio.get_running_loop()
        await self.transport.start()
        if self._fetcher is None:
            self._fetcher = self._loop.create_task(self._fetch_loop())
        if self._topic_watch is None and self.transport.positional:
            self._topic_watch = self._loop.create_task(self._watch_topic_ids())

    async def close(self) -> None:
        """Stop every shard without a final position (call after Ownership released
        what it could), stop fetching, close the handler."""
        for shard in list(self._shards):
            self._begin_drop(shard, "consumer closing")
        await asyncio.gather(*self._cleanups.values(), return_exceptions=True)
        self._closing = True
        for task in (self._fetcher, self._topic_watch):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self.transport.close()
        await self.handler.close()

    # -- ShardConsumer -------------------------------------------------------------

    async def start(self, claim: ShardClaim) -> None:
        """Consume `claim.shard` from the furthest stored position (etcd's, or the
        handler's own if it stores offsets with its data)."""
        shard = claim.shard
        pending = self._cleanups.get(shard)
        if pending is not None:
            await asyncio.gather(pending, return_exceptions=True)
        if shard in self._shards:
            raise ValueError(
                f"shard {shard} is already consumed (token "
                f"{self._shards[shard].token}); stop it first"
            )
        positions: dict[str, int] = {}
        topic_ids: dict[str, str] = {}
        if self.transport.positional:
            # Stored offsets of another incarnation of a topic would skip or repeat
            # its events: refuse them before anything starts (TopicRecreated).
            current = await self.transport.topic_ids()
            check_topic_ids(shard, claim.offset, current, self.transport.topics)
            if claim.offset is not None:
                positions.update(claim.offset.positions)
                topic_ids.update(claim.offset.topic_ids)
            topic_ids.update(current)
        await self.handler.assign(shard, claim.token)
        own = await self.handler.positions(shard) or {}
        for topic, position in own.items():
            positions[topic] = max(position, positions.get(topic, position))
        # Positions of topics this worker does not read (any more) are carried along in
        # every commit, so a topic that comes back resumes where it stopped.
        consumed = {t: p for t, p in positions.items() if t in self.transport.topics}
        others = sorted(set(positions) - set(consumed))
        if others:
            log.info("shard %d: keeping the positions of unread topics %s", shard, others)
        st = _Shard(claim=claim, handled=dict(positions), topic_ids=topic_ids)
        if claim.offset is not None:
            st.last_event_id = claim.offset.event_id
        self._shards[shard] = st
        try:
            await self.transport.start_shard(shard, consumed)
        except BaseException:
            del self._shards[shard]
            raise
        st.task = asyncio.get_running_loop().create_task(self._run_shard(st))
        log.info(
            "shard %d: consuming as token %d from %s", shard, claim.token, positions or "the start"
        )

    def position(self, shard: int) -> OffsetRecord | None:
        st = self._shards.get(shard)
        if st is None or not st.handling():
            return None
        return self._final_position(st)

    async def stop(self, shard: int, token: int) -> OffsetRecord | None:
        """Stop fetching `shard`, finish the batch in hand, give back queued records,
        and return the position to commit (None if there is nothing to commit)."""
        st = self._shards.get(shard)
        if st is None or st.token != token:
            return None
        st.move(ShardState.STOPPING, only_from=(ShardState.RUNNING,))
        self.transport.pause(shard)
        queued = list(st.queue)
        st.queue.clear()
        await self.transport.abandon(queued)
        st.wake.set()
        if st.task is not None:
            await asyncio.gather(st.task, return_exceptions=True)
        st.stall = None  # no longer waiting: it stopped
        # A shard that failed by itself handled everything up to its position; one
        # dropped because its ownership ended must commit nothing.
        final = None if st.dropped else self._final_position(st)
        await self._finish(st)
        log.info("shard %d: stopped (token %d) at %s", shard, token, final)
        return final

    def abort(self, shards: Collection[int], reason: str) -> None:
        """Stop `shards` now, commit nothing. Any thread; returns at once."""
        for shard in shards:
            st = self._shards.get(shard)
            if st is not None:
                st.move(ShardState.DROPPED)  # seen by the shard loop before its next batch
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        for shard in shards:
            loop.call_soon_threadsafe(self._begin_drop, shard, reason)

    # -- observing -------------------------------------------------------------------

    @property
    def shards(self) -> dict[int, int]:
        """Shards being consumed, with their owner tokens."""
        return {s: st.token for s, st in self._shards.items() if not st.halted()}

    def queued(self, shard: int) -> int:
        """Records of `shard` fetched and waiting for the handler."""
        st = self._shards.get(shard)
        return 0 if st is None else len(st.queue)

    def lag(self, shard: int, committed: OffsetRecord | None) -> int | None:
        """Records of `shard` past its committed position: the transport's high
        watermark minus the committed offset, summed over topics (a topic without a
        committed offset counts from 0). None when the transport has no positions."""
        if shard not in self._shards or not self.transport.positional:
            return None
        marks = self.transport.high_watermarks(shard)
        if not marks:
            return None
        done = {} if committed is None else committed.positions
        return sum(max(0, high - done.get(topic, 0)) for topic, high in marks.items())

    def stats(self, shard: int) -> tuple[int, int]:
        """(events handled, events dead-lettered) of a shard being consumed."""
        st = self._shards[shard]
        return st.events_handled, st.dead_lettered

    # -- internals ---------------------------------------------------------------------

    def _final_position(self, st: _Shard) -> OffsetRecord | None:
        if not self.transport.positional or not st.handled:
            # No position to commit; a stall is still worth reporting.
            return None if st.stall is None else OffsetRecord(token=st.token, stalled=st.stall)
        return OffsetRecord(
            positions=dict(st.handled),
            event_id=st.last_event_id,
            token=st.token,
            topic_ids=dict(st.topic_ids),
            stalled=st.stall,
        )

    def _on_transient(self, st: _Shard) -> Callable[[BaseException | None], None]:
        labels = (self.worker_id, str(st.shard))

        def report(error: BaseException | None) -> None:
            if error is None:
                if st.stall is not None:
                    log.warning(
                        "shard %d: flowing again after a stall of %.1f s",
                        st.shard,
                        time.time() - st.stall.since,
                    )
                    st.stall = None
                    WORKER_STALLED.labels(*labels).set(0)
                return
            WORKER_TRANSIENT_RETRIES.labels(*labels).inc()
            if st.stall is None:
                cause = error.__cause__
                detail = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
                st.stall = ShardStall(
                    since=time.time(), error=f"{type(error).__name__}: {error}{detail}"
                )
                WORKER_STALLED.labels(*labels).set(1)

        return report

    def _begin_drop(self, shard: int, reason: str) -> None:
        st = self._shards.get(shard)
        if st is None or shard in self._cleanups:
            return
        st.move(ShardState.DROPPED)
        task = asyncio.get_running_loop().create_task(self._drop(st, reason))
        self._cleanups[shard] = task
        task.add_done_callback(lambda _t: self._cleanups.pop(shard, None))

    async def _drop(self, st: _Shard, reason: str) -> None:
        queued = list(st.queue)
        st.queue.clear()
        await self.transport.abandon(queued)
        if st.task is not None and st.task is not asyncio.current_task():
            st.task.cancel()
            await asyncio.gather(st.task, return_exceptions=True)
        await self._finish(st)
        log.warning("shard %d: dropped without commit (token %d): %s", st.shard, st.token, reason)

    async def _finish(self, st: _Shard) -> None:
        with contextlib.suppress(KeyError):  # never stalled here
            WORKER_STALLED.remove(self.worker_id, str(st.shard))
        try:
            await self.transport.stop_shard(st.shard)
        finally:
            if self._shards.get(st.shard) is st:
                del self._shards[st.shard]
        try:
            await self.handler.revoke(st.shard)
        except Exception:
            log.exception("shard %d: handler %s on_revoke failed", st.shard, self.handler.name)

    async def _watch_topic_ids(self) -> None:
        """Stop a running shard whose topic was deleted and re-created under it."""
        while not self._closing:
            await asyncio.sleep(self.config.topic_check_s)
            try:
                current = await self.transport.topic_ids()
            except TransportError as exc:
                log.warning("checking the topics' ids failed; retrying later: %s", exc)
                continue
            for st in list(self._shards.values()):
                if st.halted():
                    continue
                for topic, now in current.items():
                    was = st.topic_ids.setdefault(topic, now)
                    if was != now:
                        error = TopicRecreated(st.shard, topic, st.handled.get(topic), was, now)
                        self._stop_self(st, str(error))
                        break

    async def _fetch_loop(self) -> None:
        while not self._closing:
            try:
                records = await self.transport.poll(
                    self.config.batch_size, self.config.poll_timeout_s
                )
            except Exception:
                log.exception("fetching failed; retrying in 1 s")
                await asyncio.sleep(1.0)
                continue
            stray: list[Record] = []
            now = time.monotonic()
            for record in records:
                st = self._shards.get(record.shard)
                if st is None or st.halted():
                    stray.append(record)
                    continue
                st.queue.append(record)
                st.fetched_at = now
                if not st.paused and len(st.queue) >= self.config.max_in_flight:
                    self.transport.pause(st.shard)
                    st.paused = True
                st.wake.set()
            if stray:
                await self.transport.abandon(stray)

    async def _run_shard(self, st: _Shard) -> None:
        try:
            while st.handling():
                if not st.queue:
                    if st.state is ShardState.STOPPING:
                        return
                    st.wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(st.wake.wait(), self.config.idle_wait_s)
                    if not st.queue and not st.paused and st.state is ShardState.RUNNING:
                        await self._check_fetching(st)
                    continue
                take = min(self.config.batch_size, len(st.queue))
                if self._gate is not None:
                    take = self._admitted(self._gate, st, take)
                    if take == 0:
                        st.wake.clear()
                        await self._gate.wait(st.wake, self.config.idle_wait_s)
                        continue
                records = [st.queue.popleft() for _ in range(take)]
                if st.paused and len(st.queue) <= self.config.max_in_flight // 2:
                    self.transport.resume(st.shard)
                    st.paused = False
                if not st.handling():
                    await self.transport.abandon(records)  # it stopped meanwhile
                    return
                if not st.claim.valid():
                    await self.transport.abandon(records)
                    self._stop_self(st, "ownership is no longer valid", fenced=True)
                    return
                await self._process(st, records)
        except Fenced as exc:
            self._stop_self(st, f"the sink refused token {st.token}: {exc}", fenced=True)
        except Stopped as exc:
            log.info("shard %d: %s", st.shard, exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("shard %d: consume loop failed", st.shard)
            self._stop_self(st, f"consume loop failed: {type(exc).__name__}: {exc}")

    async def _check_fetching(self, st: _Shard) -> None:
        """An idle shard whose last record came `fetch_stall_s` ago: if the broker
        holds records past its position, the transport fetches them again (a fetch
        that stopped for good after a broker restart would hold the shard forever)."""
        now = time.monotonic()
        if now - st.fetched_at < self.config.fetch_stall_s:
            return
        st.fetched_at = now  # the next check is a whole fetch_stall_s later
        positions = {t: p for t, p in st.handled.items() if t in self.transport.topics}
        try:
            behind = await self.transport.refetch_if_behind(st.shard, positions)
        except TransportError as exc:
            log.warning("shard %d: %s; checking again later", st.shard, exc)
            return
        if behind:
            log.warning(
                "shard %d: no record fetched for %.0f s while the broker holds newer ones "
                "or cannot tell (topic: (position, newest; -1 not known) %s): fetching "
                "again from the position",
                st.shard,
                self.config.fetch_stall_s,
                behind,
            )

    @staticmethod
    def _admitted(gate: ShardGate, st: _Shard, take: int) -> int:
        """How many of the first `take` queued records the gate lets through."""
        limits = gate.limits(st.shard)
        if limits is None:
            return take
        for index, record in enumerate(itertools.islice(st.queue, take)):
            if record.position is not None and record.position >= limits.get(record.topic, 0):
                return index
        return take

    def _stop_self(self, st: _Shard, reason: str, fenced: bool = False) -> None:
        """The shard cannot go on here; nothing more is handled. Unless fenced, what was
        handled before stays committable: `stop` still returns its position."""
        log.error("shard %d: stopped (token %d): %s", st.shard, st.token, reason)
        if fenced:
            st.move(ShardState.DROPPED)
        else:
            left = st.move(ShardState.FAILED, only_from=(ShardState.RUNNING, ShardState.STOPPING))
            if left is ShardState.RUNNING:
                # Not while stopping: the release is under way already.
                st.claim.fail(reason)

    async def _process(self, st: _Shard, records: Sequence[Record]) -> None:
        done = 0  # records settled (or given back) so far, in order
        shard, token = st.shard, st.token
        try:
            run: list[Event] = []
            run_records: list[Record] = []
            for record in records:
                try:
                    message = decode_message(record.value, shard, record.topic, record.position)
                except EventDecodeError as exc:
                    await self._handle_run(st, run, run_records)
                    done += len(run_records)
                    run, run_records = [], []
                    letter = DeadLetter.undecodable(
                        st.shard,
                        record.topic,
                        record.position,
                        record.key,
                        record.value,
                        st.token,
                        exc,
                    )
                    await dead_letter(
                        letter,
                        self.dead_letters,
                        self.config.retry,
                        asyncio.sleep,
                        lambda: not st.handling(),
                    )
                    st.dead_lettered += 1
                    WORKER_DLQ.labels(self.worker_id, str(st.shard)).inc()
                    await self._advance(st, [record], None)
                    done += 1
                    continue
                # By position (shard, topic, position, key, raw, message, token):
                # cheaper per event than keywords.
                run.append(
                    Event(
                        shard,
                        record.topic,
                        record.position,
                        record.key,
                        record.value,
                        message,
                        token,
                    )
                )
                run_records.append(record)
            await self._handle_run(st, run, run_records)
        except Stopped:
            # Stopped mid-batch (a stop ended a wait): what is not handled goes back,
            # so the transport holds nothing of the shard (NSQ requeues it).
            await self.transport.abandon(records[done:])
            raise

    async def _handle_run(self, st: _Shard, events: list[Event], records: list[Record]) -> None:
        if not events:
            return
        batch = Batch.of(st.shard, st.token, tuple(events))
        outcome = await process_batch(
            batch,
            self.handler,
            self.config.retry,
            self.dead_letters,
            asyncio.sleep,
            # A stop also ends a wait: the batch stays unhandled, so the next owner
            # starts with it, rather than the handoff waiting for the outage to end.
            st.halted,
            self._on_transient(st),
        )
        st.events_handled += outcome.handled
        st.dead_lettered += outcome.dead_lettered
        shard = str(st.shard)
        if outcome.handled:
            WORKER_EVENTS.labels(self.worker_id, shard).inc(outcome.handled)
        if outcome.dead_lettered:
            WORKER_DLQ.labels(self.worker_id, shard).inc(outcome.dead_lettered)
        await self._advance(st, records, batch.last_event_id)

    async def _advance(self, st: _Shard, records: Sequence[Record], event_id: str | None) -> None:
        if not st.handling():
            # Handled by a former owner's leftovers: report nothing, give records back.
            await self.transport.abandon(records)
            return
        await self.transport.settle(records)
        for record in records:
            if record.position is not None:
                st.handled[record.topic] = record.position + 1
        if event_id is not None:
            st.last_event_id = event_id
