"""The etcd client: the only module of shardctl that imports aetcd.

`EtcdClient` wraps one aetcd connection. Keys are `str`, values `bytes`. Every aetcd
error becomes an `EtcdError` subclass that names the operation and the key:

    EtcdUnavailable     etcd could not be reached or timed out; safe to retry later
    RevisionCompacted   a watch asked for history that etcd compacted away
    EtcdError           anything else

Transactions are expressed with the small op model below (`Put`, `Delete`, and the
guards `CreateRevisionIs`, `ValueIs`, `Absent`), and `txn` reports whether the guards
held. `create_if_absent` is "create owners/<s> only if absent"; "write only while the
fencing key still has the token's create_revision" is `shardctl.core.etcd.fence.Fence`.

An aetcd client is bound to the event loop it first connected on; use one
`EtcdClient` per loop (the lease keepalive thread opens its own).

Security: with `etcd.tls.ca_file` set the channel is TLS (server verified against that
CA; `etcd.tls.cert_file`/`key_file` add a client certificate), and with
`etcd.username`/`etcd.password` every connection authenticates and sends its token.
aetcd 1.0 builds its channel inside `connect()` with no way to pass credentials, so
`_TLSClient` overrides just that method; everything else is aetcd's. Passwords
never appear in errors or logs: a refused login raises `EtcdAuthError` naming the
settings and the endpoint.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aetcd
import aetcd.exceptions
import aetcd.rpc
import aetcd.watcher

# grpcio ships no type stubs.
import grpc
import grpc.aio

from shardctl.core.config import EtcdSettings, TLSSettings

T = TypeVar("T")
log = logging.getLogger(__name__)

# gRPC reconnects with exponential backoff up to 120 s by default, which would keep
# a worker blind long after etcd is back. Cap it, and ping idle connections so a
# dead peer is noticed (etcd accepts pings every 5 s or slower by default).
_CHANNEL_OPTIONS: dict[str, Any] = {
    "grpc.initial_reconnect_backoff_ms": 200,
    "grpc.min_reconnect_backoff_ms": 200,
    "grpc.max_reconnect_backoff_ms": 1000,
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
}


class EtcdError(Exception):
    """An etcd operation failed; the message names the operation and the key."""


class EtcdUnavailable(EtcdError):
    """etcd did not answer (down, restarting, or past the request deadline)."""


class EtcdAuthError(EtcdError):
    """etcd refused the credentials (etcd.username / etcd.password) or the TLS setup."""


class RevisionCompacted(EtcdError):
    """The requested revision is compacted; list the keys again, then watch."""

    def __init__(self, message: str, compacted_revision: int) -> None:
        super().__init__(message)
        self.compacted_revision = compacted_revision


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass(frozen=True)
class Listing:
    """Keys under a prefix, read at one store revision."""

    items: list[KeyValue]
    revision: int


@dataclass(frozen=True)
class WatchEvent:
    """One change. For a delete, `kv.value` is empty and `kv.mod_revision` is the delete's."""

    kind: str  # "put" or "delete"
    kv: KeyValue


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True)
class Delete:
    key: str


@dataclass(frozen=True)
class CreateRevisionIs:
    """Guard: `key` exists with this create_revision (a fencing token)."""

    key: str
    create_revision: int


@dataclass(frozen=True)
class ValueIs:
    key: str
    value: bytes


@dataclass(frozen=True)
class Absent:
    key: str


@dataclass(frozen=True)
class ModRevisionIs:
    key: str
    mod_revision: int


Op = Put | Delete
Guard = CreateRevisionIs | ValueIs | Absent | ModRevisionIs


@dataclass(frozen=True)
class CreateResult:
    """`created` tells whether this call created the key; `kv` is the key as it is now."""

    created: bool
    kv: KeyValue


