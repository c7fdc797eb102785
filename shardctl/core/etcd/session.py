"""A session: one etcd lease, kept alive on its own thread.

    GRANTING --lease granted--> ALIVE --+--> LOST    (etcd says the lease is gone, or no
                                        |             keepalive was confirmed within the TTL)
                                        +--> CLOSED  (close(): keepalive stopped, lease revoked)

LOST and CLOSED are final: a new lease needs a new Session, so keys written under the
new lease (and tokens derived from them) are always new.

The keepalive runs on a dedicated thread with its own event loop and its own etcd
connection. Work on the caller's loop, even a CPU-bound handler that runs past the
TTL, cannot delay it (short of native code that holds the GIL).

Loss is declared locally, conservatively: the session is LOST once `ttl` seconds
have passed since the *send* time of the last keepalive that etcd confirmed. etcd
cannot expire the lease earlier than that, so a holder that stops at the local
signal stops before anybody else can take its keys over. Observe loss with
`is_lost`, `check()`, `on_lost(callback)` or `await wait_lost()`.

Long-running processes open sessions with `open_session`, which retries while etcd
is unavailable and gives up at once when the process is asked to stop. A session
whose revoke failed (etcd was down when it ended) leaves its lease behind, and etcd
renews every lease when it restarts: its keys would then block others for a full
TTL after etcd returns. `revoke_stale_lease` revokes it through the next session,
retrying with the same `Backoff`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from shardctl.core.aio import wait_any
from shardctl.core.backoff import Backoff
from shardctl.core.config import EtcdSettings
from shardctl.core.etcd.client import EtcdClient, EtcdError, EtcdUnavailable
from shardctl.core.etcd.loop_thread import LoopThread

log = logging.getLogger(__name__)


class SessionLost(EtcdError):
    """The session's lease is gone; everything bound to it is void."""


