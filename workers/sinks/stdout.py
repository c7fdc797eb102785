"""The stdout sink: one line per event, for operators (`--handler workers.sinks.stdout:Stdout`).

Each line is the event's Maxwell JSON, prefixed with `<shard> <topic>@<position>` unless
the option `bare=true` is given.
"""

from __future__ import annotations

import sys
import threading
from typing import TextIO

from workers.events import Batch
from workers.handlers import HandlerContext


class Stdout:
    def __init__(self, context: HandlerContext | None = None, out: TextIO | None = None) -> None:
        options = context.options if context is not None else {}
        self.bare = options.get("bare", "false").lower() in ("1", "true", "yes")
        self._out = out or sys.stdout
        self._lock = threading.Lock()  # shards print from several threads

    def line(self, shard: int, topic: str, position: int | None, raw: bytes) -> str:
        text = raw.decode("utf-8", errors="backslashreplace")
        if self.bare:
            return text
        at = "" if position is None else f"@{position}"
        return f"{shard} {topic}{at} {text}"

    def on_events(self, batch: Batch) -> None:
        lines = [self.line(e.shard, e.topic, e.position, e.raw) for e in batch.events]
        with self._lock:
            self._out.write("\n".join(lines) + "\n")
            self._out.flush()
