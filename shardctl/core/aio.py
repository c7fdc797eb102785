"""Small asyncio helpers shared by the long-running processes."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable


async def wait_any(events: list[asyncio.Event], timeout: float | None) -> None:
    """Return when any of `events` is set, or when `timeout` passes."""
    if any(e.is_set() for e in events):
        return
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


def threadsafe_event(subscribe: Callable[[Callable[[str], None]], None]) -> asyncio.Event:
    """An asyncio.Event of the running loop, set when `subscribe`'s callback fires on
    any thread (e.g. `threadsafe_event(session.on_lost)`)."""
    loop = asyncio.get_running_loop()
    event = asyncio.Event()

    def fire(_reason: str) -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(event.set)

    subscribe(fire)
    return event


def install_stop_signals(on_first: Callable[[], None], on_second: Callable[[], None]) -> None:
    """SIGTERM/SIGINT: the first asks for a graceful stop, the second for an immediate one."""
    loop = asyncio.get_running_loop()
    seen = {"count": 0}

    def handle() -> None:
        seen["count"] += 1
        (on_first if seen["count"] == 1 else on_second)()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, handle)
