"""Real processes and real etcd for the coordination tests.

`Cluster` starts `shardctl coordinator run` / `shardctl worker run` subprocesses in a
cluster (etcd prefix) of the test's own, reads the keyspace, and records every
change of `owners/` and `offsets/` from the start, so a test can check afterwards
that no shard ever had two owners and that fenced writes never landed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shardctl.core.config import Settings
from shardctl.core.etcd import EtcdClient, LoopThread, watch_updates
from shardctl.core.keyspace import Keyspace
from shardctl.core.processes import SHARDCTL, ProcessGroup
from shardctl.core.records import Assignment, ClusterConfig, OffsetRecord, WorkerRecord
from tests.polling import wait_for as wait_for

TTL = 3
STABILIZATION = 0.3


@dataclass
class Recorder:
    """Every owners/ and offsets/ change, in revision order, since the test began."""

    keys: Keyspace
    overlaps: list[str] = field(default_factory=list)
    owner_history: list[tuple[int, str, int, str, int]] = field(default_factory=list)
    offset_writes: list[tuple[int, int, int]] = field(default_factory=list)  # rev, shard, token
    assignments: list[Assignment] = field(default_factory=list)  # every generation seen
    _present: dict[str, int] = field(default_factory=dict)

    async def run_owners(self, client: EtcdClient) -> None:
        async for update in watch_updates(client, self.keys.owners_prefix, prefix=True):
            if update.reset:
                listed = {kv.key: kv.create_revision for kv in update.items}
                for key, rev in listed.items():
                    if key in self._present and self._present[key] != rev:
                        self.overlaps.append(f"{key}: token {self._present[key]} and {rev}")
                self._present = listed
                continue
            assert update.event is not None
            kv = update.event.kv
            shard = self.keys.shard_of_owner_key(kv.key)
            if update.event.kind == "put":
                held = self._present.get(kv.key)
                if held is not None and held != kv.create_revision:
                    self.overlaps.append(
                        f"{kv.key}: token {kv.create_revision} created while {held} held it"
                    )
                self._present[kv.key] = kv.create_revision
                self.owner_history.append(
                    (kv.mod_revision, "put", shard, kv.value.decode(), kv.create_revision)
                )
            else:
                self._present.pop(kv.key, None)
                self.owner_history.append((kv.mod_revision, "delete", shard, "", 0))

    async def run_assignments(self, client: EtcdClient) -> None:
        async for update in watch_updates(client, self.keys.assignment, prefix=False):
            kvs = update.items if update.reset else [update.event.kv] if update.event else []
            for kv in kvs:
                if kv.value:
                    self.assignments.append(Assignment.decode(kv.key, kv.value))

    async def run_offsets(self, client: EtcdClient) -> None:
        async for update in watch_updates(client, self.keys.offsets_prefix, prefix=True):
            if update.event is not None and update.event.kind == "put":
                kv = update.event.kv
                record = OffsetRecord.decode(kv.key, kv.value)
                shard = self.keys.shard_of_offset_key(kv.key)
                self.offset_writes.append((kv.mod_revision, shard, record.token))


class Cluster:
    def __init__(self, env: dict[str, str], settings: Settings, workdir: Path) -> None:
        self.settings = settings
        self.keys = Keyspace.of(settings)
        self.workdir = workdir
        self.env = {**os.environ, **env, "SHARDCTL_CLUSTER": settings.cluster}
        self.processes = ProcessGroup(workdir, self.env)
        self.loop = LoopThread("test-etcd").start()
        self.client = self.loop.run(EtcdClient(settings.etcd).connect())
        self.recorder = Recorder(self.keys)
        self._watches = [
            self.loop.submit(self.recorder.run_owners(self.client)),
            self.loop.submit(self.recorder.run_offsets(self.client)),
            self.loop.submit(self.recorder.run_assignments(self.client)),
        ]

    # -- processes ---------------------------------------------------------------

    def shardctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*SHARDCTL, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    @property
    def procs(self) -> dict[str, subprocess.Popen[bytes]]:
        return self.processes.procs

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        return self.processes.shardctl(name, *args, env=self.env)

    def start_coordinator(self, name: str, *extra: str) -> subprocess.Popen[bytes]:
        return self.spawn(
            name,
            [
                "coordinator",
                "run",
                "--id",
                name,
                "--ttl",
                str(TTL),
                "--stabilization",
                str(STABILIZATION),
                *extra,
            ],
        )

    def start_worker(self, name: str, *extra: str) -> subprocess.Popen[bytes]:
        return self.spawn(
            name,
            [
                "worker",
                "run",
                "--id",
                name,
                "--ttl",
                str(TTL),
                "--handler",
                "noop",
                "--tick",
                "0.05",
                "--commit-interval",
                "0.2",
                "--event-log",
                str(self.event_log(name)),
                *extra,
            ],
        )

    def event_log(self, name: str) -> Path:
        return self.workdir / f"{name}.events"

    def log_text(self, name: str) -> str:
        return self.processes.log(name)

    def signal(self, name: str, sig: signal.Signals) -> None:
        self.processes.signal(name, sig)

    def kill9(self, name: str) -> None:
        self.processes.kill9(name)

    def close(self) -> None:
        self.processes.stop_all(grace_s=0)
        for fut in self._watches:
            fut.cancel()
        self.loop.run(self.client.delete_prefix(self.keys.root))
        self.loop.run(self.client.close())
        self.loop.stop()

    # -- keyspace ------------------------------------------------------------------

    def set_shards(self, n: int) -> None:
        done = self.shardctl("shards", "set", str(n))
        assert done.returncode == 0, done.stderr

    def assignment(self) -> Assignment | None:
        kv = self.loop.run(self.client.get(self.keys.assignment))
        return None if kv is None else Assignment.decode(kv.key, kv.value)

    def owners(self) -> dict[int, tuple[str, int]]:
        listing = self.loop.run(self.client.get_prefix(self.keys.owners_prefix))
        return {
            self.keys.shard_of_owner_key(kv.key): (kv.value.decode(), kv.create_revision)
            for kv in listing.items
        }

    def workers(self) -> dict[str, WorkerRecord]:
        listing = self.loop.run(self.client.get_prefix(self.keys.workers_prefix))
        return {
            self.keys.worker_id_of(kv.key): WorkerRecord.decode(kv.key, kv.value)
            for kv in listing.items
        }

    def config(self) -> ClusterConfig | None:
        kv = self.loop.run(self.client.get(self.keys.config))
        return None if kv is None else ClusterConfig.decode(kv.key, kv.value)

    def settled(self, workers: set[str], num_shards: int) -> Assignment | None:
        """The assignment, once it spreads `num_shards` over exactly `workers` (balanced)
        and every shard is owned by its assigned worker; else None."""
        current = self.assignment()
        if current is None or current.num_shards != num_shards:
            return None
        if set(current.owners) != workers:
            return None
        counts = [current.owners.count(w) for w in workers]
        if max(counts) - min(counts) > 1:
            return None
        owners = self.owners()
        for shard, worker in enumerate(current.owners):
            if owners.get(shard, ("", 0))[0] != worker:
                return None
        return current


def handled_intervals(paths: list[Path]) -> dict[int, list[tuple[float, float, int, str]]]:
    """Per shard: (first, last, token, worker) of the events each owner token handled."""
    spans: dict[tuple[int, int], list[Any]] = {}
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            event = json.loads(line)
            key = (event["shard"], event["token"])
            span = spans.setdefault(key, [event["t"], event["t"], event["worker"]])
            span[0] = min(span[0], event["t"])
            span[1] = max(span[1], event["t"])
    by_shard: dict[int, list[tuple[float, float, int, str]]] = defaultdict(list)
    for (shard, token), (first, last, worker) in spans.items():
        by_shard[shard].append((first, last, token, worker))
    for spans_of_shard in by_shard.values():
        spans_of_shard.sort()
    return dict(by_shard)


def processing_overlaps(paths: list[Path]) -> list[str]:
    """Pairs of owners whose handled events of one shard interleave in time."""
    found = []
    for shard, spans in handled_intervals(paths).items():
        latest: tuple[float, int, str] | None = None  # (last, token, worker) so far
        for first, last, token, worker in spans:
            if latest is not None and first <= latest[0]:
                found.append(
                    f"shard {shard}: {latest[2]} (token {latest[1]}) until "
                    f"{latest[0]:.3f}, {worker} (token {token}) from {first:.3f}"
                )
            if latest is None or last > latest[0]:
                latest = (last, token, worker)
    return found
