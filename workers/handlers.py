"""The handler API: user code (or a built-in sink) named as `module:callable`.

A handler is one of:

* a function taking one `Event`:              ``def handle(event): ...``
* a function taking a `Batch`, marked so:     ``@batch_handler def handle(batch): ...``
* a class (instantiated once per worker process) with some of:

      on_assign(shard, token)     a shard was acquired; `token` is the owner token
      resume_positions(shard)     optional: where the shard resumes, if the handler
                                  stores its own offsets ({topic: next position})
      on_event(event)             one event            } at least one of the two
      on_events(batch)            a batch of events    } (on_events wins if both)
      on_revoke(shard)            the shard is being released (its work is done)
      on_close()                  the worker is stopping

  Its constructor takes no argument or one `HandlerContext`.

Every one of these may be sync or async. Sync code runs on a thread pool, so a slow
or CPU-heavy handler never blocks the event loop or the lease keepalive. One
instance serves every shard of the worker, concurrently: a sync class handler must
be thread-safe across shards (calls for one shard never overlap).

A handler raises to reject an event; the consumer retries and then dead-letters it
(see `workers.retry`). Three exceptions are different:

* `TransientError` (or a built-in `ConnectionError` / `TimeoutError`) says the
  failure is not the event's fault (a database or broker is away): the shard waits
  and retries with backoff for as long as it takes, and never dead-letters for it.
* `Fenced` says the owner token is stale: the consumer stops the shard instead of
  retrying.
* `ShardHalted` says the shard cannot go on until an operator acts: the shard stops
  (and is retried in place later), and the event is neither retried nor dead-lettered.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from shardctl.core.config import Settings
from workers.events import Batch, Event

F = TypeVar("F", bound=Callable[..., Any])

_BATCH_MARK = "__shardctl_batch_handler__"


class HandlerError(Exception):
    """A handler spec cannot be loaded or is not a handler; the message names the spec."""


class Fenced(Exception):
    """A write was refused because a newer owner token exists for the shard."""

    def __init__(self, message: str, shard: int, token: int) -> None:
        super().__init__(message)
        self.shard = shard
        self.token = token


class ShardHalted(Exception):
    """The shard cannot go on until an operator acts; the message says what to do."""


class TransientError(Exception):
    """A failure that is not the event's fault and will pass (a server away, a lock
    wait, a deadlock): the shard waits and retries, and the event is never
    dead-lettered for it. Raise it from a handler (`raise TransientError(...) from
    exc`) to say so about an error of your own."""


def batch_handler(fn: F) -> F:
    """Mark a function handler as taking a `Batch` instead of one `Event`."""
    setattr(fn, _BATCH_MARK, True)
    return fn


@dataclass(frozen=True)
class HandlerContext:
    """What a handler class may receive at construction."""

    worker_id: str = "local"
    settings: Settings | None = None
    options: Mapping[str, str] = field(default_factory=dict)
    topics: tuple[str, ...] = ()  # the source topics the worker consumes


# Short names of the built-in sinks, usable wherever a `module:callable` is.
BUILTIN_SINKS = {
    "stdout": "workers.sinks.stdout:Stdout",
    "sql": "workers.sinks.sql:SqlSink",
    "postgres": "workers.sinks.postgres:PostgresSink",
    "kafka": "workers.sinks.kafka:KafkaSink",
}


def resolve_spec(spec: str) -> Any:
    spec = BUILTIN_SINKS.get(spec, spec)
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise HandlerError(
            f"handler {spec!r}: expected 'module:callable' or one of {', '.join(BUILTIN_SINKS)}"
        )
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise HandlerError(f"handler {spec!r}: cannot import {module_name!r}: {exc}") from exc
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise HandlerError(
                f"handler {spec!r}: module {module_name!r} has no attribute {attr_path!r}"
            ) from None
    return target


def _construct(cls: type[Any], spec: str, context: HandlerContext) -> Any:
    try:
        params = [
            p
            for p in inspect.signature(cls).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        params = []
    try:
        return cls(context) if params else cls()
    except Exception as exc:
        raise HandlerError(
            f"handler {spec!r}: constructing {cls.__name__} failed: {type(exc).__name__}: {exc}"
        ) from exc


class Handler:
    """A loaded handler with one calling convention, whatever shape the user gave."""

    def __init__(self, name: str, target: Any, executor: Executor | None = None) -> None:
        self.name = name
        self._executor = executor
        # Told how long each call of `handle` took, failed ones too (seconds).
        self.observe_seconds: Callable[[float], None] | None = None
        self._target = target
        if hasattr(target, "on_events") or hasattr(target, "on_event"):
            self._on_events = getattr(target, "on_events", None)
            self._on_event = getattr(target, "on_event", None)
            self._hooks = target
        elif callable(target):
            marked = getattr(target, _BATCH_MARK, False)
            self._on_events = target if marked else None
            self._on_event = None if marked else target
            self._hooks = None
        else:
            raise HandlerError(
                f"handler {name!r}: {type(target).__name__} is neither callable nor has "
                "on_event/on_events"
            )

    @property
    def takes_batches(self) -> bool:
        return self._on_events is not None

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if inspect.iscoroutinefunction(fn):
            return await fn(*args)
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self._executor, fn, *args)
        if inspect.isawaitable(result):
            return await result
        return result

    async def _hook(self, name: str, *args: Any) -> Any:
        fn = getattr(self._hooks, name, None) if self._hooks is not None else None
        if fn is None:
            return None
        return await self._call(fn, *args)

    async def assign(self, shard: int, token: int) -> None:
        await self._hook("on_assign", shard, token)

    async def positions(self, shard: int) -> dict[str, int] | None:
        """The handler's own resume positions for `shard`, if it stores offsets itself."""
        found = await self._hook("resume_positions", shard)
        if found is None:
            return None
        if not isinstance(found, Mapping):
            raise HandlerError(
                f"handler {self.name!r}: resume_positions({shard}) returned "
                f"{type(found).__name__}, expected a mapping of topic to position"
            )
        return {str(topic): int(pos) for topic, pos in found.items()}

    async def handle(self, batch: Batch) -> None:
        """Run the handler on every event of `batch`, in order."""
        observe = self.observe_seconds
        if observe is None:
            await self._handle(batch)
            return
        started = time.perf_counter()
        try:
            await self._handle(batch)
        finally:
            observe(time.perf_counter() - started)

    async def _handle(self, batch: Batch) -> None:
        if self._on_events is not None:
            await self._call(self._on_events, batch)
            return
        on_event = self._on_event
        assert on_event is not None
        if inspect.iscoroutinefunction(on_event):
            for event in batch.events:
                await on_event(event)
            return
        # A sync per-event handler: the whole batch in one trip to the thread pool.
        results = await asyncio.get_running_loop().run_in_executor(
            self._executor, lambda: [on_event(event) for event in batch.events]
        )
        for result in results:
            if inspect.isawaitable(result):
                await result

    async def handle_one(self, event: Event) -> None:
        await self.handle(Batch.of(event.shard, event.token, (event,)))

    async def revoke(self, shard: int) -> None:
        await self._hook("on_revoke", shard)

    async def close(self) -> None:
        await self._hook("on_close")


def load_handler(
    spec: str, context: HandlerContext | None = None, executor: Executor | None = None
) -> Handler:
    """Import `module:callable` and wrap it. Raises HandlerError naming the spec."""
    target = resolve_spec(spec)
    if inspect.isclass(target):
        target = _construct(target, spec, context or HandlerContext())
    return Handler(spec, target, executor)
