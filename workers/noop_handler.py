"""The no-op consumer: what `shardctl worker run` consumes with when no handler is
given (`--handler noop`, the default). It reads no transport.

For each owned shard it "handles" one synthetic event per tick, but only while its
claim is valid, and counts them as the shard's position (resuming from the committed
offset). That exercises the whole ownership path without a broker (coordination
tests, the demo, benchmarks): acquire, fenced periodic commits, release with a final
commit, and abort on lease loss.

With `event_log`, every handled event is appended as one JSON line
`{"t": unix time, "worker", "shard", "token", "position"}`, so a test can prove that
no two workers handled the same shard at overlapping times.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Collection
from pathlib import Path
from typing import TextIO

from shardctl.core.records import OffsetRecord
from workers.ownership import Claim

# The synthetic events have no transport; their count is stored under this topic.
NOOP_TOPIC = "noop"


def _record(position: int, token: int) -> OffsetRecord:
    return OffsetRecord(positions={NOOP_TOPIC: position}, event_id=f"noop:{position}", token=token)


class NoopHandler:
    """A `workers.ownership.ShardConsumer` of synthetic events."""

    def __init__(self, worker_id: str, tick_s: float = 0.2, event_log: Path | None = None) -> None:
        self.worker_id = worker_id
        self.tick_s = tick_s
        self._positions: dict[int, int] = {}
        self._tokens: dict[int, int] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._aborted: set[int] = set()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._log: TextIO | None = event_log.open("a", buffering=1) if event_log else None

    async def start(self, claim: Claim) -> None:
        self._loop = asyncio.get_running_loop()
        start = claim.offset.positions.get(NOOP_TOPIC, 0) if claim.offset else 0
        with self._lock:
            self._aborted.discard(claim.shard)
            self._positions[claim.shard] = start
            self._tokens[claim.shard] = claim.token
        self._tasks[claim.shard] = self._loop.create_task(self._consume(claim))

    async def _consume(self, claim: Claim) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            with self._lock:
                if claim.shard in self._aborted:
                    return
            # Check right before handling: a resumed zombie must not handle anything.
            # The logged time is the moment ownership was verified.
            checked_at = time.time()
            if not claim.valid():
                return
            with self._lock:
                if claim.shard not in self._positions:
                    return  # aborted from the keepalive thread meanwhile
                self._positions[claim.shard] += 1
                position = self._positions[claim.shard]
            if self._log is not None:
                self._log.write(
                    json.dumps(
                        {
                            "t": checked_at,
                            "worker": self.worker_id,
                            "shard": claim.shard,
                            "token": claim.token,
                            "position": position,
                        }
                    )
                    + "\n"
                )

    async def stop(self, shard: int, token: int) -> OffsetRecord | None:
        task = self._tasks.pop(shard, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        with self._lock:
            position = self._positions.pop(shard, None)
        return None if position is None else _record(position, token)

    def position(self, shard: int) -> OffsetRecord | None:
        with self._lock:
            position = self._positions.get(shard)
            token = self._tokens.get(shard)
        return None if position is None or token is None else _record(position, token)

    def lag(self, shard: int, committed: OffsetRecord | None) -> int | None:
        return None  # synthetic events have no backlog

    def abort(self, shards: Collection[int], reason: str) -> None:
        with self._lock:
            self._aborted.update(shards)
            for shard in shards:
                self._positions.pop(shard, None)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._cancel, list(shards))

    def _cancel(self, shards: list[int]) -> None:
        for shard in shards:
            task = self._tasks.pop(shard, None)
            if task is not None:
                task.cancel()

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
