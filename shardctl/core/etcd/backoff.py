"""How long to wait before retrying an etcd request that found etcd unavailable.

One schedule for every such retry (opening a session, campaigning, revoking an old
lease): 0.2 s, doubling up to 2 s, back to 0.2 s after a success. Short enough to
notice etcd's return within about 2 s, long enough not to spin while it is down.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Backoff:
    initial_s: float = 0.2
    max_s: float = 2.0
    _next_s: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s:
            raise ValueError(
                f"backoff: need 0 < initial_s <= max_s, got {self.initial_s}, {self.max_s}"
            )
        self._next_s = self.initial_s

    def next(self) -> float:
        """The wait before the next retry; each call doubles the following one."""
        delay = self._next_s
        self._next_s = min(self._next_s * 2, self.max_s)
        return delay

    def reset(self) -> None:
        self._next_s = self.initial_s
