"""Worker membership: the `workers/<id>` record, bound to the worker's lease.

    UNREGISTERED --register(session)--> ACTIVE --drain--> DRAINING
         ^                                  |                 |
         +---------- lease lost ------------+-----------------+

The record lives exactly as long as the lease. Worker ids are unique: a worker
that finds its id registered under a foreign lease at start waits for that record
to expire (a previous incarnation of itself, killed); if its own record is later
replaced by another process, it stops with WorkerIdInUse. After a lease loss the worker
registers again under a new session: to the coordinator it is a new member, and
every shard it acquires afterwards carries a new token.

Draining can be requested from outside (`shardctl drain <id>`): `request_drain`
rewrites the record with state "draining", keeping the worker's lease, and only if
the record did not change in between. The worker watches its own record, sees the
request, and keeps the state across re-registrations.

`request_undrain` (`shardctl undrain <id>`) flips the state back to "active" the same
way. A worker still draining sees a record it did not write (a newer mod_revision
than its own last write) with state "active", and serves again: the drain timeout is
cancelled and the coordinator assigns it shards. A worker that drains because it was
told to stop (SIGTERM) keeps stopping and writes "draining" back.
"""

from __future__ import annotations

import os
import socket
from typing import Literal

from shardctl.core.etcd import EtcdClient, EtcdError, KeyValue, ModRevisionIs, Put, Session
from shardctl.core.keyspace import Keyspace
from shardctl.core.records import RecordError, WorkerRecord


class Membership:
    def __init__(
        self,
        client: EtcdClient,
        keys: Keyspace,
        worker_id: str,
        capacity: int,
        labels: dict[str, str],
        restart_grace_s: float = 0.0,
    ) -> None:
        self.client = client
        self.keys = keys
        self.worker_id = worker_id
        self.capacity = capacity
        self.labels = dict(labels)
        self.restart_grace_s = restart_grace_s
        self.draining = False
        self.key = keys.worker(worker_id)
        self.leases: set[int] = set()  # every lease this process registered under
        self.revision = 0  # mod_revision of our own last write of the record

    def record(self, session: Session) -> WorkerRecord:
        return WorkerRecord(
            host=socket.gethostname(),
            pid=os.getpid(),
            capacity=self.capacity,
            labels=self.labels,
            restart_grace=self.restart_grace_s,
            state="draining" if self.draining else "active",
            session=f"{session.lease_id:x}",
        )

    async def register(self, session: Session) -> None:
        """Write `workers/<id>` under the session's lease (a put: it replaces any record
        left by an earlier session of this worker)."""
        session.check()
        self.leases.add(session.lease_id)
        self.revision = await self.client.put(
            self.key, self.record(session).encode(), lease=session.lease_id
        )

    def describe(self, raw: bytes) -> str:
        """Who a worker record belongs to, for error messages."""
        try:
            record: WorkerRecord = WorkerRecord.decode(self.key, raw)
        except RecordError as exc:
            return f"an unreadable record ({exc})"
        return f"host {record.host} pid {record.pid} (session {record.session})"

    async def set_draining(self, session: Session) -> None:
        self.draining = True
        await self.register(session)

    def drain_requested(self, raw: bytes) -> bool:
        """Whether our record (as seen by a watch) asks us to drain."""
        record: WorkerRecord = WorkerRecord.decode(self.key, raw)
        return record.state == "draining"

    def undrain_requested(self, kv: KeyValue) -> bool:
        """Whether our record (as seen by a watch), written by someone else after our
        own last write, cancels our drain."""
        if not self.draining or kv.mod_revision <= self.revision:
            return False
        record: WorkerRecord = WorkerRecord.decode(self.key, kv.value)
        return record.state == "active"


class WorkerIdInUse(EtcdError):
    """Another live process registered the same worker id."""


class WorkerNotFound(EtcdError):
    """No worker is registered under the given id."""


async def request_drain(client: EtcdClient, keys: Keyspace, worker_id: str) -> bool:
    """Mark a running worker as draining. Returns False if it already was."""
    return await _set_state(client, keys, worker_id, "drain", "draining")


async def request_undrain(client: EtcdClient, keys: Keyspace, worker_id: str) -> bool:
    """Cancel the drain of a running worker. Returns False if it was not draining."""
    return await _set_state(client, keys, worker_id, "undrain", "active")


async def _set_state(
    client: EtcdClient,
    keys: Keyspace,
    worker_id: str,
    verb: str,
    state: Literal["active", "draining"],
) -> bool:
    """Move the worker record to `state`, guarded by its mod_revision (the worker may
    rewrite it meanwhile). Returns False if the move does not apply: a drain of a
    draining worker, an undrain of one that is not draining."""
    key = keys.worker(worker_id)
    for _attempt in range(5):
        kv = await client.get(key)
        if kv is None:
            raise WorkerNotFound(f"{verb} {worker_id}: no worker registered at {key}")
        record: WorkerRecord = WorkerRecord.decode(key, kv.value)
        if (record.state == "draining") == (state == "draining"):
            return False
        moved = record.model_copy(update={"state": state})
        ok, _ = await client.txn(
            [ModRevisionIs(key, kv.mod_revision)],
            [Put(key, moved.encode(), lease=kv.lease)],
        )
        if ok:
            return True
    raise EtcdError(f"{verb} {worker_id}: {key} kept changing; try again")
