"""Retry with backoff, then dead-letter: how a batch gets through a handler.

For one batch:

    TRY_BATCH --ok--> DONE
        | failed `attempts` times (and the batch has several events)
        v
    ONE_BY_ONE: each event in order --ok--> next event
                     | failed `attempts` times
                     v
                DEAD_LETTER (event + error), then next event --> DONE

A single-event batch goes from TRY_BATCH straight to DEAD_LETTER. `Fenced` and
`ShardHalted` are never retried: they propagate, and the consumer stops the shard.
Dead-lettering itself is retried until it succeeds (or ownership ends), because a
poison event must never be lost: the shard waits rather than skip it.

Only a deterministic failure counts as an attempt (`classify`): the handler raising
about the event itself, a data error, a constraint. A transient failure (a server
away, a lost connection, a lock wait, a deadlock: `TransientError`, or a built-in
`ConnectionError` / `TimeoutError`) is retried in place with jittered backoff for as
long as it lasts, without using up attempts, so it never dead-letters an event: the
shard stalls and its lag grows, which the consumer reports (`on_transient`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from shardctl.core.backoff import Exponential
from workers.deadletters import DeadLetter, DeadLetterWriter
from workers.events import Batch, Event
from workers.handlers import Fenced, Handler, ShardHalted, TransientError

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]
# Told of each transient failure (the error), and None once a call succeeds again.
OnTransient = Callable[[BaseException | None], None]

Failure = Literal["transient", "deterministic"]


def classify(error: BaseException) -> Failure:
    """Whether `error` will pass by waiting (transient) or is the event's own
    (deterministic: it is retried `attempts` times, then dead-lettered). Sinks turn
    their library's errors into `TransientError` by code (`workers.sinks.sql`,
    `workers.sinks.kafka`); anything unknown is deterministic."""
    if isinstance(error, (TransientError, ConnectionError, TimeoutError)):
        return "transient"
    return "deterministic"


def _no_report(_error: BaseException | None) -> None:
    return None


@dataclass(frozen=True)
class RetryPolicy:
    """`attempts` tries in all; the n-th retry waits on the one backoff schedule
    (`shardctl.core.backoff.Exponential`): initial * multiplier**(n-1), capped."""

    attempts: int = 5
    initial_delay_s: float = 0.2
    max_delay_s: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.5  # a jittered wait is delay * (1 - jitter * U[0, 1))
    schedule: Exponential = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"retry attempts must be at least 1, got {self.attempts}")
        if self.initial_delay_s < 0 or self.max_delay_s < 0:
            raise ValueError("retry delays must not be negative")
        if self.multiplier < 1:
            raise ValueError(f"retry multiplier must be at least 1, got {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"retry jitter must be between 0 and 1, got {self.jitter}")
        # A cap below the first wait caps that one too.
        schedule = Exponential(
            min(self.initial_delay_s, self.max_delay_s),
            self.max_delay_s,
            self.multiplier,
            self.jitter,
        )
        object.__setattr__(self, "schedule", schedule)

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1-based)."""
        if retry < 1:
            raise ValueError(f"retry number starts at 1, got {retry}")
        return self.schedule.delay(retry)

    def jittered(self, retry: int, rand: Callable[[], float] = random.random) -> float:
        """`delay(retry)`, shortened by a random part of up to `jitter` of it, so shards
        stalled by the same outage do not all retry at the same instant."""
        return self.schedule.jittered(retry, rand)

    def delays(self) -> list[float]:
        """The waits between the `attempts` tries."""
        return [self.delay(n) for n in range(1, self.attempts)]


class Stopped(Exception):
    """The shard stopped (revoked or fenced) while a batch waited to be retried."""


@dataclass(frozen=True)
class BatchOutcome:
    handled: int
    dead_lettered: int


