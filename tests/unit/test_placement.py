"""Properties of placement under labels, zones and weights (coordinator/placement.py)."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.assignment import Member, assign, minimal_moves, moves
from coordinator.placement import Placement, groups_of, load_of, matches, place

WORKER_IDS = [f"w{i:02d}" for i in range(10)]
Scenario = tuple[
    list[str | None], dict[str, Member], int, dict[int, int], dict[int, dict[str, str]]
]


@st.composite
def scenarios(draw: st.DrawFn, weighted: bool = True, constrained: bool = True) -> Scenario:
    ids = draw(st.lists(st.sampled_from(WORKER_IDS), min_size=1, max_size=7, unique=True))
    members: dict[str, Member] = {}
    for w in ids:
        labels = {}
        zone = draw(st.sampled_from([None, "a", "b", "c"]))
        if zone is not None:
            labels["zone"] = zone
        if constrained and draw(st.booleans()):
            labels["disk"] = "ssd"
        members[w] = Member(
            capacity=draw(st.integers(min_value=1, max_value=3)),
            draining=draw(st.booleans()) and draw(st.booleans()),
            labels=tuple(sorted(labels.items())),
        )
    num_shards = draw(st.integers(min_value=0, max_value=40))
    previous = draw(st.lists(st.sampled_from([None, "gone", *WORKER_IDS]), max_size=num_shards + 4))
    weights: dict[int, int] = {}
    affinity: dict[int, dict[str, str]] = {}
    for s in range(num_shards):
        if weighted and draw(st.booleans()):
            weights[s] = draw(st.integers(min_value=1, max_value=6))
        if constrained and draw(st.integers(min_value=0, max_value=3)) == 0:
            affinity[s] = draw(st.sampled_from([{"disk": "ssd"}, {"zone": "a"}, {"rack": "r1"}]))
    return previous, members, num_shards, weights, affinity


def eligible_for(
    shard: int, members: Mapping[str, Member], affinity: Mapping[int, Mapping[str, str]]
) -> list[str]:
    wanted = frozenset(affinity.get(shard, {}).items())
    return sorted(w for w, m in members.items() if m.eligible and matches(m, wanted))


def run(scenario: Scenario, max_moves: int | None = None) -> Placement:
    previous, members, n, weights, affinity = scenario
    return place(previous, members, n, weights, affinity, max_moves=max_moves)


@settings(max_examples=300)
@given(scenarios())
def test_deterministic_whatever_the_member_order(scenario: Scenario) -> None:
    previous, members, n, weights, affinity = scenario
    shuffled = list(members.items())
    random.Random(n).shuffle(shuffled)
    assert run(scenario) == place(previous, dict(shuffled), n, weights, affinity)


@settings(max_examples=300)
@given(scenarios())
def test_every_shard_owned_by_an_eligible_worker_or_reported(scenario: Scenario) -> None:
    _, members, n, _, affinity = scenario
    result = run(scenario)
    assert len(result.owners) == n
    for shard, owner in enumerate(result.owners):
        candidates = eligible_for(shard, members, affinity)
        if candidates:
            assert owner in candidates, f"shard {shard}: {owner} not in {candidates}"
            assert shard not in result.unplaceable
        else:
            assert owner is None and shard in result.unplaceable


@settings(max_examples=300)
@given(scenarios())
def test_weight_balance_within_one_max_weight_per_group(scenario: Scenario) -> None:
    _, members, n, weights, affinity = scenario
    result = run(scenario)
    for group, shards in groups_of(n, affinity).items():
        eligible = {w: m for w, m in members.items() if m.eligible and matches(m, group)}
        if not eligible:
            continue
        total = sum(weights.get(s, 1) for s in shards)
        w_max = max(weights.get(s, 1) for s in shards)
        capacity = sum(m.capacity for m in eligible.values())
        loads = load_of(result.owners, weights, shards)
        for w, m in eligible.items():
            ideal = Fraction(total * m.capacity, capacity)
            assert ideal - w_max <= loads.get(w, 0) <= ideal + w_max, (w, loads, ideal)


@settings(max_examples=300)
@given(scenarios())
def test_an_unchanged_input_moves_nothing(scenario: Scenario) -> None:
    _, members, n, weights, affinity = scenario
    first = run(scenario)
    assert place(first.owners, members, n, weights, affinity) == first


def forced_moves(
    previous: list[str | None],
    members: Mapping[str, Member],
    n: int,
    affinity: Mapping[int, Mapping[str, str]],
) -> int:
    """The lower bound under constraints: every placeable shard whose previous owner may
    not own it (gone, draining, or without the shard's labels) must move."""
    count = 0
    for shard in range(n):
        candidates = eligible_for(shard, members, affinity)
        old = previous[shard] if shard < len(previous) else None
        if candidates and old not in candidates:
            count += 1
    return count


@settings(max_examples=300)
@given(scenarios(), st.data())
def test_removing_a_worker_moves_only_its_shards(scenario: Scenario, data: st.DataObject) -> None:
    _, members, n, weights, affinity = scenario
    stable = run(scenario).owners
    leaving = data.draw(st.sampled_from(sorted(members)))
    rest = {w: m for w, m in members.items() if w != leaving}
    after = place(stable, rest, n, weights, affinity).owners
    changed = {s for s in range(n) if stable[s] != after[s] and after[s] is not None}
    assert changed == {s for s in range(n) if stable[s] == leaving and after[s] is not None}
    # ... which is the lower bound: each of those had to move.
    assert len(changed) == forced_moves(stable, rest, n, affinity) == moves(stable, after)


@settings(max_examples=300)
@given(scenarios(), st.sampled_from(["x1", "x2"]), st.sampled_from([None, "a", "b"]))
def test_adding_a_worker_moves_at_least_the_lower_bound_and_only_its_groups(
    scenario: Scenario, new_id: str, zone: str | None
) -> None:
    _, members, n, weights, affinity = scenario
    stable = run(scenario).owners
    labels = (("zone", zone),) if zone else ()
    grown = {**members, new_id: Member(capacity=1, labels=labels)}
    after = place(stable, grown, n, weights, affinity).owners
    moved = moves(stable, after)
    # Lower bound: the newcomer must reach its ideal minus one max weight in each group,
    # and each shard brings at most the group's max weight.
    bound = 0
    for group, shards in groups_of(n, affinity).items():
        eligible = {w: m for w, m in grown.items() if m.eligible and matches(m, group)}
        if new_id not in eligible:
            continue
        total = sum(weights.get(s, 1) for s in shards)
        w_max = max(weights.get(s, 1) for s in shards)
        ideal = Fraction(total, sum(m.capacity for m in eligible.values()))
        bound += max(0, math.ceil((ideal - w_max) / w_max))
    assert moved >= bound
    # Groups the newcomer may not own are untouched.
    for s in range(n):
        if new_id not in eligible_for(s, grown, affinity):
            assert after[s] == stable[s], f"shard {s} moved, but {new_id} cannot own it"


@settings(max_examples=300)
@given(scenarios(weighted=False, constrained=False))
def test_without_weights_labels_or_zones_it_is_assign(scenario: Scenario) -> None:
    previous, members, n, _, _ = scenario
    plain = {w: Member(m.capacity, m.draining) for w, m in members.items()}
    result = place(previous, plain, n)
    assert result.owners == assign(previous, plain, n)
    assert moves(previous, result.owners) == minimal_moves(previous, plain, n)


@settings(max_examples=200)
@given(
    st.lists(st.sampled_from(["a", "b", "c"]), min_size=2, max_size=9),
    st.integers(min_value=1, max_value=60),
)
def test_a_group_is_spread_across_zones(zones: list[str], n: int) -> None:
    """Equal workers, unit weights, a fresh placement: each zone holds the group's weight
    in proportion to its workers, within one shard."""
    members = {f"w{i}": Member(labels=(("zone", z),)) for i, z in enumerate(zones)}
    owners = place([], members, n).owners
    per_zone: dict[str, int] = {}
    for owner in owners:
        assert owner is not None
        z = dict(members[owner].labels)["zone"]
        per_zone[z] = per_zone.get(z, 0) + 1
    for z in set(zones):
        ideal = Fraction(n * zones.count(z), len(zones))
        assert ideal - 1 <= per_zone.get(z, 0) <= ideal + 1, (per_zone, z, ideal)


@settings(max_examples=200)
@given(scenarios())
def test_a_churn_budget_limits_moves_from_live_owners(scenario: Scenario) -> None:
    previous, members, n, _, _ = scenario
    result = run(scenario, max_moves=2)
    from_live = sum(
        1
        for s in range(n)
        if s < len(previous)
        and previous[s] in members
        and result.owners[s] is not None
        and result.owners[s] != previous[s]
    )
    assert from_live <= 2


def test_a_kept_load_that_falls_short_when_a_worker_leaves_is_filled_from_its_shards() -> None:
    """Found by the property above: w03 kept no shard (within its bounds with w00
    present); once w00 leaves, its ideal grows past its lower bound, and w00's shard
    must go to it rather than to the zone that is furthest below its own share, or a
    shard of w01 would have to move too."""
    small, big = Member(1), Member(3, labels=(("zone", "a"),))
    members = {"w00": small, "w01": small, "w02": small, "w03": small, "w04": big, "w05": big}
    affinity = {s: {"disk": "ssd"} for s in (2, 3, 4)}
    stable = place(["w01", "w01"], members, 13, {}, affinity).owners
    assert stable.count("w00") == 1 and "w03" not in stable
    rest = {w: m for w, m in members.items() if w != "w00"}
    after = place(stable, rest, 13, {}, affinity).owners
    assert [s for s in range(13) if stable[s] != after[s]] == [stable.index("w00")]
