"""Waiting for a condition in tests: a liveness bound, generous on purpose.

A timeout here means "it never happened", not "it was slow"; speed is measured in
bench/, never asserted in tests. The default allows for a process that starts
(imports, an etcd session, a server query) on a machine whose cores are all busy:
`make flake-hunt` runs the suite beside a CPU burner, and a 30 s bound failed there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(what: str, predicate: Callable[[], T | None], timeout: float = 90.0) -> T:
    """Poll until `predicate` returns something truthy and return it; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


async def wait_async(what: str, predicate: Callable[[], T | None], timeout: float = 90.0) -> T:
    """`wait_for` without blocking the event loop."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
