"""Handlers of every supported shape, loaded by name in test_worker_handlers."""

from __future__ import annotations

from typing import Any

from workers.events import Batch, Event
from workers.handlers import HandlerContext, batch_handler

seen: list[Any] = []


def sync_event(event: Event) -> None:
    seen.append(("sync_event", event.event_id))


async def async_event(event: Event) -> None:
    seen.append(("async_event", event.event_id))


@batch_handler
def sync_batch(batch: Batch) -> None:
    seen.append(("sync_batch", [e.event_id for e in batch.events]))


class Full:
    def __init__(self, context: HandlerContext) -> None:
        self.context = context
        self.calls: list[Any] = []

    def on_assign(self, shard: int, token: int) -> None:
        self.calls.append(("assign", shard, token))

    def resume_positions(self, shard: int) -> dict[str, int]:
        return {"orders": 40 + shard}

    async def on_events(self, batch: Batch) -> None:
        self.calls.append(("events", [e.event_id for e in batch.events]))

    async def on_revoke(self, shard: int) -> None:
        self.calls.append(("revoke", shard))

    def on_close(self) -> None:
        self.calls.append(("close",))


class PerEvent:
    def __init__(self) -> None:
        self.ids: list[str | None] = []

    def on_event(self, event: Event) -> None:
        self.ids.append(event.event_id)


class NotAHandler:
    pass


def broken_constructor_target() -> None:
    raise AssertionError("never called")


class Broken:
    def __init__(self) -> None:
        raise RuntimeError("no database configured")

    def on_event(self, event: Event) -> None:
        raise AssertionError("never called")


CONSTANT = 42
