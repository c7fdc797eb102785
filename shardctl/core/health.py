"""Liveness and readiness of a long-running shardctl process, served as /healthz and
/readyz beside /metrics (see `shardctl.core.metrics.start_server`).

alive   the process's main loop ticked within `liveness_window_s`, and the tracked
        lease's keepalive is not stuck (a lease past its deadline by a whole TTL that
        the keepalive never declared lost).
ready   the role says it is in a ready state (a leader, a standby campaigning, a
        registered worker) and its tracked lease is valid now, and it waits for
        nothing: `waiting(what)` names what a starting process waits for (a worker
        waiting for Kafka), which readiness reports until `waiting(None)`.

There is one state per process. Roles update it with `update(state, session=...)`;
the asyncio processes tick it with `run_ticker()`, the reader's main loop calls
`beat()`. Everything here is thread-safe: the HTTP server reads it from its own thread.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

DEFAULT_LIVENESS_WINDOW_S = 30.0
TICK_S = 1.0

# States in which a process with a valid lease is ready.
READY_STATES = frozenset({"leading", "standby", "serving"})


class LeaseView(Protocol):
    """What health needs of `shardctl.core.etcd.Session`."""

    ttl: int

    def is_valid(self) -> bool: ...

    @property
    def keepalive_stalled(self) -> bool: ...


@dataclass(frozen=True)
class Verdict:
    ok: bool
    detail: dict[str, Any]


class ProcessHealth:
    def __init__(
        self, role: str = "process", liveness_window_s: float = DEFAULT_LIVENESS_WINDOW_S
    ) -> None:
        self._lock = threading.Lock()
        self.role = role
        self.liveness_window_s = liveness_window_s
        self._state = "starting"
        self._session: LeaseView | None = None
        self._waiting: str | None = None
        self._last_beat = time.monotonic()

    def configure(self, role: str, liveness_window_s: float = DEFAULT_LIVENESS_WINDOW_S) -> None:
        with self._lock:
            self.role = role
            self.liveness_window_s = liveness_window_s
            self._state = "starting"
            self._session = None
            self._waiting = None
            self._last_beat = time.monotonic()

    def beat(self) -> None:
        self._last_beat = time.monotonic()  # a float store is atomic in CPython

    def update(self, state: str, session: LeaseView | None = None) -> None:
        """Enter `state`; with `session`, track that lease from now on (the last one
        given stays tracked until another replaces it)."""
        with self._lock:
            self._state = state
            if session is not None:
                self._session = session
            self._last_beat = time.monotonic()

    def waiting(self, what: str | None) -> None:
        """Say what the process waits for before it can serve (None: nothing any more);
        readiness names it."""
        with self._lock:
            self._waiting = what

    @property
    def state(self) -> str:
        return self._state

    def alive(self) -> Verdict:
        with self._lock:
            since = time.monotonic() - self._last_beat
            session = self._session
            detail: dict[str, Any] = {
                "role": self.role,
                "state": self._state,
                "last_tick_s": round(since, 3),
            }
            stalled_loop = since > self.liveness_window_s
        stalled_keepalive = session is not None and session.keepalive_stalled
        problems = []
        if stalled_loop:
            problems.append(f"main loop has not ticked for {since:.1f}s")
        if stalled_keepalive:
            problems.append("lease keepalive is stuck")
        if problems:
            detail["problems"] = problems
        return Verdict(not problems, detail)

    def ready(self) -> Verdict:
        with self._lock:
            state, session, waiting = self._state, self._session, self._waiting
        detail: dict[str, Any] = {"role": self.role, "state": state}
        problems = []
        if waiting is not None:
            problems.append(f"waiting for {waiting}")
        if state not in READY_STATES:
            problems.append(f"state is {state}")
        if session is None:
            problems.append("no etcd lease yet")
        elif not session.is_valid():
            problems.append("etcd lease not valid (lost, closed or unconfirmed)")
        alive = self.alive()
        if not alive.ok:
            problems.extend(alive.detail["problems"])
        if problems:
            detail["problems"] = problems
        return Verdict(not problems, detail)


PROCESS = ProcessHealth()


def configure(role: str, liveness_window_s: float = DEFAULT_LIVENESS_WINDOW_S) -> None:
    """Name this process's role and reset its state (call once at start)."""
    PROCESS.configure(role, liveness_window_s)


def update(state: str, session: LeaseView | None = None) -> None:
    PROCESS.update(state, session)


def beat() -> None:
    PROCESS.beat()


def waiting(what: str | None) -> None:
    PROCESS.waiting(what)


async def run_ticker(interval_s: float = TICK_S) -> None:
    """Beat from the running event loop until cancelled: if the loop blocks, beats stop."""
    while True:
        PROCESS.beat()
        await asyncio.sleep(interval_s)
