"""A watch whose create request timed out must never be answered later, onto another watch.

aetcd multiplexes every watch of a connection on one stream and hands each `created`
answer to the watch request that is pending at that moment. When a create times out
(etcd paused or restarting), etcd still answers it later; if another watch request is
pending then, that watch is given the old request's id: it receives the other key's
events, and its own watch is cancelled, so it never sees its own key change. After an
etcd restart this left a coordinator's mirror of the workers blind to a worker's exit.

The client therefore drops the connection after a watch create times out, so a late
answer arrives on a stream that nobody listens to any more. This test pauses the real
etcd (SIGSTOP) to time one create out, starts a second watch while the first answer is
still due, then checks that the second watch gets its own key's event, not the other's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator

import pytest

from shardctl.cli.dev import load_devstack
from shardctl.core.config import Settings
from shardctl.core.etcd import EtcdClient, EtcdUnavailable
from shardctl.core.etcd.client import WatchEvent
from shardctl.core.keyspace import Keyspace

pytestmark = pytest.mark.integration

# Long enough for a resumed etcd to answer the second create, short enough to time out
# the first one quickly while etcd is paused.
CREATE_TIMEOUT_S = 2.0


@contextlib.contextmanager
def etcd_paused() -> Iterator[None]:
    """SIGSTOP the stack's etcd; SIGCONT it on the way out, whatever happened."""
    pid = load_devstack().Stack().pid("etcd")
    assert pid is not None, "the stack's etcd is not running"
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_a_timed_out_watch_create_is_never_answered_onto_the_next_watch(
    settings: Settings,
) -> None:
    keys = Keyspace.of(settings)
    key_a, key_b = f"{keys.root}stale-create/a", f"{keys.root}stale-create/b"
    etcd_settings = settings.etcd.model_copy(update={"timeout_s": CREATE_TIMEOUT_S})

    async def first_event(client: EtcdClient, key: str, start: int) -> WatchEvent:
        async for event in client.watch_events(key, prefix=False, start_revision=start):
            return event
        raise AssertionError(f"the watch of {key} ended without an event")

    async def main() -> WatchEvent:
        async with EtcdClient(etcd_settings) as client:
            try:
                start = (await client.range_of(key_a, prefix=False)).revision + 1
                with etcd_paused():
                    with pytest.raises(EtcdUnavailable):
                        await first_event(client, key_a, start)
                    # The second watch's create is pending (sent, unanswered) when etcd
                    # resumes and answers the first one.
                    second = asyncio.ensure_future(first_event(client, key_b, start))
                    for _ in range(10):
                        await asyncio.sleep(0)
                # Both watches start at `start`, so the writes reach them even if the
                # second create completes after them.
                await client.put(key_a, b"a")
                await client.put(key_b, b"b")
                return await asyncio.wait_for(second, timeout=30)
            finally:
                await client.delete_prefix(keys.root)

    event = asyncio.run(main())
    assert event.kv.key == key_b, (
        f"the watch of {key_b} was handed the event of {event.kv.key}: a late answer to a "
        f"timed-out watch create was matched to it"
    )
    assert event.kv.value == b"b"


def test_a_call_cut_by_another_tasks_reconnect_is_etcd_unavailable(settings: Settings) -> None:
    """Dropping the connection (as after a watch-create timeout) cancels the calls in
    flight on it. Their callers must see EtcdUnavailable, which they retry, and not a
    bare CancelledError: a reader's shard-count check died of one in the chaos soak."""
    keys = Keyspace.of(settings)
    etcd_settings = settings.etcd.model_copy(update={"timeout_s": 30.0})

    async def main() -> BaseException | None:
        async with EtcdClient(etcd_settings) as client:
            await client.get(f"{keys.root}cut")  # connected
            connection = client._client
            with etcd_paused():
                pending = asyncio.ensure_future(client.get(f"{keys.root}cut"))
                for _ in range(10):
                    await asyncio.sleep(0)
                await client._reconnect(failed=connection)
                done, _ = await asyncio.wait([pending], timeout=20)
            assert done, "the cut call did not end"
            return pending.exception() if not pending.cancelled() else asyncio.CancelledError()

    error = asyncio.run(main())
    assert isinstance(error, EtcdUnavailable), repr(error)
