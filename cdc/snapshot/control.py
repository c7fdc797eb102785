"""The operator's side: list snapshots, read one's status, pause, resume, cancel.

Controls are written into the request key (`cdc/<source>/bootstrap/<id>`) with
a compare-and-swap on its revision, so a control never overwrites what the
reader wrote there (an error) and the reader never overwrites a control: the
reader writes progress under its own key (`cdc/<source>/snapshot/<id>`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from cdc.bootstrap import BootstrapRequest, Control
from cdc.snapshot.progress import Progress
from shardctl.core.etcd.client import Delete, EtcdClient, ModRevisionIs, Put
from shardctl.core.keyspace import Keyspace


class ControlError(Exception):
    """The control cannot be applied; the message names the snapshot."""


@dataclass(frozen=True, slots=True)
class SnapshotStatus:
    id: str
    table: str
    request: BootstrapRequest | None  # None once the reader removed it (finished)
    progress: Progress | None  # None before an incremental snapshot starts, or blocking

    @property
    def state(self) -> str:
        if self.request is not None and self.request.error is not None:
            return "failed"
        if self.progress is not None:
            asked = self.request.control if self.request is not None else "run"
            if asked == "pause" and self.progress.state.value in ("pending", "running", "window"):
                return "pausing"
            return self.progress.state.value
        if self.request is None:
            return "done"
        return "pending"

    @property
    def mode(self) -> str:
        return "blocking" if self.request is not None and self.request.blocking else "incremental"

    def line(self) -> str:
        progress = self.progress.describe() if self.progress is not None else "-"
        error = self.request.error if self.request is not None else None
        if error is None and self.progress is not None:
            error = self.progress.error
        text = f"{self.id}  {self.table}  {self.mode}  {self.state}  {progress}"
        if self.request is not None and self.request.where:
            text += f"  where {self.request.where}"
        return text + (f"  error: {error}" if error else "")


async def list_snapshots(
    client: EtcdClient, keyspace: Keyspace, source: str
) -> list[SnapshotStatus]:
    """Pending requests and stored progress, oldest first."""
    requests_prefix = keyspace.cdc_bootstrap_prefix(source)
    progress_prefix = keyspace.cdc_snapshot_prefix(source)
    requests = {
        kv.key[len(requests_prefix) :]: BootstrapRequest.from_json(kv.value)
        for kv in (await client.get_prefix(requests_prefix)).items
    }
    progress = {
        kv.key[len(progress_prefix) :]: Progress.from_json(kv.value)
        for kv in (await client.get_prefix(progress_prefix)).items
    }
    out: list[SnapshotStatus] = []
    for snapshot_id in sorted(set(requests) | set(progress)):
        request = requests.get(snapshot_id)
        stored = progress.get(snapshot_id)
        table = (
            f"{request.database}.{request.table}"
            if request is not None
            else (stored.table if stored is not None else "?")
        )
        out.append(SnapshotStatus(snapshot_id, table, request, stored))
    return out


async def snapshot_status(
    client: EtcdClient, keyspace: Keyspace, source: str, snapshot_id: str
) -> SnapshotStatus | None:
    request_kv = await client.get(keyspace.cdc_bootstrap_prefix(source) + snapshot_id)
    progress_kv = await client.get(keyspace.cdc_snapshot_prefix(source) + snapshot_id)
    if request_kv is None and progress_kv is None:
        return None
    request = BootstrapRequest.from_json(request_kv.value) if request_kv is not None else None
    progress = Progress.from_json(progress_kv.value) if progress_kv is not None else None
    if request is not None:
        table = f"{request.database}.{request.table}"
    else:
        assert progress is not None
        table = progress.table
    return SnapshotStatus(snapshot_id, table, request, progress)


async def set_control(
    client: EtcdClient, keyspace: Keyspace, source: str, snapshot_id: str, control: Control
) -> BootstrapRequest:
    """Ask the reader to pause, resume or cancel a snapshot.

    A blocking bootstrap can only be cancelled, and only while it waits: its
    request is removed."""
    key = keyspace.cdc_bootstrap_prefix(source) + snapshot_id
    for _ in range(10):
        kv = await client.get(key)
        if kv is None:
            raise ControlError(
                f"bootstrap {snapshot_id} of source {source!r}: no such pending request "
                "(finished, cancelled, or never made)"
            )
        request = BootstrapRequest.from_json(kv.value)
        if request.error is not None:
            raise ControlError(f"bootstrap {snapshot_id} failed: {request.error}")
        if request.blocking and control != "cancel":
            raise ControlError(
                f"bootstrap {snapshot_id} is a blocking bootstrap: it cannot be paused or resumed"
            )
        op: Put | Delete = (
            Delete(key)
            if request.blocking
            else Put(key, dataclasses.replace(request, control=control).to_json())
        )
        ok, _ = await client.txn([ModRevisionIs(key, kv.mod_revision)], [op])
        if ok:
            return request
    raise ControlError(f"bootstrap {snapshot_id}: the request kept changing; try again")
