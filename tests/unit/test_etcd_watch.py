"""Which events a watch accepts as its own (anything else makes it list again), and
a watch stream that goes silent is made again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from shardctl.core.etcd.client import WatchEvent
from shardctl.core.etcd.watch import WatchUpdate, _watched, watch_updates
from tests.stub_etcd import MemoryEtcd


def test_a_prefix_watch_accepts_only_keys_under_its_prefix() -> None:
    assert _watched("/s/c/workers/w1", "/s/c/workers/", prefix=True)
    assert not _watched("/s/c/coordinator/leader", "/s/c/workers/", prefix=True)
    assert not _watched("/s/c/workers", "/s/c/workers/", prefix=True)


def test_a_key_watch_accepts_only_its_key() -> None:
    assert _watched("/s/c/coordinator/leader", "/s/c/coordinator/leader", prefix=False)
    assert not _watched("/s/c/coordinator/leader2", "/s/c/coordinator/leader", prefix=False)


class SilentFirstWatch(MemoryEtcd):
    """etcd whose first watch stream is made and then delivers nothing, ever: what a
    chaos run saw of a worker's watch made while etcd restarted."""

    def __init__(self) -> None:
        super().__init__()
        self.watches_made = 0

    async def watch_events(
        self, key: str, *, prefix: bool, start_revision: int
    ) -> AsyncGenerator[WatchEvent, None]:
        self.watches_made += 1
        if self.watches_made == 1:
            await asyncio.Event().wait()
        async for event in super().watch_events(key, prefix=prefix, start_revision=start_revision):
            yield event


def test_a_watch_that_went_silent_is_made_again_and_misses_nothing() -> None:
    etcd = SilentFirstWatch()

    async def scenario() -> list[WatchUpdate]:
        updates = watch_updates(etcd, "/s/c/assignment", prefix=False, idle_s=0.05)  # type: ignore[arg-type]
        got = [await anext(updates)]  # the listing
        await etcd.put("/s/c/assignment", b"generation 6")
        # Bounded only so that a regression fails instead of hanging the suite.
        got.append(await asyncio.wait_for(anext(updates), 60))
        await updates.aclose()
        return got

    listing, change = asyncio.run(scenario())
    assert listing.reset and listing.items == []
    assert change.event is not None and change.event.kv.value == b"generation 6"
    assert etcd.watches_made >= 2
