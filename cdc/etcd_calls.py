"""Blocking etcd calls of the reader, retried while etcd is briefly unreachable.

etcd restarts and leader changes make calls fail with EtcdUnavailable for a few
seconds. The reader's etcd work (reading its checkpoint, bootstrap requests)
waits that out with backoff up to a deadline; guard failures (NotLeader) are
never retried.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from shardctl.core.backoff import Backoff
from shardctl.core.etcd.client import EtcdUnavailable
from shardctl.core.etcd.loop_thread import LoopThread

T = TypeVar("T")

log = logging.getLogger(__name__)


def call_with_retry(
    loop: LoopThread,
    make: Callable[[], Coroutine[Any, Any, T]],
    what: str,
    deadline_s: float = 30.0,
    timeout_s: float = 6.0,
) -> T:
    """Run `make()` on `loop`; retry EtcdUnavailable and timeouts until `deadline_s`."""
    end = time.monotonic() + deadline_s
    backoff = Backoff()
    while True:
        try:
            return loop.run(make(), timeout=timeout_s)
        except (EtcdUnavailable, TimeoutError) as exc:
            delay = backoff.next()
            if time.monotonic() + delay > end:
                raise EtcdUnavailable(
                    f"{what}: etcd unreachable for {deadline_s:.0f}s: {exc}"
                ) from exc
            log.warning("%s: etcd unreachable, retrying in %.1fs: %s", what, delay, exc)
            time.sleep(delay)
