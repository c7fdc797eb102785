"""Waiting for a condition in tests: a liveness bound, generous on purpose.

A timeout here means "it never happened", not "it was slow"; speed is measured in
bench/, never asserted in tests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(what: str, predicate: Callable[[], T | None], timeout: float = 30.0) -> T:
    """Poll until `predicate` returns something truthy and return it; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


async def wait_async(what: str, predicate: Callable[[], T | None], timeout: float = 30.0) -> T:
    """`wait_for` without blocking the event loop."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
