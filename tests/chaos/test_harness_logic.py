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
