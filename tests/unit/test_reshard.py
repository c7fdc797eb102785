"""Online resharding, pure parts: the reshard record, the workers' gate rules, and the
partition plan of `shardctl shards set`."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardctl.cli.coordination import partition_plan
from shardctl.core.hashing import shard_of
from shardctl.core.records import Reshard
from workers.reshard_gate import barrier_passed, hold_limits, lagging_shards


def switched(from_shards: int = 2, to_shards: int = 3, shard_hash: str = "jump") -> Reshard:
    return Reshard(
        from_shards=from_shards,
        to_shards=to_shards,
        shard_hash=shard_hash,  # type: ignore[arg-type]
        state="switched",
        requested_at=1.0,
        position="binlog.000001:400",
        barrier={"t": [10, 20, 0], "u": [5, 0, 0]},
    )


def test_the_record_round_trips_and_names_its_gaining_shards() -> None:
    record = switched()
    assert Reshard.decode("k", record.encode()) == record
    assert record.gaining == range(2, 3)
    assert switched(shard_hash="crc32").gaining == range(3)
    assert record.in_progress and not record.model_copy(update={"state": "complete"}).in_progress


def test_the_barrier_is_passed_once_every_old_shard_committed_it() -> None:
    record = switched()
    assert not barrier_passed(record, {})
    assert lagging_shards(record, {}) == [0, 1]
    almost = {0: {"t": 10, "u": 5}, 1: {"t": 19}}
    assert not barrier_passed(record, almost)
    assert lagging_shards(record, almost) == [1]
    done = {0: {"t": 10, "u": 5}, 1: {"t": 20}}
    assert barrier_passed(record, done)
    assert lagging_shards(record, done) == []
    # A new shard's commits do not count: only the old ones hold older changes.
    assert not barrier_passed(record, {2: {"t": 99, "u": 99}})


def test_only_gaining_shards_of_a_switched_change_are_held() -> None:
    record = switched()
    assert hold_limits(record, 2) == {"t": 0, "u": 0}
    assert hold_limits(record, 0) is None and hold_limits(record, 1) is None
    assert hold_limits(record.model_copy(update={"state": "requested"}), 2) is None
    assert hold_limits(record.model_copy(update={"state": "complete"}), 2) is None
    assert hold_limits(None, 2) is None
    crc = switched(shard_hash="crc32")
    assert hold_limits(crc, 0) == {"t": 10, "u": 5}


@given(
    keys=st.lists(st.binary(min_size=1, max_size=24), min_size=1, max_size=200),
    old=st.integers(1, 64),
    new=st.integers(1, 64),
)
def test_every_key_that_changes_shard_lands_in_a_held_shard(
    keys: list[bytes], old: int, new: int
) -> None:
    for shard_hash in ("jump", "crc32"):
        record = Reshard(
            from_shards=old,
            to_shards=new,
            shard_hash=shard_hash,  # type: ignore[arg-type]
            state="switched",
            requested_at=0.0,
        )
        for key in keys:
            before = shard_of(key, old, shard_hash)  # type: ignore[arg-type]
            after = shard_of(key, new, shard_hash)  # type: ignore[arg-type]
            if before != after:
                assert hold_limits(record, after) is not None


def test_partition_plan_grows_the_current_count_and_refuses_the_rest() -> None:
    grow, problems = partition_plan({"a": 8, "b": 12, "c": None}, 8, 12)
    assert grow == {"a": 8} and problems == []
    _, problems = partition_plan({"a": 9}, 8, 12)
    assert problems == ["a has 9 partition(s)"]
    _, problems = partition_plan({"a": 16}, 8, 12)
    assert problems == ["a has 16 partition(s)"]
    grow, problems = partition_plan({"a": 12}, 12, 8)
    assert problems == ["a has 12 partition(s)"] and grow == {}


@pytest.mark.parametrize("state", ["requested", "switched", "complete"])
def test_states_decode(state: str) -> None:
    record = switched().model_copy(update={"state": state})
    assert Reshard.decode("k", record.encode()).state == state


class FixedGate:
    def __init__(self, limits: dict[int, dict[str, int]]) -> None:
        self._limits = limits

    def limits(self, shard: int) -> dict[str, int] | None:
        return self._limits.get(shard)

    async def wait(self, wake: object, timeout_s: float) -> None:
        raise AssertionError("not waited on here")


def test_the_consumer_takes_only_records_below_the_limits() -> None:
    from workers.consumer import Consumer, StaticClaim, _Shard
    from workers.transports.base import Record

    def queued(shard: int, *positions: tuple[str, int | None]) -> _Shard:
        st = _Shard(claim=StaticClaim(shard))
        st.queue.extend(Record(shard, topic, pos, b"k", b"{}") for topic, pos in positions)
        return st

    gate = FixedGate({2: {"t": 10}})
    held = queued(2, ("t", 8), ("t", 9), ("t", 10), ("t", 11))
    assert Consumer._admitted(gate, held, 4) == 2
    assert Consumer._admitted(gate, held, 1) == 1
    # A topic the barrier does not name did not exist at the switch: all of it waits.
    assert Consumer._admitted(gate, queued(2, ("new", 0)), 1) == 0
    # NSQ records carry no position and are never held; other shards are not held.
    assert Consumer._admitted(gate, queued(2, ("t", None), ("t", None)), 2) == 2
    assert Consumer._admitted(gate, queued(0, ("t", 50)), 1) == 1
