"""The assignment algorithm: a pure function from (previous owners, members) to new owners.

Inputs: the previous owner of every shard (a worker id or None; the list may be
shorter or longer than `num_shards` after `shards set`), the members (capacity and
draining flag per worker id), and an optional churn budget.

**Eligible workers** are the members that are not draining and have capacity >= 1.
Draining workers get no shards. With no eligible worker every shard is unowned.

**Quotas (balance).** With N shards and total eligible capacity C, worker i's fair
share is q_i = N * c_i / C. Its quota is floor(q_i) or ceil(q_i), and the quotas
sum to N: the E = N - sum(floor(q_i)) extra shards go to E distinct workers with a
fractional share, chosen in this order:
  1. workers that currently keep more than floor(q_i) of their shards (giving them
     the extra spares a move),
  2. larger remainder N * c_i mod C (largest-remainder apportionment),
  3. smaller worker id.
So with equal capacities every worker holds floor(N/W) or ceil(N/W) shards.

**Stickiness (minimal movement).** A shard keeps its owner if that owner is eligible
and still within its quota. Shards are taken away only from owners that are gone,
draining, or over quota (an over-quota worker keeps its lowest-numbered shards).
Freed shards go, lowest shard first, to workers below quota, in worker-id order.
The number of moved shards is N - sum_i min(kept_i, quota_i), which is the least
possible for any assignment meeting the balance bound: rule 1 above maximises the
sum. (A "move" is a shard whose owner changes, counting shards that had no live
owner.)

**Determinism.** The result depends only on the inputs; ties break by worker id and
shard number, never by dict or set order.

**Churn budget.** `max_moves` limits the moves taken from live owners (draining or
over quota) to other workers in one generation. Shards without a live owner are always assigned. A
budgeted result may be unbalanced; running the function again on its output (the
next generation) continues towards balance.

Cost: O(N + W log W).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Member:
    capacity: int = 1
    draining: bool = False
    # The worker's labels, sorted; only `coordinator.placement` reads them.
    labels: tuple[tuple[str, str], ...] = ()
    # Seconds the coordinator reserves its shards after it dies; the algorithm ignores it.
    restart_grace_s: float = 0.0

    @property
    def zone(self) -> str | None:
        return dict(self.labels).get("zone")

    @property
    def eligible(self) -> bool:
        return self.capacity >= 1 and not self.draining


def quotas(
    num_shards: int, members: Mapping[str, Member], kept: Mapping[str, int] | None = None
) -> dict[str, int]:
    """The balanced shard count of every eligible worker (see the module docstring).

    `kept[w]` is how many of its current shards worker w could keep; it only
    steers which workers get the extra shards.
    """
    kept = kept or {}
    eligible = sorted(w for w, m in members.items() if m.eligible)
    if not eligible or num_shards <= 0:
        return {}
    total = sum(members[w].capacity for w in eligible)
    quota: dict[str, int] = {}
    remainder: dict[str, int] = {}
    for w in eligible:
        share = num_shards * members[w].capacity
        quota[w], remainder[w] = divmod(share, total)
    extra = num_shards - sum(quota.values())
    fractional = [w for w in eligible if remainder[w] > 0]
    fractional.sort(key=lambda w: (kept.get(w, 0) <= quota[w], -remainder[w], w))
    for w in fractional[:extra]:
        quota[w] += 1
    return quota


def assign(
    previous: Sequence[str | None],
    members: Mapping[str, Member],
    num_shards: int,
    max_moves: int | None = None,
) -> list[str | None]:
    """New owners for shards 0..num_shards-1 (see the module docstring)."""
    if num_shards < 0:
        raise ValueError(f"num_shards must be >= 0, got {num_shards}")
    if max_moves is not None and max_moves < 0:
        raise ValueError(f"max_moves must be >= 0, got {max_moves}")
    owners: list[str | None] = [
        previous[s] if s < len(previous) else None for s in range(num_shards)
    ]

    # Shards per live owner (live = registered, draining or not), in shard order.
    held: dict[str, list[int]] = {}
    free: list[int] = []
    for shard, owner in enumerate(owners):
        if owner is not None and owner in members:
            held.setdefault(owner, []).append(shard)
        else:
            owners[shard] = None
            free.append(shard)

    kept = {w: len(held.get(w, ())) for w, m in members.items() if m.eligible}
    quota = quotas(num_shards, members, kept)
    if not quota:
        return [None] * num_shards

    # Shards that live owners must give up: all of a draining/ineligible worker's,
    # and an eligible worker's beyond its quota (its highest-numbered ones).
    surplus: list[tuple[int, str, list[int]]] = []
    for w in sorted(held):
        shards = held[w]
        limit = quota.get(w, 0)
        if len(shards) > limit:
            # Draining workers first (rank 0), then the most over-quota workers.
            rank = 0 if w not in quota else 1
            surplus.append((rank, w, shards[limit:]))
            held[w] = shards[:limit]
    surplus.sort(key=lambda item: (item[0], -len(item[2]), item[1]))

    budget = max_moves
    taken: list[int] = []
    for _rank, w, shards in surplus:
        if budget is not None and budget < len(shards):
            # Over budget: the rest stays with its current owner this generation.
            held[w].extend(shards[budget:])
            shards = shards[:budget]
        taken.extend(shards)
        if budget is not None:
            budget -= len(shards)
    for shard in taken:
        owners[shard] = None
    free.extend(taken)
    free.sort()

    # Hand out freed shards, lowest first, to workers below quota in id order.
    position = 0
    for w in sorted(quota):
        need = quota[w] - len(held.get(w, ()))
        while need > 0 and position < len(free):
            owners[free[position]] = w
            position += 1
            need -= 1
    # Deficits of workers below quota always cover the free shards: quotas sum to N
    # and every shard not free is held by someone.
    if position != len(free):
        raise AssertionError(f"{len(free) - position} shards left unplaced")
    return owners


def moves(before: Sequence[str | None], after: Sequence[str | None]) -> int:
    """Shards whose owner changed (a shard missing on one side counts if owned on the other)."""
    count = 0
    for shard in range(max(len(before), len(after))):
        old = before[shard] if shard < len(before) else None
        new = after[shard] if shard < len(after) else None
        if old != new and new is not None:
            count += 1
    return count


def minimal_moves(
    previous: Sequence[str | None], members: Mapping[str, Member], num_shards: int
) -> int:
    """The least number of moves any balanced assignment needs from `previous`."""
    held: dict[str, int] = {}
    for shard in range(num_shards):
        owner = previous[shard] if shard < len(previous) else None
        if owner is not None and owner in members and members[owner].eligible:
            held[owner] = held.get(owner, 0) + 1
    quota = quotas(num_shards, members, held)
    if not quota:
        return 0
    return num_shards - sum(min(held.get(w, 0), q) for w, q in quota.items())
