"""The CDC reader's term of leadership, step by step, against an in-memory etcd and a
stub read stage (a list of chunks and heartbeats standing in for the binlog):
when the checkpoint moves, where a stop or a shard-count switch lands, what a lost
or deposed leadership and a failed delivery do, back-pressure, and the reader's
state machine. The whole reader against real MariaDB, Kafka and etcd:
tests/integration/test_cdc_*.py."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from cdc.acks import AckTracker
from cdc.bootstrap import BootstrapRunner
from cdc.checkpoint import CheckpointStore
from cdc.options import CdcOptions
from cdc.producers.base import Ack, DeliveryError, Outgoing, Producer
from cdc.reader import (
    LagMonitor,
    LeadershipLost,
    Reader,
    ReaderState,
    _Term,
    _TermEnd,
)
from cdc.replication.position import Checkpoint
from cdc.replication.source import Heartbeat
from cdc.reshard import ShardSwitch
from cdc.rows import TxnContext
from cdc.snapshot.runner import IncrementalSnapshots
from cdc.stage import Chunk, StageItem, StageSpec
from shardctl.core.config import load_settings
from shardctl.core.etcd import Leadership
from shardctl.core.etcd.loop_thread import LoopThread
from shardctl.core.states import IllegalTransition
from tests.stub_etcd import MemoryEtcd, StubSession

SOURCE = "orders"


class StubProducer(Producer):
    """Holds every message until the test delivers it (`deliver`), as a broker
    that has not answered yet; `flush` delivers everything, `failing` makes the
    next poll or flush raise as a rejected delivery does."""

    def __init__(self) -> None:
        self.pending: list[tuple[Outgoing, Ack]] = []
        self.sent: list[Outgoing] = []
        self.failing: str | None = None
        self.per_poll = 0  # messages delivered by each poll(timeout > 0)
        self.closed = False

    def send(self, message: Outgoing, on_ack: Ack) -> None:
        self.sent.append(message)
        self.pending.append((message, on_ack))

    def deliver(self, count: int | None = None) -> None:
        count = len(self.pending) if count is None else count
        done, self.pending = self.pending[:count], self.pending[count:]
        for _, ack in done:
            ack()

    def _raise_if_failing(self) -> None:
        if self.failing is not None:
            raise DeliveryError(self.failing)

    def poll(self, timeout: float = 0.0) -> None:
        self._raise_if_failing()
        if timeout > 0:
            self.deliver(min(self.per_poll, len(self.pending)))

    def flush(self, timeout: float) -> None:
        self._raise_if_failing()
        self.deliver()

    def close(self) -> None:
        self.closed = True


@dataclass
class StubSnapshots:
    """No incremental snapshot runs; records the boundaries it was offered."""

    boundaries: list[Checkpoint] = field(default_factory=list)

    def observe(self, chunk: Chunk) -> None:
        pass

    def step(
        self, producer: Producer, tracker: Any, published: Checkpoint, heartbeat: bool
    ) -> None:
        self.boundaries.append(published)

    def close(self) -> None:
        pass


@dataclass
class StubBootstrap:
    armed: None = None

    def due(self, ctx: object) -> bool:
        return False

    def arm_next(self, leadership: Leadership) -> bool:
        return False

    def close(self) -> None:
        pass


@dataclass
class StubSwitch:
    asked: bool = False

    def requested(self) -> bool:
        return self.asked


class StubLag:
    def read(self, end: Checkpoint, committed_at: float) -> None:
        pass

    def start(self) -> StubLag:
        return self

    def stop(self) -> None:
        pass


def end_of(n: int) -> Checkpoint:
    return Checkpoint("mysql-bin.000001", 1000 * n, None, 1_700_000_000 + n, 1)


def chunk(txn: int, messages: int, last: bool = True) -> Chunk:
    ctx = TxnContext(1, None, None, "mysql-bin.000001", 1000 * txn - 500, 1_700_000_000, txn)
    outgoing = [
        Outgoing(b"k%d" % i, b"{}", i % 4, f"mysql-bin.000001:{1000 * txn}#{i}", "shop", "orders")
        for i in range(messages)
    ]
    return Chunk(ctx, end_of(txn), outgoing, last)


class Leader:
    """A reader that won the election in an in-memory etcd, with one term open."""

    def __init__(self, *, checkpoint_interval_s: float = 3600.0, max_in_flight: int = 10_000):
        self.etcd = MemoryEtcd()
        self.loop = LoopThread("test-reader-etcd").start()
        options = CdcOptions(
            source=SOURCE,
            reader_id="r1",
            checkpoint_interval_s=checkpoint_interval_s,
            max_in_flight=max_in_flight,
        )
        self.reader = Reader(load_settings(), options)
        session = StubSession(self.etcd.grant())
        key = self.reader.keyspace.cdc_leader(SOURCE)
        self.loop.run(self.etcd.put(key, b"r1", lease=session.lease_id))
        self.leadership = Leadership(
            self.etcd,  # type: ignore[arg-type]
            session,  # type: ignore[arg-type]
            key,
            "r1",
            self.etcd.keys[key].create_revision,
        )
        self.store = CheckpointStore(self.etcd, self.reader.keyspace, SOURCE)  # type: ignore[arg-type]
        self.producer = StubProducer()
        self.snapshots = StubSnapshots()
        self.switch = StubSwitch()
        self.lost: concurrent.futures.Future[str] = concurrent.futures.Future()
        self.reader._move(ReaderState.LEADING)
        self.term = _Term(
            loop=self.loop,
            store=self.store,
            leadership=self.leadership,
            connect={},
            spec=cast(StageSpec, None),  # the stage is the test's list of items
            producer=self.producer,
            tracker=AckTracker(),
            bootstrap=cast(BootstrapRunner, StubBootstrap()),
            snapshots=cast(IncrementalSnapshots, self.snapshots),
            switch=cast(ShardSwitch, self.switch),
            lag=cast(LagMonitor, StubLag()),
            lost=self.lost,
            published=end_of(0),
            saved=end_of(0),
            next_save=0.0,
        )

    def close(self) -> None:
        self.loop.stop()

    def periodic_due(self) -> None:
        """The periodic step with the checkpoint's interval up."""
        self.term.next_save = 0.0
        self.reader._periodic(self.term)

    def stored(self) -> Checkpoint | None:
        return self.loop.run(self.store.load())

    def stream(
        self, items: list[StageItem], before: dict[int, Callable[[], None]] | None = None
    ) -> tuple[_TermEnd, int]:
        """Run the term over `items`; `before[i]` runs just before item i is handed
        over. Returns why the stream stopped and how many items it took."""
        taken = [0]

        def stage() -> Iterator[StageItem]:
            for i, item in enumerate(items):
                if before and i in before:
                    before[i]()
                taken[0] = i + 1
                yield item
            raise AssertionError("the stream did not stop inside the items given")

        return self.reader._stream(self.term, stage()), taken[0]