class Session:
    def __init__(self, settings: EtcdSettings, ttl: int, name: str = "session") -> None:
        if ttl < 2:
            raise ValueError(f"{name}: lease ttl must be at least 2 s, got {ttl}")
        self.settings = settings
        self.ttl = ttl
        self.name = name
        self.lease_id = 0
        self._thread = LoopThread(f"keepalive-{name}")
        self._client: EtcdClient | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._lock = threading.Lock()
        self._lost = threading.Event()
        self._closed = False
        self._reason: str | None = None
        # Monotonic time before which etcd cannot have expired the lease; written by
        # the keepalive thread, read by anyone (a float store is atomic in CPython).
        self._deadline = 0.0
        self._callbacks: list[Callable[[str], None]] = []

    # -- opening -----------------------------------------------------------------

    @classmethod
    async def open(cls, settings: EtcdSettings, ttl: int, name: str = "session") -> Session:
        session = cls(settings, ttl, name)
        try:
            await session._thread.run_async(session._grant())
        except BaseException:
            session._thread.stop()
            raise
        return session

    @classmethod
    def open_blocking(cls, settings: EtcdSettings, ttl: int, name: str = "session") -> Session:
        session = cls(settings, ttl, name)
        try:
            session._thread.run(session._grant())
        except BaseException:
            session._thread.stop()
            raise
        return session

    async def _grant(self) -> None:
        client = await EtcdClient(self.settings).connect()
        sent = time.monotonic()
        try:
            self.lease_id = await client.grant_lease(self.ttl)
        except BaseException:
            await client.close()
            raise
        self._client = client
        self._deadline = sent + self.ttl
        self._keepalive = asyncio.get_running_loop().create_task(self._keep_alive(sent))
        log.info("%s: lease %x granted, ttl %ss", self.name, self.lease_id, self.ttl)

    # -- keepalive ---------------------------------------------------------------

    async def _keep_alive(self, granted_at: float) -> None:
        assert self._client is not None
        interval = self.ttl / 3
        deadline = granted_at + self.ttl
        last_error = "none"
        while True:
            now = time.monotonic()
            if now >= deadline:
                self._declare_lost(
                    f"no keepalive confirmed for {self.ttl}s (last error: {last_error})"
                )
                return
            sent = now
            try:
                granted = await asyncio.wait_for(
                    self._client.refresh_lease(self.lease_id),
                    timeout=max(0.2, min(interval, deadline - now)),
                )
            except (EtcdError, TimeoutError) as exc:
                last_error = str(exc) or type(exc).__name__
                log.warning(
                    "%s: keepalive of lease %x failed: %s", self.name, self.lease_id, last_error
                )
                await asyncio.sleep(max(0.0, min(interval / 3, deadline - time.monotonic())))
                continue
            if granted <= 0:
                self._declare_lost(f"etcd reports lease {self.lease_id:x} expired")
                return
            deadline = sent + granted
            self._deadline = deadline
            await asyncio.sleep(max(0.0, min(interval, deadline - time.monotonic())))

    def _declare_lost(self, reason: str) -> None:
        with self._lock:
            if self._lost.is_set() or self._closed:
                return
            self._reason = reason
            self._lost.set()
            callbacks = list(self._callbacks)
        log.error("%s: lease %x lost: %s", self.name, self.lease_id, reason)
        for callback in callbacks:
            try:
                callback(reason)
            except Exception:
                log.exception("%s: lease-lost callback %r failed", self.name, callback)

    # -- observing ---------------------------------------------------------------

    @property
    def is_lost(self) -> bool:
        return self._lost.is_set()

    @property
    def lost_reason(self) -> str | None:
        return self._reason

    def is_valid(self) -> bool:
        """True while the lease is surely alive. Unlike `is_lost`, this does not wait
        for the keepalive thread to run: after a pause (SIGSTOP, a long GC) it turns
        False the moment the deadline has passed. Check it before each unit of work."""
        return not self._lost.is_set() and not self._closed and time.monotonic() < self._deadline

    @property
    def keepalive_stalled(self) -> bool:
        """True when the lease's deadline passed a whole TTL ago and the keepalive never
        declared it lost: its thread is stuck (health reports the process as not alive)."""
        if self._lost.is_set() or self._closed or not self._deadline:
            return False
        return time.monotonic() > self._deadline + self.ttl

    def check(self) -> None:
        """Raise SessionLost if the lease is gone (or the session closed)."""
        if self._lost.is_set():
            raise SessionLost(f"{self.name}: lease {self.lease_id:x} lost: {self._reason}")
        if self._closed:
            raise SessionLost(f"{self.name}: lease {self.lease_id:x} closed")
        if time.monotonic() >= self._deadline:
            raise SessionLost(f"{self.name}: lease {self.lease_id:x} unconfirmed for {self.ttl}s")

    def on_lost(self, callback: Callable[[str], None]) -> None:
        """Call `callback(reason)` once when the lease is lost (on the keepalive thread,
        or right now if it is already lost). Keep it short and thread-safe."""
        with self._lock:
            if not self._lost.is_set():
                self._callbacks.append(callback)
                return
            reason = self._reason or "lost"
        callback(reason)

    async def wait_lost(self) -> str:
        """Return the reason once the lease is lost. Works from any event loop."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[str] = loop.create_future()

        def settle(reason: str) -> None:
            if not done.done():
                done.set_result(reason)

        def wake(reason: str) -> None:
            loop.call_soon_threadsafe(settle, reason)

        self.on_lost(wake)
        return await done

    # -- closing -----------------------------------------------------------------

    async def _shutdown(self, revoke: bool) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
        client = self._client
        if client is None:
            return
        try:
            # Revoke even a lease we declared lost: if etcd was only unreachable, the
            # lease still exists there and revoking frees its keys at once.
            if revoke and self.lease_id:
                await client.revoke_lease(self.lease_id)
        finally:
            await client.close()

    def close_blocking(self, revoke: bool = True) -> bool:
        """Stop the keepalive and (by default) revoke the lease, deleting its keys.
        False if the revoke failed: the lease then still exists until it expires."""
        with self._lock:
            if self._closed:
                return True
            self._closed = True
        try:
            self._thread.run(self._shutdown(revoke), timeout=self.settings.timeout_s + 1)
            return True
        except (EtcdError, TimeoutError) as exc:
            # The lease then ends by expiry within its TTL, or earlier through
            # revoke_stale_lease; say so, do not hide it.
            log.warning(
                "%s: revoking lease %x failed, it will expire within %ss: %s",
                self.name,
                self.lease_id,
                self.ttl,
                exc,
            )
            return False
        finally:
            self._thread.stop()

    async def close(self, revoke: bool = True) -> bool:
        return await asyncio.get_running_loop().run_in_executor(None, self.close_blocking, revoke)


async def open_session(
    settings: EtcdSettings, ttl: int, name: str, stop: asyncio.Event
) -> Session | None:
    """Open a session, retrying with `Backoff` while etcd is unavailable. None once
    `stop` is set: a pending attempt is cancelled, so a stop request is never held up
    by an etcd that does not answer."""
    backoff = Backoff()
    while not stop.is_set():
        attempt = asyncio.ensure_future(Session.open(settings, ttl, name))
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({attempt, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            await asyncio.gather(stopped, return_exceptions=True)
        if not attempt.done():
            attempt.cancel()
            await asyncio.gather(attempt, return_exceptions=True)
            return None
        try:
            return attempt.result()
        except EtcdUnavailable as exc:
            delay = backoff.next()
            log.warning("%s: cannot open a session yet, retry in %.1fs: %s", name, delay, exc)
            await wait_any([stop], delay)
    return None


async def revoke_stale_lease(
    client: EtcdClient, lease_id: int, session: Session, stop: asyncio.Event
) -> bool:
    """Revoke `lease_id`, left by an earlier session whose own revoke failed, now that
    `session` shows etcd answers again. Retries with `Backoff` while etcd is
    unavailable, as long as `session` is valid and `stop` is not set; True once the
    lease is gone (a lease that already expired counts)."""
    backoff = Backoff()
    while not stop.is_set() and session.is_valid():
        try:
            await client.revoke_lease(lease_id)
        except EtcdUnavailable as exc:
            delay = backoff.next()
            log.warning(
                "%s: revoking lease %x of the previous session failed, retry in %.1fs: %s",
                session.name,
                lease_id,
                delay,
                exc,
            )
            await wait_any([stop], delay)
            continue
        except EtcdError as exc:
            log.error(
                "%s: revoking lease %x of the previous session failed; it expires within "
                "its TTL: %s",
                session.name,
                lease_id,
                exc,
            )
            return False
        log.info("%s: revoked lease %x of the previous session", session.name, lease_id)
        return True
    return False
