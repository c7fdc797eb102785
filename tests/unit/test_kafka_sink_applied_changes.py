"""The Kafka sink's record of forwarded changes: a replayed tail is skipped, a source
that went backwards is forwarded (never dropped), the state read back from its
records decides as the state that wrote them, and pruning keeps replay_window."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.events import Event, decode_message
from workers.sinks.applied_changes import AppliedChanges, StateRecordError
from workers.sinks.sql_common import txn_text


def change(seq: int, row: int = 0, xid: int | None = None, kind: str = "insert") -> Event:
    """A row change of transaction GTID 0-1-`seq` (xid = seq unless given)."""
    doc: dict[str, Any] = {
        "database": "shop",
        "table": "items",
        "type": kind,
        "ts": 1700000000,
        "xid": seq if xid is None else xid,
        "data": {"id": seq, "row": row},
        "event_id": f"0-1-{seq}#{row}",
        "source": "main/1",
    }
    raw = json.dumps(doc).encode()
    return Event(0, "orders", None, None, raw, decode_message(raw, 0, "orders", None), 7)


def ids(events: list[Event]) -> list[str | None]:
    return [e.event_id for e in events]


def committed(state: AppliedChanges, events: list[Event]) -> list[Event]:
    """Plan a batch and apply its records, as a committed transaction does."""
    plan = state.plan(events)
    for key, value in plan.records:
        state.apply(key, value)
    return plan.forward


def test_a_replayed_tail_is_skipped_and_new_changes_go_on() -> None:
    state = AppliedChanges(0, replay_window=100, prune_every=10)
    assert ids(committed(state, [change(1), change(2, 0), change(2, 1)])) == [
        "0-1-1#0",
        "0-1-2#0",
        "0-1-2#1",
    ]
    # The new reader publishes transaction 2 again, then transaction 3.
    plan = state.plan([change(2, 0), change(2, 1), change(3)])
    assert ids(plan.forward) == ["0-1-3#0"]
    assert plan.skipped == 2


def test_the_rest_of_a_transaction_an_earlier_batch_began_is_forwarded() -> None:
    state = AppliedChanges(0, replay_window=100, prune_every=10)
    committed(state, [change(5, 0), change(5, 1)])
    assert ids(committed(state, [change(5, 2), change(5, 3)])) == ["0-1-5#2", "0-1-5#3"]


def test_a_source_that_went_backwards_is_forwarded_and_its_replay_then_skipped() -> None:
    state = AppliedChanges(0, replay_window=100, prune_every=10)
    committed(state, [change(n) for n in range(1, 11)])
    # RESET MASTER: the sequence starts again, other transactions (other xids).
    reset = [change(1, xid=501), change(2, xid=502)]
    assert ids(committed(state, reset)) == ["0-1-1#0", "0-1-2#0"]
    # The new source's tail published again after a failover: skipped.
    plan = state.plan([change(2, xid=502), change(3, xid=503)])
    assert ids(plan.forward) == ["0-1-3#0"]


def test_ddl_and_messages_without_an_event_id_are_always_forwarded() -> None:
    state = AppliedChanges(0, replay_window=100, prune_every=10)
    committed(state, [change(1)])
    raw = json.dumps({"type": "table-create", "database": "shop", "event_id": "0-1-1#0"}).encode()
    ddl = Event(0, "orders", None, None, raw, decode_message(raw, 0, "orders", None), 7)
    bare_raw = json.dumps({"type": "insert", "table": "t", "data": {"id": 1}}).encode()
    bare = Event(0, "orders", None, None, bare_raw, decode_message(bare_raw, 0, "orders", None), 7)
    assert state.plan([ddl, bare, ddl]).forward == [ddl, bare, ddl]


def test_pruning_keeps_the_newest_replay_window_transactions() -> None:
    state = AppliedChanges(0, replay_window=5, prune_every=3)
    for seq in range(1, 21):
        committed(state, [change(seq)])
        assert len(state.txns[("orders", "main/1|gtid:0")]) < 5 + 3
    held = state.txns[("orders", "main/1|gtid:0")]
    # The oldest went (tombstones), the newest five are all there.
    assert {txn_text((seq, 0)) for seq in range(16, 21)} <= held.keys()
    assert txn_text((1, 0)) not in held
    # Within the window a replay is skipped; beyond it, it is forwarded again.
    assert state.plan([change(20)]).forward == []
    assert ids(state.plan([change(1)]).forward) == ["0-1-1#0"]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.integers(1, 30), st.integers(0, 2), st.booleans()), max_size=8),
        max_size=12,
    )
)
def test_the_state_read_back_from_its_records_decides_as_the_one_that_wrote_them(
    batches: list[list[tuple[int, int, bool]]],
) -> None:
    """A new owner rebuilds the state from the records (compaction keeps the last
    value of each key, which `apply` in order gives as well) and then decides every
    batch as the old owner would have."""
    written = AppliedChanges(0, replay_window=8, prune_every=4)
    log: list[tuple[bytes, bytes | None]] = []
    for batch in batches:
        events = [change(seq, row, xid=seq + (1000 if other else 0)) for seq, row, other in batch]
        plan = written.plan(events)
        log.extend(plan.records)
        for key, value in plan.records:
            written.apply(key, value)
    compacted = dict(log)  # the last value of each key, as compaction keeps
    read_back = AppliedChanges(0, replay_window=8, prune_every=4)
    for key, value in compacted.items():
        read_back.apply(key, value)
    assert read_back.newest == written.newest
    assert {k: v for k, v in read_back.txns.items() if v} == {
        k: v for k, v in written.txns.items() if v
    }
    probe = [change(seq, row) for seq in range(1, 32) for row in range(3)]
    assert ids(read_back.plan(probe).forward) == ids(written.plan(probe).forward)


def test_an_unreadable_state_record_is_named() -> None:
    state = AppliedChanges(3, replay_window=5, prune_every=3)
    with pytest.raises(StateRecordError, match=r"shard 3: state record b'\[\"nope\"'"):
        state.apply(b'["nope"', b"x")