@pytest.fixture
def leader() -> Iterator[Leader]:
    made = Leader()
    yield made
    made.close()


def test_the_checkpoint_moves_only_to_the_end_of_a_delivered_transaction(leader: Leader) -> None:
    leader.reader._take(leader.term, chunk(1, 3, last=False))
    leader.reader._take(leader.term, chunk(1, 2))
    leader.reader._take(leader.term, chunk(2, 2))
    leader.producer.deliver(4)  # all of transaction 1's chunk 1 and 1 of chunk 2
    leader.periodic_due()
    assert leader.stored() is None, "stored before transaction 1 was delivered in full"
    leader.producer.deliver(2)  # the rest of 1, and half of 2
    leader.periodic_due()
    assert leader.stored() == end_of(1)
    leader.producer.deliver()
    leader.periodic_due()
    assert leader.stored() == end_of(2)


def test_a_stop_mid_transaction_keeps_the_checkpoint_at_its_start(leader: Leader) -> None:
    items: list[StageItem] = [chunk(1, 2), chunk(2, 2, last=False), chunk(2, 2)]
    ending, taken = leader.stream(items, before={1: lambda: leader.reader.stop("test")})
    assert (ending, taken) == (_TermEnd.STOP, 2)
    leader.reader._end_term(leader.term, None, ending)
    # Transaction 2's first chunk went out and was delivered by the flush, yet the
    # checkpoint is transaction 1's end: a restart publishes all of 2 again.
    assert len(leader.producer.sent) == 4 and not leader.producer.pending
    assert leader.stored() == end_of(1)
    assert leader.reader.state is ReaderState.FLUSHING
    assert leader.producer.closed