async def _with_retries(
    what: str,
    call: Callable[[], Awaitable[None]],
    policy: RetryPolicy,
    sleep: Sleep,
    stopped: Callable[[], bool],
    on_transient: OnTransient = _no_report,
) -> BaseException | None:
    """Run `call` until it succeeds or fails deterministically policy.attempts times;
    return the last deterministic error, or None on success. Transient failures are
    waited out (jittered backoff), however long they last."""
    last: BaseException | None = None
    failures = 0  # deterministic
    waits = 0  # transient, in a row
    while True:
        try:
            await call()
        except (Fenced, ShardHalted):
            raise
        except Exception as exc:  # classified below, never swallowed
            if classify(exc) == "transient":
                waits += 1
                on_transient(exc)
                delay = policy.jittered(waits)
                log.warning(
                    "%s: transient failure %d in a row, the shard waits %.1f s and retries "
                    "(nothing is dead-lettered): %s: %s",
                    what,
                    waits,
                    delay,
                    type(exc).__name__,
                    exc,
                )
                await sleep(delay)
                if stopped():
                    raise Stopped(f"{what}: stopped while waiting out: {exc}") from exc
                continue
            waits = 0
            failures += 1
            last = exc
            log.warning(
                "%s: attempt %d/%d failed: %s: %s",
                what,
                failures,
                policy.attempts,
                type(exc).__name__,
                exc,
            )
            if failures >= policy.attempts:
                return last
            await sleep(policy.delay(failures))
            if stopped():
                raise Stopped(f"{what}: stopped while retrying after: {last}") from exc
            continue
        if waits:
            on_transient(None)
        return None


async def dead_letter(
    letter: DeadLetter,
    writer: DeadLetterWriter,
    policy: RetryPolicy,
    sleep: Sleep,
    stopped: Callable[[], bool],
) -> None:
    retry = 0
    while True:
        try:
            await writer.write(letter)
            log.error(
                "%s: dead-lettered after %d attempts: %s",
                letter.describe(),
                letter.attempts,
                letter.error,
            )
            return
        except Exception as exc:
            retry += 1
            log.error(
                "%s: writing to the dead-letter topic failed (try %d), the shard waits: %s: %s",
                letter.describe(),
                retry,
                type(exc).__name__,
                exc,
            )
            await sleep(policy.delay(retry))
            if stopped():
                raise Stopped(
                    f"{letter.describe()}: stopped before it could be dead-lettered"
                ) from exc


async def process_batch(
    batch: Batch,
    handler: Handler,
    policy: RetryPolicy,
    writer: DeadLetterWriter,
    sleep: Sleep = asyncio.sleep,
    stopped: Callable[[], bool] = lambda: False,
    on_transient: OnTransient = _no_report,
) -> BatchOutcome:
    """Get every event of `batch` handled or dead-lettered, in order."""
    if not batch.events:
        return BatchOutcome(0, 0)
    first = batch.events[0]
    what = f"shard {batch.shard} batch of {len(batch.events)} from {first.describe()}"
    error = await _with_retries(
        what, lambda: handler.handle(batch), policy, sleep, stopped, on_transient
    )
    if error is None:
        return BatchOutcome(len(batch.events), 0)
    if len(batch.events) == 1:
        await dead_letter(
            DeadLetter.of(first, error, policy.attempts, handler.name),
            writer,
            policy,
            sleep,
            stopped,
        )
        return BatchOutcome(0, 1)
    # Find the poison: one event at a time, each with its own retries.
    handled = dead = 0
    for event in batch.events:
        one_error = await _with_retries(
            event.describe(), _one(handler, event), policy, sleep, stopped, on_transient
        )
        if one_error is None:
            handled += 1
            continue
        await dead_letter(
            DeadLetter.of(event, one_error, policy.attempts, handler.name),
            writer,
            policy,
            sleep,
            stopped,
        )
        dead += 1
    return BatchOutcome(handled, dead)


def _one(handler: Handler, event: Event) -> Callable[[], Awaitable[None]]:
    return lambda: handler.handle_one(event)
