"""The state machine of one incremental snapshot, and its one transition function.

    PENDING --start--> RUNNING(chunk=None)
    RUNNING --read--> WINDOW (chunk buffered between low and high watermark)
    WINDOW --stream reaches high watermark--> RUNNING (rest of chunk published,
                                              progress stored)
    RUNNING --read finds no more rows--> DONE (bootstrap-complete published)
    PENDING/RUNNING/WINDOW --pause--> PAUSED --resume--> RUNNING
    (WINDOW finishes its chunk first: a released chunk is never half published)
    any but a final state --cancel--> CANCELLED
    any but a final state --bad table, lost column, SQL error--> FAILED

DONE, CANCELLED and FAILED are final (a cancel leaves them as they are).
Progress (state, last key, rows done) is stored in etcd once a released chunk
is acknowledged, fenced by the reader's leadership. WINDOW lives in memory only:
it is stored as RUNNING (a chunk in its window is read again after a crash).
"""

from __future__ import annotations

from enum import Enum


class SnapshotState(Enum):
    PENDING = "pending"
    RUNNING = "running"
    WINDOW = "window"
    PAUSED = "paused"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in (SnapshotState.DONE, SnapshotState.CANCELLED, SnapshotState.FAILED)


class Event(Enum):
    START = "start"
    READ = "read"
    RELEASED = "released"
    EXHAUSTED = "exhausted"
    PAUSE = "pause"
    RESUME = "resume"
    CANCEL = "cancel"
    FAIL = "fail"


class TransitionError(ValueError):
    """An event that the state does not allow."""


_S = SnapshotState
_TRANSITIONS: dict[tuple[SnapshotState, Event], SnapshotState] = {
    (_S.PENDING, Event.START): _S.RUNNING,
    (_S.RUNNING, Event.READ): _S.WINDOW,
    (_S.WINDOW, Event.RELEASED): _S.RUNNING,
    (_S.RUNNING, Event.EXHAUSTED): _S.DONE,
    (_S.PENDING, Event.PAUSE): _S.PAUSED,
    (_S.RUNNING, Event.PAUSE): _S.PAUSED,
    (_S.PAUSED, Event.PAUSE): _S.PAUSED,
    (_S.PAUSED, Event.RESUME): _S.RUNNING,
    (_S.RUNNING, Event.RESUME): _S.RUNNING,
}


def transition(state: SnapshotState, event: Event) -> SnapshotState:
    """The state after `event`; raises TransitionError if `state` does not allow it."""
    if event is Event.CANCEL:
        return state if state.final else _S.CANCELLED
    if event is Event.FAIL and not state.final:
        return _S.FAILED
    try:
        return _TRANSITIONS[(state, event)]
    except KeyError:
        raise TransitionError(f"snapshot in state {state.value} cannot {event.value}") from None
