"""The consumer's per-shard state machine, driven through an in-memory transport:
a handover commits exactly what was handled, a failure is reported through the
claim and keeps its position, a fenced or aborted shard commits nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardctl.core.records import OffsetRecord
from shardctl.core.states import IllegalTransition
from tests.polling import wait_async
from tests.stub_transport import StubTransport
from workers.consumer import SHARD_TRANSITIONS, Consumer, ConsumerConfig, ShardState, _Shard
from workers.deadletters import DeadLetter
from workers.events import Event
from workers.handlers import Fenced, Handler
from workers.retry import RetryPolicy

CONFIG = ConsumerConfig(
    max_in_flight=4,
    batch_size=3,
    idle_wait_s=0.05,
    poll_timeout_s=0.05,
    retry=RetryPolicy(attempts=2, initial_delay_s=0.001, max_delay_s=0.001),
)


@dataclass
class ClaimStub:
    shard: int
    token: int = 7
    offset: OffsetRecord | None = None
    holds: bool = True
    failures: list[str] = field(default_factory=list)

    def valid(self) -> bool:
        return self.holds

    def fail(self, reason: str) -> None:
        self.failures.append(reason)


@dataclass
class Recorder:
    """A handler that records what it handled; `fail_with(n)` decides per event."""

    handled: list[tuple[int, int | None]] = field(default_factory=list)
    fail_with: Callable[[int], BaseException | None] = lambda _n: None

    async def on_event(self, event: Event) -> None:
        error = self.fail_with(event.message["n"])
        if error is not None:
            raise error
        self.handled.append((event.shard, event.position))


@dataclass
class Letters:
    written: list[DeadLetter] = field(default_factory=list)

    async def write(self, letter: DeadLetter) -> None:
        self.written.append(letter)


def event(n: int) -> bytes:
    return json.dumps({"n": n, "event_id": f"e{n}"}).encode()


def run(body: Callable[[Consumer, StubTransport, Recorder], Awaitable[None]]) -> None:
    async def main() -> None:
        transport = StubTransport()
        recorder = Recorder()
        consumer = Consumer(transport, Handler("test:recorder", recorder), Letters(), CONFIG)
        await consumer.open()
        try:
            await body(consumer, transport, recorder)
        finally:
            await consumer.close()

    asyncio.run(main())


def test_a_handover_stops_after_the_batch_in_hand_and_gives_the_position_after_it() -> None:
    async def body(consumer: Consumer, transport: StubTransport, recorder: Recorder) -> None:
        for n in range(10):
            transport.publish(0, event(n))
        claim = ClaimStub(0)
        await consumer.start(claim)
        await wait_async("ten events handled", lambda: len(recorder.handled) == 10)
        assert consumer.shards == {0: 7}
        final = await consumer.stop(0, 7)
        assert final is not None
        assert dict(final.positions) == {"orders": 10} and final.event_id == "e9"
        assert [p for _s, p in recorder.handled] == list(range(10))
        assert len(transport.settled) == 10 and not transport.abandoned
        assert not transport.released_at_stop and transport.fetching() == set()
        assert consumer.shards == {} and not claim.failures

    run(body)


def test_a_shard_resumes_from_its_claims_offset() -> None:
    async def body(consumer: Consumer, transport: StubTransport, recorder: Recorder) -> None:
        for n in range(6):
            transport.publish(2, event(n))
        offset = OffsetRecord(positions={"orders": 4}, event_id="e3", token=3)
        await consumer.start(ClaimStub(2, offset=offset))
        await wait_async("the two events after the offset", lambda: len(recorder.handled) == 2)
        assert transport.started == [(2, {"orders": 4})]
        final = await consumer.stop(2, 7)
        assert final is not None and dict(final.positions) == {"orders": 6}
        assert recorder.handled == [(2, 4), (2, 5)]

    run(body)


def test_a_loop_failure_is_reported_once_through_the_claim_and_keeps_its_position() -> None:
    async def body(consumer: Consumer, transport: StubTransport, recorder: Recorder) -> None:
        for n in range(3):
            transport.publish(0, event(n))
        claim = ClaimStub(0)
        await consumer.start(claim)
        await wait_async("the first batch", lambda: len(transport.settled) == 3)
        transport.settle_error = RuntimeError("broker refused the ack")
        transport.publish(0, event(3))
        await wait_async("the failure reported", lambda: claim.failures)
        assert len(claim.failures) == 1 and "broker refused the ack" in claim.failures[0]
        assert consumer.shards == {}  # halted: no longer counted as consumed
        # What was handled before the failure is still committable.
        final = await consumer.stop(0, 7)
        assert final is not None and dict(final.positions) == {"orders": 3}

    run(body)


def test_a_fenced_shard_is_dropped_commits_nothing_and_is_not_reported_as_failed() -> None:
    async def body(consumer: Consumer, transport: StubTransport, recorder: Recorder) -> None:
        recorder.fail_with = lambda n: Fenced("token 7 is stale", 0, 7) if n == 2 else None
        for n in range(5):
            transport.publish(0, event(n))
        claim = ClaimStub(0)
        await consumer.start(claim)
        await wait_async("the shard dropped", lambda: consumer.shards == {})
        assert await consumer.stop(0, 7) is None
        assert not claim.failures
        assert 2 not in [p for _s, p in recorder.handled]

    run(body)


def test_a_claim_no_longer_valid_handles_nothing_more_and_gives_its_records_back() -> None:
    async def body(consumer: Consumer, transport: StubTransport, recorder: Recorder) -> None:
        claim = ClaimStub(0)
        await consumer.start(claim)
        claim.holds = False  # a zombie: its lease expired while it was paused
        for n in range(3):
            transport.publish(0, event(n))
        await wait_async("the shard dropped", lambda: consumer.shards == {})
        assert recorder.handled == []
        assert await consumer.stop(0, 7) is None
        assert not transport.settled and len(transport.abandoned) == 3
        assert not claim.failures

    run(body)


def test_an_abort_commits_nothing_and_the_shard_can_start_again() -> None:
    async def body(consumer: Consumer, transport: StubTransport, recorder: Recorder) -> None:
        for n in range(4):
            transport.publish(1, event(n))
        await consumer.start(ClaimStub(1))
        await wait_async("four events handled", lambda: len(recorder.handled) == 4)
        consumer.abort([1], "lease lost")
        await wait_async("the shard gone", lambda: transport.fetching() == set())
        assert consumer.position(1) is None
        assert await consumer.stop(1, 7) is None
        await consumer.start(ClaimStub(1, token=8))
        assert consumer.shards == {1: 8}

    run(body)


def test_a_full_queue_pauses_fetching_and_resumes_it_once_drained() -> None:
    async def body(consumer: Consumer, transport: StubTransport, recorder: Recorder) -> None:
        gate = asyncio.Event()

        async def slow(event: Event) -> None:
            await gate.wait()
            recorder.handled.append((event.shard, event.position))

        consumer.handler = Handler("test:slow", slow)
        for n in range(20):
            transport.publish(0, event(n))
        await consumer.start(ClaimStub(0))
        await wait_async("fetching paused", lambda: transport.paused(0))
        assert consumer.queued(0) <= CONFIG.max_in_flight + CONFIG.batch_size
        gate.set()
        await wait_async("every event handled", lambda: len(recorder.handled) == 20)
        assert not transport.paused(0)
        assert [p for _s, p in recorder.handled] == list(range(20))

    run(body)


def test_an_undecodable_record_is_dead_lettered_and_passed() -> None:
    async def main() -> None:
        transport = StubTransport()
        recorder = Recorder()
        letters = Letters()
        consumer = Consumer(transport, Handler("test:recorder", recorder), letters, CONFIG)
        await consumer.open()
        try:
            transport.publish(0, event(0))
            transport.publish(0, b"not json")
            transport.publish(0, event(2))
            await consumer.start(ClaimStub(0))
            await wait_async("both good events", lambda: len(recorder.handled) == 2)
            final = await consumer.stop(0, 7)
        finally:
            await consumer.close()
        assert final is not None and dict(final.positions) == {"orders": 3}
        assert [letter.position for letter in letters.written] == [1]

    asyncio.run(main())


def test_starting_a_shard_twice_is_refused() -> None:
    async def body(consumer: Consumer, transport: StubTransport, recorder: Recorder) -> None:
        await consumer.start(ClaimStub(0))
        with pytest.raises(ValueError, match="already consumed"):
            await consumer.start(ClaimStub(0, token=9))

    run(body)


@settings(max_examples=200)
@given(moves=st.lists(st.sampled_from(list(ShardState)), max_size=8))
def test_a_shard_moves_only_along_its_table(moves: list[ShardState]) -> None:
    shard = _Shard(claim=ClaimStub(0))
    for new in moves:
        old = shard.state
        if old is new:
            assert shard.move(new) is None
        elif SHARD_TRANSITIONS.allows(old, new):
            assert shard.move(new) is old and shard.state is new
        else:
            with pytest.raises(IllegalTransition, match=f"{old.name} --> {new.name}"):
                shard.move(new)
            assert shard.state is old
    # DROPPED is final: nothing leaves it.
    if shard.state is ShardState.DROPPED:
        assert not any(SHARD_TRANSITIONS.allows(ShardState.DROPPED, s) for s in ShardState)


def test_only_from_leaves_a_shard_in_another_state_where_it_is() -> None:
    shard = _Shard(claim=ClaimStub(0))
    shard.move(ShardState.DROPPED)
    assert shard.move(ShardState.STOPPING, only_from=(ShardState.RUNNING,)) is None
    assert shard.state is ShardState.DROPPED


@settings(max_examples=25, deadline=None)
@given(
    total=st.integers(1, 12),
    bad=st.sets(st.integers(0, 11), max_size=3),
    batch_size=st.integers(1, 4),
    max_in_flight=st.integers(1, 5),
    stop_after=st.integers(0, 12),
)
def test_a_handover_at_any_point_commits_exactly_the_records_settled_in_order(
    total: int, bad: set[int], batch_size: int, max_in_flight: int, stop_after: int
) -> None:
    stop_after = min(stop_after, total)
    config = ConsumerConfig(
        max_in_flight=max_in_flight,
        batch_size=batch_size,
        idle_wait_s=0.02,
        poll_timeout_s=0.02,
        retry=CONFIG.retry,
    )

    async def main() -> None:
        transport = StubTransport()
        recorder = Recorder()
        letters = Letters()
        consumer = Consumer(transport, Handler("test:recorder", recorder), letters, config)
        await consumer.open()
        try:
            for n in range(total):
                transport.publish(0, b"not json" if n in bad else event(n))
            await consumer.start(ClaimStub(0))
            await wait_async(
                f"{stop_after} records settled", lambda: len(transport.settled) >= stop_after
            )
            final = await consumer.stop(0, 7)
        finally:
            await consumer.close()
        done = 0 if final is None else final.positions["orders"]
        assert stop_after <= done <= total
        assert [r.position for r in transport.settled] == list(range(done))
        assert recorder.handled == [(0, n) for n in range(done) if n not in bad]
        assert [letter.position for letter in letters.written] == sorted(n for n in bad if n < done)
        given_back = [r.position for r in transport.abandoned + transport.released_at_stop]
        assert all(p is not None and p >= done for p in given_back)
        assert len(given_back) == len(set(given_back))

    asyncio.run(main())
