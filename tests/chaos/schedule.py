"""A seeded, reproducible fault schedule: the same seed gives the same faults.

The schedule is a list of `Fault`s, each with the earliest second (from the start
of the load) at which it is injected, its kind and, for process faults, which
replica it picks. Every kind appears in each round, in a seeded order, so even
a short run injects one of each; a long run repeats rounds until the duration.

`LoadKind`s are parts of the write load rather than injected faults. Both are
selected by short names (`KIND_NAMES`, `parse_kinds`): `--kinds bootstrap,pk-update`.
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
    BOOTSTRAP = "bootstrap a table, kill -9 cdc leader while it runs"
    SINK_OUTAGE = "sink MariaDB down past the retry window"
    SESSION_BINLOG = "one transaction with a session binlog_format/binlog_row_image"
    DDL = "DDL step: add a column, rename it, modify it to JSON"


class LoadKind(StrEnum):
    PK_UPDATES = "primary-key updates"
    SECOND_SOURCE = "a second MariaDB source into the same topic"
    OVERSIZED_ROWS = "a topic with a small max.message.bytes, and rows over it"


ALL_KINDS: tuple[FaultKind, ...] = tuple(FaultKind)
ALL_LOAD_KINDS: tuple[LoadKind, ...] = tuple(LoadKind)

KIND_NAMES: dict[str, FaultKind | LoadKind] = {
    "kill-worker": FaultKind.KILL_WORKER,
    "kill-coordinator": FaultKind.KILL_COORDINATOR_LEADER,
    "kill-cdc": FaultKind.KILL_CDC_LEADER,
    "freeze-worker": FaultKind.FREEZE_WORKER,
    "restart-etcd": FaultKind.RESTART_ETCD,
    "restart-kafka": FaultKind.RESTART_KAFKA,
    "restart-mariadb": FaultKind.RESTART_MARIADB,
    "bootstrap": FaultKind.BOOTSTRAP,
    "sink-outage": FaultKind.SINK_OUTAGE,
    "binlog-session": FaultKind.SESSION_BINLOG,
    "ddl": FaultKind.DDL,
    "pk-update": LoadKind.PK_UPDATES,
    "second-source": LoadKind.SECOND_SOURCE,
    "oversized-rows": LoadKind.OVERSIZED_ROWS,
}


def parse_kinds(text: str) -> tuple[tuple[FaultKind, ...], tuple[LoadKind, ...]]:
    """Comma-separated short names (or `all`) -> the fault kinds and the load kinds,
    in their declared order."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return ALL_KINDS, ALL_LOAD_KINDS
    unknown = [n for n in names if n not in KIND_NAMES]
    if unknown or not names:
        raise ValueError(f"unknown chaos kind(s) {unknown}; known: all, {', '.join(KIND_NAMES)}")
    chosen = {KIND_NAMES[n] for n in names}
    return (
        tuple(k for k in ALL_KINDS if k in chosen),
        tuple(k for k in ALL_LOAD_KINDS if k in chosen),
    )


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
    if gap_s[0] <= 0 or gap_s[1] < gap_s[0]:
        raise ValueError(f"gap_s must be 0 < low <= high, got {gap_s}")
    rng = random.Random(seed)
    faults: list[Fault] = []
    if not kinds:
        return faults  # a run of load kinds only
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
