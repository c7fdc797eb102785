"""Watches that survive etcd restarts and compactions.

`watch_updates(client, key, prefix=...)` lists the keys, then watches from the
listing's revision + 1, and keeps going across failures:

    LISTING --listed--> WATCHING --stream broke (etcd down/restarted)--> BACKOFF
       ^                   |                                                |
       |                   +--revision compacted--+                        |
       +------------------------------------------+     resume from last revision
                                                        seen (events already
                                                        delivered are skipped)

While etcd is down, retries back off from 0.2 s to 1 s: no busy loop. A stream
that delivered nothing for `WATCH_IDLE_S` is made again from the last revision
seen, so a stream that went silent without an error costs at most that long. After a
compaction the keys are listed again and the consumer gets a reset (`reset=True`
with the full listing), so it never misses a deletion.

An event for a key outside the watched key or prefix means the client delivered
another watch's event to this one. aetcd does that when a watch create timed out and
its late answer reached the next pending create; `EtcdClient.watch_events` drops the
connection after such a timeout to prevent it, and this check stays as the backstop:
the stream can no longer be trusted to carry every event of ours, so the keys are
listed again, as after a compaction, and the watch starts over.

`Mirror` keeps a local dict of the keys from these updates and sets `changed` after
each one; `watch_key` yields one key's value (None when absent) on every change.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field

from shardctl.core.backoff import WATCH_RETRY, Backoff
from shardctl.core.etcd.client import (
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    KeyValue,
    RevisionCompacted,
    WatchEvent,
)

log = logging.getLogger(__name__)

# A watch that delivered nothing for this long is made again from its revision: a
# chaos run saw a worker's watch made while etcd restarted stay silent for good (it
# missed the assignment that gave it a dead worker's shard). A new watch from the
# revision replays whatever the silent one missed; a quiet key costs one watch
# creation per interval.
WATCH_IDLE_S = 20.0


@dataclass(frozen=True)
class WatchUpdate:
    """Either a full listing (`reset`) or one event on top of what came before."""

    reset: bool
    revision: int
    items: list[KeyValue] = field(default_factory=list)
    event: WatchEvent | None = None


async def watch_updates(
    client: EtcdClient, key: str, *, prefix: bool, idle_s: float = WATCH_IDLE_S
) -> AsyncGenerator[WatchUpdate, None]:
    revision = 0
    seen_at_revision: set[str] = set()
    listed = False
    backoff = Backoff(WATCH_RETRY)
    while True:
        try:
            if not listed:
                listing = await client.range_of(key, prefix=prefix)
                revision, seen_at_revision, listed = listing.revision, set(), True
                yield WatchUpdate(reset=True, revision=revision, items=listing.items)
            # Resume at the last revision seen if we saw part of it (one txn may have
            # touched several keys), skipping the events already delivered.
            start = revision if seen_at_revision else revision + 1
            events = client.watch_events(key, prefix=prefix, start_revision=start)
            while True:
                try:
                    # In this task, not a task of its own: a cancelled watcher then ends
                    # the stream as it always did.
                    async with asyncio.timeout(idle_s):
                        event = await anext(events)
                except TimeoutError:
                    break  # quiet for idle_s (the stream is closed): watch again
                except StopAsyncIteration:
                    # The server ended the stream without an error: not too fast.
                    await asyncio.sleep(WATCH_RETRY.initial_s)
                    break
                backoff.reset()
                if not _watched(event.kv.key, key, prefix):
                    raise _ForeignEvent(
                        f"an event for {event.kv.key} arrived on the watch of {key}"
                    )
                rev = event.kv.mod_revision
                if rev < revision or (rev == revision and event.kv.key in seen_at_revision):
                    continue
                if rev > revision:
                    revision, seen_at_revision = rev, set()
                seen_at_revision.add(event.kv.key)
                yield WatchUpdate(reset=False, revision=revision, event=event)
        except (RevisionCompacted, _ForeignEvent) as exc:
            log.warning("watch %s: %s; listing again", key, exc)
            listed = False
        except EtcdUnavailable as exc:
            delay = backoff.next()
            log.warning("watch %s: etcd unavailable, retry in %.1fs: %s", key, delay, exc)
            await asyncio.sleep(delay)
        except EtcdError as exc:
            # Any other broken stream (reset, cancelled by the server): a watch must
            # outlive it, so say what happened and resume like after an outage.
            delay = backoff.next()
            log.error("watch %s: stream failed, retry in %.1fs: %s", key, delay, exc)
            await asyncio.sleep(delay)


class _ForeignEvent(Exception):
    """The client delivered an event of another watch to this one."""


def _watched(event_key: str, key: str, prefix: bool) -> bool:
    return event_key.startswith(key) if prefix else event_key == key


async def watch_key(client: EtcdClient, key: str) -> AsyncIterator[KeyValue | None]:
    """The key's current value first, then again after every change (None = absent)."""
    async for update in watch_updates(client, key, prefix=False):
        if update.reset:
            yield update.items[0] if update.items else None
        elif update.event is not None:
            yield update.event.kv if update.event.kind == "put" else None


class Mirror:
    """A local copy of the keys under a prefix (or of one key), kept current.

    `items` maps key -> KeyValue. `ready` is set after the first listing; `changed`
    is set after every update (clear it before reading `items` to coalesce bursts).
    """

    def __init__(self, client: EtcdClient, key: str, *, prefix: bool = True) -> None:
        self.client = client
        self.key = key
        self.prefix = prefix
        self.items: dict[str, KeyValue] = {}
        self.revision = 0
        self.ready = asyncio.Event()
        self.changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Mirror:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def check(self) -> None:
        """Raise if the mirror stopped on an error: its view would be stale forever."""
        task = self._task
        if task is not None and task.done() and not task.cancelled():
            error = task.exception()
            raise RuntimeError(f"mirror of {self.key} stopped: {error!r}") from error

    async def _run(self) -> None:
        async for update in watch_updates(self.client, self.key, prefix=self.prefix):
            if update.reset:
                self.items = {kv.key: kv for kv in update.items}
            elif update.event is not None:
                if update.event.kind == "put":
                    self.items[update.event.kv.key] = update.event.kv
                else:
                    self.items.pop(update.event.kv.key, None)
            self.revision = update.revision
            self.ready.set()
            self.changed.set()
