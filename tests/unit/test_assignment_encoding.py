"""The stored form of the assignment: a worker table plus one u16 index per shard."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardctl.core.records import (
    ASSIGNMENT_MAX_BYTES,
    ASSIGNMENT_WORKER_TABLE_BYTES,
    MAX_SHARDS,
    Assignment,
    AssignmentTooLarge,
    RecordError,
    assignment_bytes_bound,
    owner_indices_bytes,
)

worker_ids = st.from_regex(r"[A-Za-z0-9_.:@-]{1,40}", fullmatch=True)


@st.composite
def assignments(draw: st.DrawFn) -> Assignment:
    table = draw(st.lists(worker_ids, min_size=0, max_size=30, unique=True))
    owner = st.sampled_from(table) | st.none() if table else st.none()
    owners = draw(st.lists(owner, max_size=300))
    generation = draw(st.integers(min_value=0, max_value=2**63 - 1))
    return Assignment(generation=generation, num_shards=len(owners), owners=owners)


def table_bytes(assignment: Assignment) -> int:
    table = sorted({o for o in assignment.owners if o is not None})
    return len(json.dumps(table, separators=(",", ":")))


@given(assignments())
def test_round_trip(assignment: Assignment) -> None:
    assert Assignment.decode("/x/assignment", assignment.encode()) == assignment


@given(assignments())
def test_encoded_size_stays_within_the_bound(assignment: Assignment) -> None:
    raw = assignment.encode()
    assert len(raw) <= assignment_bytes_bound(assignment.num_shards, table_bytes(assignment))
    stored = json.loads(raw)
    assert len(stored["owner_indices"]) == owner_indices_bytes(assignment.num_shards)


@given(assignments())
def test_equal_assignments_encode_to_equal_bytes(assignment: Assignment) -> None:
    copy = Assignment(
        generation=assignment.generation,
        num_shards=assignment.num_shards,
        owners=list(assignment.owners),
    )
    assert copy.encode() == assignment.encode()


def test_the_documented_example() -> None:
    example = Assignment(generation=7, num_shards=4, owners=["w1", "w1", None, "w2"])
    assert json.loads(example.encode()) == {
        "generation": 7,
        "num_shards": 4,
        "workers": ["w1", "w2"],
        "owner_indices": "AAAAAP//AAE=",
    }


def full_table(max_bytes: int) -> list[str]:
    """As many distinct 63-character worker ids as a JSON table of `max_bytes` holds."""
    count = (max_bytes - 1) // 66  # '"' + 63 + '"' + ',' each, plus the brackets
    return [f"w{i:07d}-" + "x" * 54 for i in range(count)]


def test_max_shards_with_a_full_worker_table_fits_and_one_more_would_not() -> None:
    table = full_table(ASSIGNMENT_WORKER_TABLE_BYTES)
    used = len(json.dumps(table, separators=(",", ":")))
    assert ASSIGNMENT_WORKER_TABLE_BYTES - 66 < used <= ASSIGNMENT_WORKER_TABLE_BYTES
    owners: list[str | None] = [table[s % len(table)] for s in range(MAX_SHARDS)]
    owners[-1] = None
    biggest = Assignment(generation=2**63 - 1, num_shards=MAX_SHARDS, owners=owners)
    raw = biggest.encode()
    assert len(raw) <= ASSIGNMENT_MAX_BYTES
    assert Assignment.decode("k", raw) == biggest
    assert assignment_bytes_bound(MAX_SHARDS + 1, ASSIGNMENT_WORKER_TABLE_BYTES) > (
        ASSIGNMENT_MAX_BYTES
    )


def test_100k_shards_over_1000_pod_named_workers_take_under_a_third_of_the_limit() -> None:
    workers = [f"shardctl-worker-7d9f8c6b5-{i:05x}" for i in range(1000)]
    owners: list[str | None] = [workers[s % 1000] for s in range(100_000)]
    raw = Assignment(generation=1, num_shards=100_000, owners=owners).encode()
    assert len(raw) < ASSIGNMENT_MAX_BYTES // 3


def test_an_assignment_over_the_limit_is_refused_with_its_sizes() -> None:
    workers = [f"worker-{i:05d}-" + "y" * 200 for i in range(6000)]
    owners: list[str | None] = [workers[s % len(workers)] for s in range(60_000)]
    with pytest.raises(AssignmentTooLarge, match=r"generation 3 \(60000 shards\).*6000 worker ids"):
        Assignment(generation=3, num_shards=60_000, owners=owners).encode()


def test_the_first_layout_still_decodes() -> None:
    raw = b'{"generation": 4, "num_shards": 3, "owners": ["a", null, "b"]}'
    assert Assignment.decode("k", raw).owners == ["a", None, "b"]


def stored(workers: object, indices: bytes | str, num_shards: int) -> bytes:
    encoded = indices if isinstance(indices, str) else base64.b64encode(indices).decode()
    return json.dumps(
        {"generation": 1, "num_shards": num_shards, "workers": workers, "owner_indices": encoded}
    ).encode()


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (stored(["a"], b"\x00\x01", 1), "shard 0 names worker #1; the table has 1"),
        (stored(["a"], b"\x00\x00\x00\x00", 1), "holds 2 shard entries, num_shards is 1"),
        (stored(["a"], b"\x00", 1), "holds 0.5 shard entries"),
        (stored(["a"], "not base64!", 1), "owner_indices: not base64"),
        (stored("a", b"\x00\x00", 1), "workers: must be a list"),
        (stored([1], b"\x00\x00", 1), "workers: must be a list"),
    ],
)
def test_a_damaged_assignment_is_refused_naming_the_key(raw: bytes, problem: str) -> None:
    with pytest.raises(RecordError, match="/c/assignment") as caught:
        Assignment.decode("/c/assignment", raw)
    assert problem in str(caught.value)
