"""The chaos harness' pure parts: the seeded schedule, the owner-overlap replay,
and the verdict over collected changes. No services."""

from __future__ import annotations

import itertools
import json

from hypothesis import given
from hypothesis import strategies as st

from tests.chaos.owners_log import RESET_SHARD, OwnerRecord, max_overlap, owned_shards
from tests.chaos.schedule import ALL_KINDS, make_schedule
from tests.chaos.verify import DeadLetters, Published, verdict


@given(st.integers(0, 2**32), st.floats(10, 600))
def test_same_seed_same_schedule_and_every_kind_each_round(seed: int, duration: float) -> None:
    first = make_schedule(seed, duration)
    assert first == make_schedule(seed, duration)
    assert all(a.at_s < b.at_s for a, b in itertools.pairwise(first))
    rounds = make_schedule(seed, 10_000, rounds=2)
    assert len(rounds) == 2 * len(ALL_KINDS)
    assert {f.kind for f in rounds[: len(ALL_KINDS)]} == set(ALL_KINDS)


def test_different_seeds_give_different_schedules() -> None:
    assert make_schedule(1, 120) != make_schedule(2, 120)


def put(rev: int, shard: int, token: int, worker: str = "w") -> OwnerRecord:
    return OwnerRecord(rev, "put", shard, worker, token)


def delete(rev: int, shard: int) -> OwnerRecord:
    return OwnerRecord(rev, "delete", shard, "", 0)


def test_handoff_through_a_delete_is_no_overlap() -> None:
    log = [put(5, 0, 5, "w1"), delete(9, 0), put(10, 0, 10, "w2"), put(11, 1, 11, "w1")]
    assert max_overlap(log) == 0
    assert owned_shards(log) == {0: "w2", 1: "w1"}


def test_a_second_token_without_a_delete_is_an_overlap() -> None:
    assert max_overlap([put(5, 0, 5, "w1"), put(10, 0, 10, "w2")]) == 1
    # The same owner rewriting its own key is not a second owner.
    assert max_overlap([put(5, 0, 5), put(6, 0, 5)]) == 0


def test_a_reset_listing_replaces_what_was_known() -> None:
    log = [
        put(5, 0, 5, "w1"),
        OwnerRecord(20, "reset", RESET_SHARD, "", 0),
        put(20, 0, 15, "w2"),  # w1's key vanished during the compacted gap
    ]
    assert max_overlap(log) == 0
    assert owned_shards(log) == {0: "w2"}


def message(table: str, ident: int, version: int, kind: str, event_id: str) -> bytes:
    return json.dumps(
        {
            "table": table,
            "type": kind,
            "event_id": event_id,
            "data": {"id": ident, "version": version},
        }
    ).encode()


def test_a_redelivered_change_applied_twice_is_told_apart() -> None:
    published = Published.of([message("t", 1, 1, "insert", "e1")] * 2)
    v = verdict(
        [("t", 1, 1, "w")], [("t", 1, 1, "w")] * 2, published, DeadLetters(), lambda _k: False
    )
    assert v.duplicated == v.reapplied_redeliveries == [("t", 1, 1, "w")]
    assert v.sink_duplicated == []


def test_verdict_counts_lost_duplicated_and_dlq() -> None:
    committed = [("t", 1, 1, "w"), ("t", 2, 1, "w"), ("t", 97, 1, "w"), ("t", 1, 2, "d")]
    applied = [("t", 1, 1, "w"), ("t", 1, 1, "w"), ("t", 1, 2, "d")]
    published = Published.of(
        [
            message("t", 1, 1, "insert", "e1"),
            message("t", 2, 1, "insert", "e2"),
            message("t", 97, 1, "insert", "e3"),
            message("t", 1, 2, "delete", "e4"),
        ]
    )
    letter = json.dumps({"event_id": "e3", "event": message("t", 97, 1, "insert", "e3").decode()})
    dead = DeadLetters.of([letter.encode(), letter.encode()])
    v = verdict(committed, applied, published, dead, lambda k: k[1] % 97 == 0)
    assert v.lost == [("t", 2, 1, "w")]
    assert v.duplicated == [("t", 1, 1, "w")]
    assert v.sink_duplicated == [("t", 1, 1, "w")]  # on the topic once, applied twice
    assert v.poisoned == 1 and v.poison_applied == []
    assert v.dlq_exact and v.dlq_repeated == 1
    assert v.unpublished == [] and v.split_event_ids == []


def test_kinds_are_chosen_by_short_name() -> None:
    from tests.chaos.schedule import ALL_LOAD_KINDS, FaultKind, LoadKind, parse_kinds

    assert parse_kinds("all") == (ALL_KINDS, ALL_LOAD_KINDS)
    assert parse_kinds("pk-update, bootstrap") == ((FaultKind.BOOTSTRAP,), (LoadKind.PK_UPDATES,))
    try:
        parse_kinds("bootstrap,nope")
    except ValueError as exc:
        assert "nope" in str(exc)
    else:
        raise AssertionError("an unknown kind was accepted")
    # A run of load kinds only has no faults, and the same seed keeps its order.
    assert make_schedule(3, 100, kinds=()) == []
    chosen = (FaultKind.BOOTSTRAP, FaultKind.SINK_OUTAGE)
    assert make_schedule(3, 100, kinds=chosen) == make_schedule(3, 100, kinds=chosen)
    assert {f.kind for f in make_schedule(3, 10_000, kinds=chosen, rounds=1)} == set(chosen)


