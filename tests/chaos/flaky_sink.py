"""The chaos run's handler: the SQL sink behind a deterministic failure rule.

`--handler tests.chaos.flaky_sink:FlakySqlSink` (MariaDB), or
`tests.chaos.flaky_sink:FlakyPostgresSink` (PostgreSQL), options:

    poison_table=accounts  poison_modulus=97   rows of that table whose id % 97 == 0
                                               always fail -> dead-letter topic
    flaky_modulus=13                           rows (any table) whose id % 13 == 0
                                               fail the first time this process
                                               sees their event, then succeed

A batch that holds a not-yet-seen flaky event fails once (all its flaky events are
marked seen), so the worker's batch retry succeeds. Poison events fail every time,
so the worker isolates them one by one and dead-letters them; the rest of the batch
reaches the sink. The check happens before the sink opens its transaction, so a
failed attempt writes nothing.
"""

from __future__ import annotations

import threading

from workers.events import Batch, Event
from workers.handlers import HandlerContext
from workers.sinks.postgres import PostgresSink
from workers.sinks.sql import SqlSink


class PoisonRow(Exception):
    """The chaos rule rejects this row every time."""


class FlakyRow(Exception):
    """The chaos rule rejects this row once per process."""


def row_id(event: Event) -> int | None:
    data = event.data
    if isinstance(data, dict) and isinstance(data.get("id"), int):
        return int(data["id"])
    return None


def is_poison(table: str | None, ident: int | None, poison_table: str, modulus: int) -> bool:
    return ident is not None and table == poison_table and ident % modulus == 0


def is_flaky(ident: int | None, modulus: int) -> bool:
    return ident is not None and ident % modulus == 0


class FlakySqlSink:
    sink_class: type[SqlSink] = SqlSink

    def __init__(self, context: HandlerContext) -> None:
        options = context.options
        self.poison_table = options.get("poison_table", "accounts")
        self.poison_modulus = int(options.get("poison_modulus", "97"))
        self.flaky_modulus = int(options.get("flaky_modulus", "13"))
        self.sink = self.sink_class(context)
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def on_assign(self, shard: int, token: int) -> None:
        self.sink.on_assign(shard, token)

    def resume_positions(self, shard: int) -> dict[str, int]:
        return self.sink.resume_positions(shard)

    def on_events(self, batch: Batch) -> None:
        fresh: list[str] = []
        for event in batch.events:
            ident = row_id(event)
            if is_poison(event.table, ident, self.poison_table, self.poison_modulus):
                raise PoisonRow(
                    f"chaos rule: {event.table} id {ident} % {self.poison_modulus} == 0 "
                    f"always fails (event {event.event_id}, shard {batch.shard})"
                )
            if is_flaky(ident, self.flaky_modulus):
                key = event.event_id or f"{event.topic}@{event.position}"
                with self._lock:
                    if key not in self._seen:
                        fresh.append(key)
        if fresh:
            with self._lock:
                self._seen.update(fresh)
            raise FlakyRow(
                f"chaos rule: {len(fresh)} event(s) of shard {batch.shard} fail once, "
                f"first {fresh[0]}"
            )
        self.sink.on_events(batch)

    def on_revoke(self, shard: int) -> None:
        self.sink.on_revoke(shard)

    def on_close(self) -> None:
        self.sink.on_close()


class FlakyPostgresSink(FlakySqlSink):
    sink_class = PostgresSink


# The chaos run's --sink choice -> its handler.
HANDLERS = {
    "sql": "tests.chaos.flaky_sink:FlakySqlSink",
    "postgres": "tests.chaos.flaky_sink:FlakyPostgresSink",
}
