"""A seeded, reproducible fault schedule: the same seed gives the same faults.

The schedule is a list of `Fault`s, each with the earliest second (from the start
of the load) at which it is injected, its kind and, for process faults, which
replica it picks. Every kind appears in each round, in a seeded order, so even
a short run injects one of each; a long run repeats rounds until the duration.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum


class FaultKind(StrEnum):
    KILL_WORKER = "kill -9 worker"
    KILL_COORDINATOR_LEADER = "kill -9 coordinator leader"
    KILL_CDC_LEADER = "kill -9 cdc leader"
    FREEZE_WORKER = "SIGSTOP worker past TTL, then SIGCONT"
    RESTART_ETCD = "restart etcd"
    RESTART_KAFKA = "restart kafka"
    RESTART_MARIADB = "restart mariadb"


ALL_KINDS: tuple[FaultKind, ...] = tuple(FaultKind)


@dataclass(frozen=True)
class Fault:
    at_s: float  # not before this many seconds after the load started
    kind: FaultKind
    pick: int  # which worker (index into the live workers), when the kind needs one

    def describe(self) -> str:
        return f"t+{self.at_s:.1f}s {self.kind.value} (pick {self.pick})"


def make_schedule(
    seed: int,
    duration_s: float,
    *,
    kinds: tuple[FaultKind, ...] = ALL_KINDS,
    first_s: float = 5.0,
    gap_s: tuple[float, float] = (4.0, 10.0),
    rounds: int | None = None,
) -> list[Fault]:
    """Faults from `first_s` until `duration_s` (or `rounds` rounds, if fewer), in
    rounds that contain every kind once."""
    if not kinds:
        raise ValueError("a fault schedule needs at least one fault kind")
    if gap_s[0] <= 0 or gap_s[1] < gap_s[0]:
        raise ValueError(f"gap_s must be 0 < low <= high, got {gap_s}")
    rng = random.Random(seed)
    faults: list[Fault] = []
    at = first_s
    done = 0
    while rounds is None or done < rounds:
        done += 1
        round_kinds = list(kinds)
        rng.shuffle(round_kinds)
        for kind in round_kinds:
            if at > duration_s:
                return faults
            faults.append(Fault(at_s=round(at, 3), kind=kind, pick=rng.randrange(1 << 16)))
            at += rng.uniform(*gap_s)
    return faults