def _kv(raw: Any) -> KeyValue:
    return KeyValue(
        key=bytes(raw.key).decode(),
        value=bytes(raw.value),
        create_revision=int(raw.create_revision),
        mod_revision=int(raw.mod_revision),
        version=int(raw.version),
        lease=int(raw.lease),
    )


def _prefix_end(prefix: bytes) -> bytes:
    return aetcd.utils.prefix_range_end(prefix)  # type: ignore[no-any-return]


def _read_tls_file(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise EtcdError(f"{setting}: cannot read {path}: {exc.strerror}") from exc


def channel_credentials(tls: TLSSettings) -> grpc.ChannelCredentials:
    """gRPC TLS credentials from `etcd.tls.*`: the CA that signs etcd's certificate, and
    optionally the client certificate and key (for etcd's --client-cert-auth)."""
    ca = _read_tls_file(tls.ca_file, "etcd.tls.ca_file") if tls.ca_file else None
    cert = _read_tls_file(tls.cert_file, "etcd.tls.cert_file") if tls.cert_file else None
    key = _read_tls_file(tls.key_file, "etcd.tls.key_file") if tls.key_file else None
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


class _TLSClient(aetcd.Client):  # type: ignore[misc]
    """aetcd.Client over a TLS channel.

    aetcd 1.0's `connect()` hard-codes `grpc.aio.insecure_channel` and offers no
    credentials hook, so this override repeats its short setup (channel, optional
    Authenticate, stubs, watcher) with `grpc.aio.secure_channel`. Every request method
    is aetcd's own and calls this `connect()` first. Errors are mapped by aetcd's own
    table, so callers see the same exception types as on a plaintext channel.
    """

    _is_connecting: bool  # set by aetcd.Client.__init__

    def __init__(self, credentials: grpc.ChannelCredentials, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._credentials = credentials

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        if self._is_connecting:
            # Another task is connecting this client: wait for it, as aetcd does.
            await asyncio.wait_for(self._connected.wait(), self._connect_wait_timeout)
            return
        self._is_connecting = True
        try:
            self.channel = grpc.aio.secure_channel(
                f"{self._host}:{self._port}", self._credentials, options=list(self._options.items())
            )
            if self._username is not None and self._password is not None:
                self.auth_stub = aetcd.rpc.AuthStub(self.channel)
                request = aetcd.rpc.AuthenticateRequest(
                    name=self._username, password=self._password
                )
                reply = await self.auth_stub.Authenticate(request, timeout=self._timeout)
                self.metadata = (("token", reply.token),)
            self.kvstub = aetcd.rpc.KVStub(self.channel)
            self.clusterstub = aetcd.rpc.ClusterStub(self.channel)
            self.leasestub = aetcd.rpc.LeaseStub(self.channel)
            self.maintenancestub = aetcd.rpc.MaintenanceStub(self.channel)
            self._watcher = aetcd.watcher.Watcher(
                aetcd.rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata
            )
            self._connected.set()
        except grpc.aio.AioRpcError as exc:
            aetcd.exceptions._handle_exception(exc)
        finally:
            self._is_connecting = False


async def _close_quietly(client: aetcd.Client, why: str) -> None:
    """Close a connection we are done with; a failure here only matters as a log line."""
    try:
        await client.close()
    except aetcd.ClientError as exc:
        log.warning("etcd %s: closing the old connection failed: %s", why, exc)


class EtcdClient:
    """One connection to etcd, made from `EtcdSettings` (endpoints, user/password, timeout)."""

    def __init__(self, settings: EtcdSettings) -> None:
        self._settings = settings
        self._endpoints = settings.endpoint_list()
        self._endpoint_index = 0
        # Read the TLS files once, up front: a bad path fails here, naming the setting.
        self._credentials = channel_credentials(settings.tls) if settings.tls.enabled else None
        self._client: aetcd.Client | None = None
        self._lock = asyncio.Lock()

    @property
    def endpoint(self) -> str:
        host, port = self._endpoints[self._endpoint_index]
        return f"{host}:{port}"

    def _build(self) -> aetcd.Client:
        """The one place a connection is constructed: plaintext, or TLS with etcd.tls.*."""
        host, port = self._endpoints[self._endpoint_index]
        password = self._settings.password
        kwargs: dict[str, Any] = {
            "host": host,
            "port": port,
            "username": self._settings.username,
            "password": password.get_secret_value() if password is not None else None,
            "timeout": self._settings.timeout_s,
            "options": _CHANNEL_OPTIONS,
        }
        if self._credentials is not None:
            return _TLSClient(self._credentials, **kwargs)
        return aetcd.Client(**kwargs)

    def _auth_error(self, op: str, key: str, exc: Exception) -> EtcdAuthError:
        # The server's reason never contains the password; the username is not secret.
        source = (
            "etcd.password_file" if self._settings.password_file is not None else "etcd.password"
        )
        what = op if key == self.endpoint else f"{op} {key}"
        return EtcdAuthError(
            f"etcd {what} at {self.endpoint}: etcd refused the login of "
            f"etcd.username={self._settings.username!r} (check {source}): {exc}"
        )

    def _tls_hint(self) -> str:
        if self._credentials is None:
            return ""
        return (
            f" (TLS: check etcd.tls.ca_file={self._settings.tls.ca_file} signs the "
            f"server certificate for {self.endpoint})"
        )

    async def connect(self) -> EtcdClient:
        async with self._lock:
            if self._client is None:
                self._client = self._build()
        await self._call("connect", self.endpoint, lambda c: c.connect())
        return self

    async def close(self) -> None:
        async with self._lock:
            client, self._client = self._client, None
        if client is not None:
            await _close_quietly(client, "close")

    async def __aenter__(self) -> EtcdClient:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _reconnect(self, failed: aetcd.Client | None = None) -> None:
        """Drop the channel; the next call builds a new one (and authenticates again).

        With `failed`, only if that is still the current connection: several tasks
        that saw one connection fail must not close each other's fresh one."""
        async with self._lock:
            if failed is not None and self._client is not failed:
                return
            old, self._client = self._client, None
            # Rotate endpoints so a dead member is not retried forever.
            self._endpoint_index = (self._endpoint_index + 1) % len(self._endpoints)
            self._client = self._build()
        if old is not None:
            await _close_quietly(old, "reconnect")

    async def _call(self, op: str, key: str, fn: Callable[[aetcd.Client], Awaitable[T]]) -> T:
        """Run one aetcd call; translate its errors into ours, naming `op` and `key`."""
        for attempt in (1, 2):
            client = self._client
            if client is None:
                raise EtcdError(f"etcd {op} {key}: client is closed")
            try:
                return await fn(client)
            except aetcd.exceptions.UnauthenticatedError as exc:
                # Auth tokens expire and do not survive an etcd restart: authenticate
                # again once. The request was rejected, so repeating it is safe.
                if attempt == 1:
                    await self._reconnect()
                    continue
                raise self._auth_error(op, key, exc) from exc
            except aetcd.exceptions.InvalidArgumentError as exc:
                # A refused Authenticate comes back as INVALID_ARGUMENT.
                if "authentication failed" in str(exc):
                    raise self._auth_error(op, key, exc) from exc
                raise EtcdError(f"etcd {op} {key} at {self.endpoint}: {exc}") from exc
            except aetcd.RevisionCompactedError as exc:
                raise RevisionCompacted(
                    f"etcd {op} {key}: revision compacted below {exc.compacted_revision}",
                    int(exc.compacted_revision),
                ) from exc
            except (aetcd.ConnectionFailedError, aetcd.ConnectionTimeoutError) as exc:
                if len(self._endpoints) > 1:
                    await self._reconnect()
                raise EtcdUnavailable(
                    f"etcd {op} {key} at {self.endpoint}: {exc}{self._tls_hint()}"
                ) from exc
            except (TimeoutError, aetcd.WatchTimeoutError) as exc:
                raise EtcdUnavailable(
                    f"etcd {op} {key} at {self.endpoint}: no answer within "
                    f"etcd.timeout_s={self._settings.timeout_s}"
                ) from exc
            except aetcd.ClientError as exc:
                raise EtcdError(f"etcd {op} {key} at {self.endpoint}: {exc}") from exc
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # this task is being cancelled: let it end
                # The connection was closed under the call (another task reconnected
                # after a timeout): etcd did not answer it, as when etcd is down.
                raise EtcdUnavailable(
                    f"etcd {op} {key} at {self.endpoint}: the connection was closed during the call"
                ) from None
        raise AssertionError("unreachable")

    # -- key/value ---------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        got = await self._call("get", key, lambda c: c.get(key.encode()))
        return None if got is None else _kv(got)

    async def get_prefix(self, prefix: str) -> Listing:
        return await self.range_of(prefix, prefix=True)

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Put unconditionally; returns the store revision of the write."""
        res = await self._call("put", key, lambda c: c.put(key.encode(), value, lease=lease))
        return int(res.header.revision)

    async def delete(self, key: str) -> bool:
        res = await self._call("delete", key, lambda c: c.delete(key.encode()))
        return res is not None

    async def range_of(self, key: str, *, prefix: bool) -> Listing:
        """The keys under `key` (prefix=True) or the key itself, with the read revision."""
        raw = key.encode()
        end = _prefix_end(raw) if prefix else raw + b"\0"
        rng = await self._call("range", key, lambda c: c.get_range(raw, end, sort_order="ascend"))
        return Listing(items=[_kv(kv) for kv in rng.kvs], revision=int(rng.header.revision))

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key under `prefix`; returns how many were deleted."""
        if not prefix.endswith("/"):
            raise EtcdError(f"etcd delete-prefix {prefix}: refusing a prefix without '/'")
        raw = prefix.encode()
        res = await self._call(
            "delete-prefix", prefix, lambda c: c.delete_range(raw, _prefix_end(raw))
        )
        return int(res.deleted)

    async def compact(self, revision: int | None = None) -> int:
        """Compact history up to `revision` (default: the current one); returns it.
        Watches behind it must list again (shardctl.core.etcd.watch does)."""
        if revision is None:
            revision = (await self.range_of("\0", prefix=False)).revision
        target = revision
        await self._call("compact", f"revision={target}", lambda c: c.compact(target))
        return target

    # -- transactions ------------------------------------------------------------

    def _compare(self, c: aetcd.Client, guard: Guard) -> Any:
        t = c.transactions
        if isinstance(guard, CreateRevisionIs):
            return t.create(guard.key.encode()) == guard.create_revision
        if isinstance(guard, Absent):
            return t.create(guard.key.encode()) == 0
        if isinstance(guard, ModRevisionIs):
            return t.mod(guard.key.encode()) == guard.mod_revision
        return t.value(guard.key.encode()) == guard.value

    def _op(self, c: aetcd.Client, op: Op) -> Any:
        t = c.transactions
        if isinstance(op, Put):
            return t.put(op.key.encode(), op.value, lease=op.lease)
        return t.delete(op.key.encode())

    async def txn(
        self,
        guards: Sequence[Guard],
        ops: Sequence[Op],
        read_back: Sequence[str] = (),
    ) -> tuple[bool, dict[str, KeyValue | None]]:
        """Apply `ops` atomically if every guard holds.

        Returns (succeeded, keys of `read_back` as they are after the txn, whichever
        branch ran). Reading back inside the txn is how a caller learns the
        create_revision it just made, without a race.
        """
        where = ops[0].key if ops else (guards[0].key if guards else "")

        async def run(c: aetcd.Client) -> tuple[bool, list[Any]]:
            reads = [c.transactions.get(k.encode()) for k in read_back]
            result: tuple[bool, list[Any]] = await c.transaction(
                compare=[self._compare(c, g) for g in guards],
                success=[self._op(c, o) for o in ops] + reads,
                failure=list(reads),
            )
            return result

        ok, responses = await self._call("txn", where, run)
        # Range responses come back as lists of (value, Get); puts/deletes as raw ops.
        ranges = [r for r in responses if isinstance(r, list)]
        found: dict[str, KeyValue | None] = {}
        for key, rng in zip(read_back, ranges, strict=True):
            found[key] = _kv(rng[0][1]) if rng else None
        return bool(ok), found

    async def create_if_absent(self, key: str, value: bytes, lease: int = 0) -> CreateResult:
        """Create `key` only if it does not exist. Either way, return the key as it is."""
        ok, found = await self.txn([Absent(key)], [Put(key, value, lease)], read_back=[key])
        kv = found[key]
        if kv is None:
            # Present at the compare, gone by the read in the same txn: impossible.
            raise EtcdError(f"etcd create_if_absent {key}: key missing right after the txn")
        return CreateResult(created=ok, kv=kv)

    # -- leases ------------------------------------------------------------------

    async def grant_lease(self, ttl: int) -> int:
        lease = await self._call("lease-grant", f"ttl={ttl}", lambda c: c.lease(ttl))
        return int(lease.id)

    async def refresh_lease(self, lease_id: int) -> int:
        """Send one keepalive; returns the TTL etcd granted, 0 if the lease is gone."""
        reply = await self._call(
            "lease-keepalive", f"lease={lease_id:x}", lambda c: c.refresh_lease(lease_id)
        )
        return 0 if reply is None else int(reply.TTL)

    async def revoke_lease(self, lease_id: int) -> None:
        """Revoke; a lease that already expired counts as revoked."""
        try:
            await self._call(
                "lease-revoke", f"lease={lease_id:x}", lambda c: c.revoke_lease(lease_id)
            )
        except EtcdError as exc:
            if "lease not found" not in str(exc):
                raise

    async def lease_ttl(self, lease_id: int) -> int:
        """Seconds left on a lease as etcd sees it; -1 once it is gone (expired or revoked)."""
        reply = await self._call(
            "lease-timetolive",
            f"lease={lease_id:x}",
            lambda c: c.get_lease_info(lease_id, keys=False),
        )
        return int(reply.TTL)

    # -- watch -------------------------------------------------------------------

    async def watch_events(
        self, key: str, *, prefix: bool, start_revision: int
    ) -> AsyncGenerator[WatchEvent, None]:
        """Raw watch from `start_revision` (inclusive). It ends with an EtcdError when
        the stream breaks; `shardctl.core.etcd.watch` resumes it."""
        raw = key.encode()
        range_end = _prefix_end(raw) if prefix else None
        connection = self._client
        try:
            stream = await self._call(
                "watch",
                key,
                lambda c: c.watch(raw, range_end=range_end, start_revision=start_revision),
            )
        except EtcdUnavailable:
            # aetcd multiplexes a connection's watches on one stream and gives each
            # `created` answer to the watch request pending at that moment. etcd still
            # answers a create that timed out here, later, possibly while another watch
            # waits for its own answer: that watch would get this key's events and lose
            # its own. Dropping the connection sends the late answer nowhere.
            await self._reconnect(failed=connection)
            raise
        iterator = stream.__aiter__()
        try:
            while True:
                try:
                    event = await self._call("watch", key, lambda _c: iterator.__anext__())
                except StopAsyncIteration:
                    return
                kind = "put" if event.kind == "PUT" else "delete"
                yield WatchEvent(kind=kind, kv=_kv(event.kv))
        finally:
            try:
                await stream.cancel()
            except aetcd.ClientError as exc:
                # The stream is already gone (etcd down); nothing is left to cancel.
                log.debug("etcd watch %s: cancel after the stream ended: %s", key, exc)
