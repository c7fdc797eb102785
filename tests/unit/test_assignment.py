"""Properties of the pure assignment algorithm (coordinator/assignment.py)."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.assignment import Member, assign, minimal_moves, moves, quotas

WORKER_IDS = [f"w{i:02d}" for i in range(12)]


@st.composite
def scenarios(
    draw: st.DrawFn, max_shards: int = 96, max_workers: int = 8
) -> tuple[list[str | None], dict[str, Member], int]:
    """A previous assignment, the current members, and a (maybe changed) shard count."""
    ids = draw(st.lists(st.sampled_from(WORKER_IDS), max_size=max_workers, unique=True))
    members = {
        w: Member(
            capacity=draw(st.integers(min_value=0, max_value=4)),
            draining=draw(st.booleans()) and draw(st.booleans()),
        )
        for w in ids
    }
    previous_shards = draw(st.integers(min_value=0, max_value=max_shards))
    # Previous owners may include workers that are gone now.
    previous = draw(
        st.lists(
            st.one_of(st.none(), st.sampled_from(WORKER_IDS)),
            min_size=previous_shards,
            max_size=previous_shards,
        )
    )
    num_shards = draw(st.one_of(st.just(previous_shards), st.integers(0, max_shards)))
    return previous, members, num_shards


def eligible(members: dict[str, Member]) -> list[str]:
    return [w for w, m in members.items() if m.capacity >= 1 and not m.draining]


@given(scenarios())
def test_balance_bound_weighted_by_capacity(
    case: tuple[list[str | None], dict[str, Member], int],
) -> None:
    previous, members, n = case
    owners = assign(previous, members, n)
    assert len(owners) == n
    counts = Counter(o for o in owners if o is not None)
    active = eligible(members)
    total = sum(members[w].capacity for w in active)
    for w in members:
        if w not in active:
            assert counts[w] == 0, f"ineligible {w} got shards"
            continue
        share_floor, rem = divmod(n * members[w].capacity, total)
        assert share_floor <= counts[w] <= share_floor + (1 if rem else 0), (w, counts)
    if active:
        assert sum(counts.values()) == n


@given(scenarios())
def test_no_shard_unassigned_while_any_worker_is_eligible(
    case: tuple[list[str | None], dict[str, Member], int],
) -> None:
    previous, members, n = case
    owners = assign(previous, members, n)
    if eligible(members):
        assert None not in owners
    else:
        assert owners == [None] * n


@given(scenarios())
def test_moves_equal_the_lower_bound(
    case: tuple[list[str | None], dict[str, Member], int],
) -> None:
    previous, members, n = case
    owners = assign(previous, members, n)
    assert moves(previous[:n], owners) == minimal_moves(previous, members, n)


@given(scenarios(max_shards=40, max_workers=6))
def test_lower_bound_is_the_best_over_every_balanced_assignment(
    case: tuple[list[str | None], dict[str, Member], int],
) -> None:
    """Brute force: no balanced shard-count vector keeps more shards than we do."""
    previous, members, n = case
    active = sorted(eligible(members))
    if not active or n == 0:
        return
    total = sum(members[w].capacity for w in active)
    held = Counter(previous[s] for s in range(min(n, len(previous))) if previous[s] in active)
    best_keep = 0
    bounds = [divmod(n * members[w].capacity, total) for w in active]
    choices = [(f,) if r == 0 else (f, f + 1) for f, r in bounds]
    for counts in itertools.product(*choices):
        if sum(counts) == n:
            keep = sum(min(held[w], c) for w, c in zip(active, counts, strict=True))
            best_keep = max(best_keep, keep)
    owners = assign(previous, members, n)
    assert moves(previous[:n], owners) == n - best_keep


@given(scenarios())
def test_unmoved_shards_are_exactly_the_sticky_ones(
    case: tuple[list[str | None], dict[str, Member], int],
) -> None:
    """A shard whose owner stays eligible moves only if that owner is over quota."""
    previous, members, n = case
    owners = assign(previous, members, n)
    after = Counter(o for o in owners if o is not None)
    for s in range(min(n, len(previous))):
        old = previous[s]
        if old is not None and old in eligible(members) and owners[s] != old:
            kept_by_old = sum(
                1 for t in range(min(n, len(previous))) if previous[t] == old and owners[t] == old
            )
            assert kept_by_old == after[old], "an owner lost a shard while under quota"


@given(scenarios())
def test_deterministic_and_independent_of_member_order(
    case: tuple[list[str | None], dict[str, Member], int],
) -> None:
    previous, members, n = case
    first = assign(previous, members, n)
    assert assign(list(previous), dict(members), n) == first
    shuffled = list(members.items())
    random.Random(7).shuffle(shuffled)
    assert assign(previous, dict(shuffled), n) == first


@given(scenarios(), st.integers(min_value=0, max_value=10))
def test_churn_budget_limits_moves_from_live_owners(
    case: tuple[list[str | None], dict[str, Member], int], budget: int
) -> None:
    previous, members, n = case
    owners = assign(previous, members, n, max_moves=budget)
    # A move hands a shard to another worker (with no eligible worker left, shards
    # simply become unowned: there is nobody to move them to).
    live_moves = sum(
        1
        for s in range(min(n, len(previous)))
        if previous[s] in members and owners[s] is not None and owners[s] != previous[s]
    )
    assert live_moves <= budget
    if eligible(members):
        assert None not in owners
    # Shards of draining workers may wait for budget; no other ineligible owner keeps any.
    for o in owners:
        assert o is None or o in members


@given(scenarios(), st.integers(min_value=1, max_value=5))
def test_churn_budget_converges_to_the_unbudgeted_balance(
    case: tuple[list[str | None], dict[str, Member], int], budget: int
) -> None:
    previous, members, n = case
    owners: list[str | None] = list(previous)
    for _generation in range(n + 2):
        nxt = assign(owners, members, n, max_moves=budget)
        if nxt == owners[:n] and len(owners) == n:
            break
        owners = nxt
    owners = assign(owners, members, n, max_moves=budget)
    # Converged: another unbudgeted pass moves nothing, so it is balanced.
    assert assign(owners, members, n) == owners


def test_scale_one_to_five_and_back_moves_the_minimum() -> None:
    owners: list[str | None] = [None] * 64
    history = []
    for count in [1, 2, 3, 4, 5, 4, 3, 2, 1]:
        members = {f"w{i}": Member() for i in range(count)}
        nxt = assign(owners, members, 64)
        history.append((count, moves(owners, nxt), minimal_moves(owners, members, 64)))
        owners = nxt
    assert [m for _, m, _ in history] == [64, 32, 21, 16, 12, 12, 16, 21, 32]
    assert all(m == lb for _, m, lb in history)


def test_quotas_use_largest_remainder_then_worker_id() -> None:
    members = {"b": Member(capacity=1), "a": Member(capacity=1), "c": Member(capacity=2)}
    # 10 shards over capacity 4: shares 2.5, 2.5, 5 -> the extra goes to "a" by id.
    assert quotas(10, members) == {"a": 3, "b": 2, "c": 5}
    # ...unless "b" currently keeps more than its floor: then "b" gets it.
    assert quotas(10, members, kept={"b": 3}) == {"a": 2, "b": 3, "c": 5}


def test_draining_worker_gives_everything_away() -> None:
    owners: list[str | None] = ["a", "b", "a", "b"]
    members = {"a": Member(), "b": Member(draining=True)}
    assert assign(owners, members, 4) == ["a", "a", "a", "a"]


def test_invalid_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="num_shards"):
        assign([], {}, -1)
    with pytest.raises(ValueError, match="max_moves"):
        assign([], {"a": Member()}, 1, max_moves=-1)


@settings(max_examples=20)
@given(st.integers(min_value=1, max_value=3000), st.integers(min_value=1, max_value=60))
def test_large_inputs_balance(n: int, w: int) -> None:
    members = {f"w{i:04d}": Member(capacity=1 + i % 3) for i in range(w)}
    owners = assign([], members, n)
    assert None not in owners
    again = assign(owners, members, n)
    assert again == owners