def test_a_primary_key_move_stands_for_a_delete_and_a_write() -> None:
    moved = json.dumps(
        {
            "table": "t",
            "type": "update",
            "event_id": "e1",
            "data": {"id": 1000, "version": 3},
            "old": {"id": 1, "version": 2},
        }
    ).encode()
    published = Published.of([moved])
    assert set(published.event_ids) == {("t", 1000, 3, "w"), ("t", 1, 2, "d")}
    committed = [("t", 1, 2, "d"), ("t", 1000, 3, "w")]
    ok = verdict(committed, committed, published, DeadLetters(), lambda _k: False)
    assert ok.lost == ok.unpublished == ok.duplicated == []
    # A sink that kept the old row never applied the delete: that is a loss.
    kept = verdict(committed, committed[1:], published, DeadLetters(), lambda _k: False)
    assert kept.lost == [("t", 1, 2, "d")]


def bootstrap_record(ident: int, version: int, event_id: str) -> bytes:
    return json.dumps(
        {
            "table": "t",
            "type": "bootstrap-insert",
            "event_id": event_id,
            "data": {"id": ident, "version": version},
        }
    ).encode()


def test_each_bootstrap_record_may_apply_once_more_and_poison_copies_are_dead_letters() -> None:
    published = Published.of(
        [
            message("t", 1, 1, "insert", "e1"),
            message("t", 97, 1, "insert", "e2"),
            bootstrap_record(1, 1, "bootstrap:b#1"),
            bootstrap_record(97, 1, "bootstrap:b#2"),
        ]
    )
    committed = [("t", 1, 1, "w"), ("t", 97, 1, "w")]
    letters = [
        json.dumps({"event_id": eid, "event": None}).encode() for eid in ("e2", "bootstrap:b#2")
    ]
    v = verdict(
        committed,
        [("t", 1, 1, "w")] * 2,
        published,
        DeadLetters.of(letters),
        lambda k: k[1] % 97 == 0,
    )
    assert v.duplicated == [] and v.bootstrap_applied == 1 and v.dlq_exact
    # Without the poisoned row's bootstrap copy in the DLQ, the DLQ is not exact.
    short = verdict(
        committed, [("t", 1, 1, "w")], published, DeadLetters.of(letters[:1]), lambda k: k[1] == 97
    )
    assert short.dlq_missing == ["bootstrap:b#2"]
    # A third application of (t, 1, 1) is one more than the records allow.
    three = verdict(
        committed, [("t", 1, 1, "w")] * 3, published, DeadLetters.of(letters), lambda k: k[1] == 97
    )
    assert three.duplicated == three.sink_duplicated == [("t", 1, 1, "w")]


def test_skipped_and_oversized_changes_are_accounted_for_exactly() -> None:
    from tests.chaos.verify import ReaderDeadLetters

    committed = [("s", 1, 1, "w"), ("s", 1, 2, "w"), ("wide", 5, 1, "w"), ("wide", 6, 1, "w")]
    published = Published.of(
        [message("wide", 6, 1, "insert", "e6"), bootstrap_record(1, 2, "bootstrap:x#1")]
    )
    letter = {"table": "wide", "key": json.dumps({"database": "d", "table": "wide", "pk.id": 5})}
    reader_dead = ReaderDeadLetters.of([json.dumps(letter).encode()])
    applied = [("s", 1, 2, "w"), ("wide", 6, 1, "w")]
    v = verdict(
        committed,
        applied,
        published,
        DeadLetters(),
        lambda _k: False,
        skipped=committed[:2],
        is_oversized=lambda k: k[0] == "wide" and k[1] % 5 == 0,
        reader_dead=reader_dead,
    )
    assert v.lost == v.unpublished == v.duplicated == []
    assert v.reader_dlq_exact and v.oversized == 1 and v.skipped_by_operator == 2
    # Not skipped: the same changes are lost and never published.
    unfixed = verdict(committed, applied, published, DeadLetters(), lambda _k: False)
    assert ("s", 1, 1, "w") in unfixed.lost and ("s", 1, 1, "w") in unfixed.unpublished
    # A normal row in the reader's DLQ (a batch rejected whole) is unexpected there.
    letter6 = {**letter, "key": json.dumps({"pk.id": 6})}
    both = ReaderDeadLetters.of([json.dumps(letter).encode(), json.dumps(letter6).encode()])
    wrong = verdict(
        committed,
        applied,
        published,
        DeadLetters(),
        lambda _k: False,
        is_oversized=lambda k: k[0] == "wide" and k[1] % 5 == 0,
        reader_dead=both,
    )
    assert wrong.oversized_unexpected == [("wide", 6)]


def test_a_row_message_without_its_columns_is_reported_not_crashed_on() -> None:
    partial = json.dumps({"table": "t", "type": "update", "data": {"id": 5}}).encode()
    assert len(Published.of([partial]).partial_rows) == 1
