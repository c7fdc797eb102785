"""Which transaction end is safe to checkpoint, given delivery acknowledgements.

Transactions are registered in binlog order with the number of messages they
produced. Acknowledgements arrive in any order (a producer acknowledges each
partition on its own). The safe point is the end of the longest prefix of
transactions whose every message is acknowledged: resuming there replays only
transactions that may not have been delivered in full.

    open(end, n) -> seq           register a transaction with n messages
    ack(seq)                      one of its messages is delivered
    safe() -> end | None          the newest end whose prefix is fully delivered
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class AckTracker(Generic[T]):
    def __init__(self) -> None:
        # Pending transactions in order: [seq, messages not yet acknowledged, end].
        self._pending: deque[list[object]] = deque()
        self._first_seq = 0  # seq of self._pending[0]
        self._next_seq = 0
        self._safe: T | None = None
        self.in_flight = 0  # messages sent and not acknowledged

    def open(self, end: T, messages: int) -> int:
        if messages < 0:
            raise ValueError(f"message count must be >= 0, got {messages}")
        seq = self._next_seq
        self._next_seq += 1
        self._pending.append([seq, messages, end])
        self.in_flight += messages
        self._advance()
        return seq

    def ack(self, seq: int) -> None:
        index = seq - self._first_seq
        if index < 0 or index >= len(self._pending):
            raise ValueError(f"acknowledgement for unknown or finished transaction {seq}")
        entry = self._pending[index]
        remaining = entry[1]
        assert isinstance(remaining, int)
        if remaining <= 0:
            raise ValueError(f"transaction {seq} acknowledged more often than it has messages")
        entry[1] = remaining - 1
        self.in_flight -= 1
        # Called once per delivered message: only the first transaction's last
        # acknowledgement can move the safe point.
        if index == 0 and remaining == 1:
            self._advance()

    def safe(self) -> T | None:
        return self._safe

    def _advance(self) -> None:
        while self._pending and self._pending[0][1] == 0:
            entry = self._pending.popleft()
            self._first_seq += 1
            self._safe = entry[2]  # type: ignore[assignment]
