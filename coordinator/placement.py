"""Placement: the assignment under label constraints, zones and per-shard weights.

A pure function from (previous owners, members with labels, shard count, weights,
affinity) to new owners. Without weights, affinity or zones it is exactly
`coordinator.assignment.assign` (same result, same move guarantees).

**Eligibility.** A shard's affinity is a set of labels (`{"disk": "ssd"}`); a worker
may own the shard only if it is eligible (see `Member.eligible`) and carries every
one of those labels. A shard with no eligible worker stays unowned and is returned
in `Placement.unplaceable`.

**Groups.** Shards with the same affinity form a group; they share their eligible
workers. Each group is placed on its own, over its eligible workers:
- with unit weights and no zones, by `assign` (balanced to floor/ceil of the
  capacity share, exactly minimal in moves);
- otherwise by the weighted balancer below.

**Weighted balancer (one group).** W is the group's total weight, w_max its largest
shard weight, C the capacity of its workers. Worker i's ideal load is
T_i = W * c_i / C, and every worker ends with a load in [T_i - w_max, T_i + w_max].
1. Keep: a worker keeps its shards of the group, lowest shard first, while its load
   stays <= T_i + w_max. Only shards of departed, ineligible or overloaded owners
   are freed (with a churn budget, at most `max_moves` of those taken from live
   owners; the rest stay).
2. Fill: freed and new shards, heaviest first (then by shard), go to a worker whose
   load is below T_i - w_max if there is one, else to one below T_i (one always
   exists while shards are left: loads sum to W). Among those, the zone that would
   end least above its own ideal (the group's weight times the zone's share of the
   capacity) comes first (spread across zones), then the worker furthest below its
   ideal per unit of capacity, then the worker id. So no worker passes T_i + w_max.
3. Repair: while a worker is below T_i - w_max, it takes the heaviest shard of the
   worker furthest above its ideal (a shard placed in step 2 before a kept one).
   The donor has load > T_d, so it stays >= T_d - w_max, and the taker stays <= T_i.
   Each step raises the taker's load; it ends.
An unchanged input therefore moves nothing (every load is within its bounds), and
removing a worker moves only its shards: the others' ideals only grow, and a kept
load that falls below its new lower bound is filled from the freed shards first.

Balance holds per group: a worker eligible for several groups gets its share of
each, not a combined optimum.

Cost: O(N * W) per weighted group; unweighted groups cost what `assign` costs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from coordinator.assignment import Member, assign

Affinity = frozenset[tuple[str, str]]


@dataclass(frozen=True)
class Placement:
    owners: list[str | None]
    # Shards no eligible worker may own (their affinity matches no eligible worker).
    unplaceable: list[int] = field(default_factory=list)


def matches(member: Member, affinity: Affinity) -> bool:
    """Whether `member` may own a shard with `affinity` (it must also be eligible)."""
    labels = dict(member.labels)
    return all(labels.get(key) == value for key, value in affinity)


def groups_of(
    num_shards: int, affinity: Mapping[int, Mapping[str, str]]
) -> dict[Affinity, list[int]]:
    """Shards by affinity, each list in shard order."""
    if not affinity:
        return {frozenset(): list(range(num_shards))} if num_shards else {}
    groups: dict[Affinity, list[int]] = {}
    for shard in range(num_shards):
        key: Affinity = frozenset(affinity.get(shard, {}).items())
        groups.setdefault(key, []).append(shard)
    return groups


def unplaceable_shards(
    members: Mapping[str, Member], num_shards: int, affinity: Mapping[int, Mapping[str, str]]
) -> list[int]:
    """Shards whose affinity matches no eligible member (`status` reports them)."""
    return place([], members, num_shards, affinity=affinity).unplaceable


def place(
    previous: Sequence[str | None],
    members: Mapping[str, Member],
    num_shards: int,
    weights: Mapping[int, int] | None = None,
    affinity: Mapping[int, Mapping[str, str]] | None = None,
    max_moves: int | None = None,
) -> Placement:
    """New owners for shards 0..num_shards-1 (see the module docstring)."""
    if num_shards < 0:
        raise ValueError(f"num_shards must be >= 0, got {num_shards}")
    if max_moves is not None and max_moves < 0:
        raise ValueError(f"max_moves must be >= 0, got {max_moves}")
    weights = weights or {}
    for shard, weight in weights.items():
        if weight < 1:
            raise ValueError(f"shard {shard}: weight must be >= 1, got {weight}")
    plain = not affinity and all(w == 1 for w in weights.values())
    if plain and all(m.zone is None for m in members.values() if m.eligible):
        if not any(m.eligible for m in members.values()):
            # No worker may own a shard (none, or all draining): report them all.
            return Placement([None] * num_shards, list(range(num_shards)))
        return Placement(assign(previous, members, num_shards, max_moves=max_moves))
    owners: list[str | None] = [None] * num_shards
    unplaceable: list[int] = []
    budget = max_moves
    for group_affinity, shards in sorted(groups_of(num_shards, affinity or {}).items(), key=_first):
        eligible = {w: m for w, m in members.items() if m.eligible and matches(m, group_affinity)}
        if not eligible:
            unplaceable.extend(shards)
            continue
        # Owners that are members but may not own this group (draining, or labels no
        # longer match) are live: the churn budget applies to them.
        live = {w: m for w, m in members.items() if w not in eligible}
        before = [previous[s] if s < len(previous) else None for s in shards]
        group_weights = [weights.get(s, 1) for s in shards]
        zoned = any(m.zone is not None for m in eligible.values())
        if not zoned and all(w == 1 for w in group_weights):
            # Draining members stay in the input so that `assign` charges their
            # shards to the churn budget; ineligible ones are passed as draining.
            inputs = {**{w: Member(0, True) for w in live}, **eligible}
            placed = assign(before, inputs, len(shards), max_moves=budget)
        else:
            placed = _balance(before, eligible, set(live), group_weights, budget)
        if budget is not None:
            budget -= sum(
                1
                for old, new in zip(before, placed, strict=True)
                if old in members and new is not None and old != new
            )
            budget = max(budget, 0)
        for shard, owner in zip(shards, placed, strict=True):
            owners[shard] = owner
    return Placement(owners, sorted(unplaceable))


def _first(item: tuple[Affinity, list[int]]) -> int:
    return item[1][0]


def _balance(
    before: list[str | None],
    eligible: Mapping[str, Member],
    live: set[str],
    weights: list[int],
    max_moves: int | None,
) -> list[str | None]:
    """The weighted balancer for one group (indices are positions in the group)."""
    ids = sorted(eligible)
    total_capacity = sum(eligible[w].capacity for w in ids)
    total = sum(weights)
    w_max = max(weights)
    ideal = {w: Fraction(total * eligible[w].capacity, total_capacity) for w in ids}
    zone = {w: eligible[w].zone or "" for w in ids}
    zone_capacity: dict[str, int] = {}
    for w in ids:
        zone_capacity[zone[w]] = zone_capacity.get(zone[w], 0) + eligible[w].capacity
    load = dict.fromkeys(ids, 0)
    owners: list[str | None] = [None] * len(before)

    # 1. Keep.
    held: dict[str, list[int]] = {}
    for i, owner in enumerate(before):
        if owner is not None:
            held.setdefault(owner, []).append(i)
    surplus: list[int] = []  # from live owners: subject to the churn budget
    for owner in sorted(held):
        for i in held[owner]:
            if owner in load and load[owner] + weights[i] <= ideal[owner] + w_max:
                owners[i] = owner
                load[owner] += weights[i]
            elif owner in load or owner in live:
                surplus.append(i)
    if max_moves is not None and len(surplus) > max_moves:
        # Over budget: the rest stays with its current owner this generation.
        for i in sorted(surplus)[max_moves:]:
            owner = before[i]
            assert owner is not None
            owners[i] = owner
            if owner in load:
                load[owner] += weights[i]

    # 2. Fill.
    zone_load = dict.fromkeys(zone_capacity, 0)
    for i, owner in enumerate(owners):
        if owner in load:
            zone_load[zone[owner]] += weights[i]
    free = sorted((i for i, o in enumerate(owners) if o is None), key=lambda i: (-weights[i], i))
    # The same comparisons as with the ideals above, in integers scaled by C (fast).
    scale = total_capacity
    scaled_ideal = {w: total * eligible[w].capacity for w in ids}
    zone_scaled_ideal = {z: total * c for z, c in zone_capacity.items()}
    equal_capacities = len({eligible[w].capacity for w in ids}) == 1

    def below_ideal(w: str) -> Fraction | int:
        # Per unit of capacity; with equal capacities the division changes no order.
        gap = load[w] * scale - scaled_ideal[w]
        return gap if equal_capacities else Fraction(gap, eligible[w].capacity)

    for i in free:
        # A worker below its lower bound first: the ideals of the others grow when a
        # worker leaves, and a kept load may then fall short. Any shard fits there
        # (it ends <= its ideal), and taking a kept shard from another owner later
        # (step 3) would be a move the leaving worker did not cause.
        short = [w for w in ids if (load[w] + w_max) * scale < scaled_ideal[w]]
        under = short or [w for w in ids if load[w] * scale < scaled_ideal[w]] or ids
        chosen = min(
            under,
            key=lambda w: (
                (zone_load[zone[w]] + weights[i]) * scale - zone_scaled_ideal[zone[w]],
                below_ideal(w),
                w,
            ),
        )
        owners[i] = chosen
        load[chosen] += weights[i]
        zone_load[zone[chosen]] += weights[i]

    # 3. Repair.
    while True:
        short = [w for w in ids if load[w] < ideal[w] - w_max]
        if not short:
            break
        taker = min(short, key=lambda w: ((load[w] - ideal[w]) / eligible[w].capacity, w))
        donors = [w for w in ids if load[w] > ideal[w]]
        if not donors:
            break  # the rest stays with live owners outside the group (churn budget)
        donor = max(donors, key=lambda w: ((load[w] - ideal[w]) / eligible[w].capacity, w))
        # Under a churn budget, only shards this generation placed may move again.
        movable = [
            i
            for i, o in enumerate(owners)
            if o == donor and (max_moves is None or before[i] != donor)
        ]
        if not movable:
            break
        i = min(movable, key=lambda i: (before[i] == donor, -weights[i], i))
        owners[i] = taker
        load[donor] -= weights[i]
        load[taker] += weights[i]
    return owners


def load_of(
    owners: Sequence[str | None], weights: Mapping[int, int], shards: Sequence[int]
) -> dict[str, int]:
    """Total weight per owner over `shards`."""
    loads: dict[str, int] = {}
    for s in shards:
        owner = owners[s]
        if owner is not None:
            loads[owner] = loads.get(owner, 0) + weights.get(s, 1)
    return loads