def test_a_shard_count_switch_waits_for_the_transaction_boundary(leader: Leader) -> None:
    leader.switch.asked = True
    items: list[StageItem] = [chunk(1, 2, last=False), chunk(1, 1, last=False), chunk(1, 1)]
    ending, taken = leader.stream([*items, chunk(2, 1)])
    assert (ending, taken) == (_TermEnd.SWITCH, 3)
    leader.reader._end_term(leader.term, None, ending)
    assert leader.stored() == end_of(1)
    # The snapshots were offered the boundaries only, never the middle of a transaction.
    assert leader.snapshots.boundaries == [end_of(1)]


def test_lost_leadership_stops_publishing_before_the_next_item(leader: Leader) -> None:
    items: list[StageItem] = [chunk(1, 2), chunk(2, 2)]
    with pytest.raises(LeadershipLost, match="lease 1 expired"):
        leader.stream(items, before={1: lambda: leader.lost.set_result("lease 1 expired")})
    assert [m.event_id for m in leader.producer.sent] == [m.event_id for m in chunk(1, 2).messages]
    leader.producer.deliver()
    leader.reader._end_term(leader.term, None, None)
    assert leader.stored() is None, "a term that ended on an error stored a checkpoint"
    assert leader.reader.state is ReaderState.LEADING


def test_a_deposed_leader_cannot_move_the_checkpoint(leader: Leader) -> None:
    leader.reader._take(leader.term, chunk(1, 1))
    leader.producer.deliver()
    leader.periodic_due()
    assert leader.stored() == end_of(1)
    # Another reader's campaign took the key: the token (create_revision) changed.
    key = leader.leadership.key
    leader.loop.run(leader.etcd.delete(key))
    leader.loop.run(leader.etcd.put(key, b"r2"))
    leader.reader._take(leader.term, chunk(2, 1))
    leader.producer.deliver()
    with pytest.raises(LeadershipLost, match="no longer has create_revision"):
        leader.periodic_due()
    assert leader.stored() == end_of(1)


def test_an_etcd_outage_only_delays_the_checkpoint(leader: Leader) -> None:
    leader.reader._take(leader.term, chunk(1, 1))
    leader.producer.deliver()
    leader.etcd.down = True
    leader.periodic_due()  # logged, not raised
    assert leader.term.saved == end_of(0)
    leader.etcd.down = False
    leader.periodic_due()
    assert leader.stored() == end_of(1) == leader.term.saved


def test_a_failed_delivery_is_raised_and_the_checkpoint_stays(leader: Leader) -> None:
    leader.reader._take(leader.term, chunk(1, 2))
    leader.producer.failing = "mysql-bin.000001:1000#1: message too large for topic orders"
    with pytest.raises(DeliveryError, match="message too large"):
        leader.stream([chunk(2, 1)])
    with pytest.raises(DeliveryError):
        leader.reader._end_term(leader.term, None, _TermEnd.STOP)
    assert leader.stored() is None
    assert leader.producer.closed


def test_back_pressure_holds_the_stream_until_acks_make_room() -> None:
    leader = Leader(max_in_flight=3)
    try:
        leader.producer.per_poll = 1
        leader.reader._take(leader.term, chunk(1, 8))
        assert leader.term.tracker.in_flight == 3
        assert len(leader.producer.pending) == 3
    finally:
        leader.close()


def test_a_checkpoint_waits_for_its_interval(leader: Leader) -> None:
    leader.reader._periodic(leader.term)  # the term's first store is due at once
    leader.reader._take(leader.term, chunk(1, 1))
    leader.producer.deliver()
    leader.reader._periodic(leader.term)  # an hour early
    assert leader.stored() is None
    leader.periodic_due()
    assert leader.stored() == end_of(1)


def test_the_reader_refuses_an_illegal_move() -> None:
    reader = Reader(load_settings(), CdcOptions(source=SOURCE, reader_id="r9"))
    assert reader.state is ReaderState.STANDBY
    with pytest.raises(IllegalTransition, match="reader r9: STANDBY --> FLUSHING"):
        reader._move(ReaderState.FLUSHING)
    reader._move(ReaderState.LEADING)
    reader._move(ReaderState.FLUSHING)
    reader._move(ReaderState.STOPPED)
    with pytest.raises(IllegalTransition):
        reader._move(ReaderState.LEADING)


def test_a_read_stage_that_ends_by_itself_is_an_error_naming_the_position(
    leader: Leader,
) -> None:
    items: list[StageItem] = [chunk(1, 1), Heartbeat()]
    with pytest.raises(RuntimeError, match=r"ended after mysql-bin\.000001:1000 without an error"):
        leader.reader._stream(leader.term, iter(items))
