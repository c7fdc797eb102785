"""Exponential backoff with jitter: the one schedule of every retry in shardctl.

The n-th wait (1-based) is `initial_s * multiplier**(n-1)`, capped at `max_s`, then
shortened by a random part of up to `jitter` of it, so that processes that met the
same outage do not all retry at the same instant:

    Exponential(0.2, 2.0).delay(n)     0.2, 0.4, 0.8, 1.6, 2.0, 2.0, ...
    Exponential(0.2, 2.0).jittered(n)  delay(n) * (1 - 0.5 * U[0, 1))

`Backoff` walks a schedule for one retry loop: `next()` after each failure,
`reset()` after a success. Who uses which schedule:

    ETCD_RETRY (0.2 s doubling to 2 s)  opening a session, campaigning, revoking an
                                        old lease, the reader's etcd calls, a worker's
                                        reconcile pass that etcd failed, broker
                                        outages of the CDC producers
    WATCH_RETRY (0.2 s doubling to 1 s) a broken etcd watch stream
    workers.retry.RetryPolicy           a failing event ([worker] retry_*)
    workers.ownership.FailureBackoff    a failed shard's cool-down (no jitter: its
                                        wait is shown by `status` as it is)
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Exponential:
    initial_s: float
    max_s: float
    multiplier: float = 2.0
    jitter: float = 0.5  # the largest part of a wait that randomness takes off

    def __post_init__(self) -> None:
        if not 0 <= self.initial_s <= self.max_s:
            raise ValueError(
                f"backoff: need 0 <= initial_s <= max_s, got {self.initial_s}, {self.max_s}"
            )
        if self.multiplier < 1:
            raise ValueError(f"backoff: multiplier must be at least 1, got {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"backoff: jitter must be between 0 and 1, got {self.jitter}")

    def delay(self, n: int) -> float:
        """The n-th wait (1-based), before jitter."""
        if n < 1:
            raise ValueError(f"backoff: the wait number starts at 1, got {n}")
        # The exponent is bounded, so a huge n cannot overflow a float.
        return float(min(self.max_s, self.initial_s * self.multiplier ** min(n - 1, 64)))

    def jittered(self, n: int, rand: Callable[[], float] = random.random) -> float:
        """`delay(n)` shortened by a random part of up to `jitter` of it."""
        return self.delay(n) * (1.0 - self.jitter * rand())


ETCD_RETRY = Exponential(initial_s=0.2, max_s=2.0)
WATCH_RETRY = Exponential(initial_s=0.2, max_s=1.0)


@dataclass
class Backoff:
    """The waits of one retry loop on `schedule`."""

    schedule: Exponential = ETCD_RETRY
    rand: Callable[[], float] = random.random
    _failures: int = field(default=0, init=False, repr=False)

    def next(self) -> float:
        """The wait before the next try; each call lengthens the following one."""
        self._failures += 1
        return self.schedule.jittered(self._failures, self.rand)

    def reset(self) -> None:
        """After a success: the next failure waits the shortest time again."""
        self._failures = 0
