"""An etcd outage longer than the lease TTL, against the stack's real etcd.

Every worker loses its lease while etcd is down, and its revoke of that lease fails.
etcd renews every lease when it starts again, so the old owners/ keys would block the
shards for a full TTL after etcd is back. The worker revokes its old lease through
its new session before it registers again; the test checks that order, then waits
until every shard is processed again and reports how long that took.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from shardctl.core.config import Settings
from shardctl.core.etcd import EtcdUnavailable
from tests.integration.coordination_harness import Cluster, wait_for

pytestmark = pytest.mark.integration

# Longer than the harness's: the old lease, renewed when etcd starts, must clearly
# outlive the workers' return, so that a late revoke would be seen.
OUTAGE_TTL = 5
WORKERS = ["w1", "w2"]
SHARDS = 8


@pytest.fixture
def cluster(stack: Any, settings: Settings, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(stack.env(), settings, tmp_path)
    try:
        yield c
    finally:
        # A failed test must not leave the shared etcd stopped.
        stack.start("etcd")
        c.close()


def lease_ttl(cluster: Cluster, lease: int) -> int:
    """The lease's remaining TTL (-1: gone), once the test's connection is back."""

    def read() -> tuple[int] | None:
        try:
            return (cluster.loop.run(cluster.client.lease_ttl(lease)),)
        except EtcdUnavailable:
            return None

    return wait_for(f"etcd to answer about lease {lease:x}", read)[0]


def first_events_after(path: Path, since: float) -> dict[int, float]:
    """Per shard, the time of the first event handled at or after `since`."""
    first: dict[int, float] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                event = json.loads(line)
                if event["t"] >= since and event["shard"] not in first:
                    first[event["shard"]] = event["t"]
    return first


def test_after_an_outage_longer_than_the_ttl_old_leases_are_revoked_and_every_shard_resumes(
    stack: Any, cluster: Cluster
) -> None:
    cluster.set_shards(SHARDS)
    cluster.start_coordinator("c1", "--ttl", str(OUTAGE_TTL))
    for name in WORKERS:
        cluster.start_worker(name, "--ttl", str(OUTAGE_TTL))
    wait_for("8 shards over 2 workers", lambda: cluster.settled(set(WORKERS), SHARDS))
    old_leases = {name: int(record.session, 16) for name, record in cluster.workers().items()}

    def revoke_failed(name: str, lease: int) -> bool:
        return f"revoking lease {lease:x} failed" in cluster.log_text(name)

    stack.stop("etcd")
    # Down longer than the TTL: each worker declared its lease lost, and its one
    # revoke attempt failed because etcd was not there.
    for name, lease in old_leases.items():
        wait_for(
            f"{name} to give up lease {lease:x}",
            partial(revoke_failed, name, lease),
            timeout=OUTAGE_TTL + 30,
        )
    stack.start("etcd")
    started_at = time.time()

    def registered_again(name: str) -> bool:
        try:
            record = cluster.workers().get(name)
        except EtcdUnavailable:
            return False
        return record is not None and int(record.session, 16) != old_leases[name]

    for name, lease in old_leases.items():
        wait_for(f"{name} registered under a new lease", partial(registered_again, name))
        # The old lease went before the new registration, not by expiry a TTL later.
        remaining = lease_ttl(cluster, lease)
        assert remaining == -1, f"{name}'s old lease {lease:x} still has {remaining}s left"

    def every_shard_resumed() -> dict[int, float] | None:
        first: dict[int, float] = {}
        for name in WORKERS:
            for shard, t in first_events_after(cluster.event_log(name), started_at).items():
                first[shard] = min(t, first.get(shard, t))
        return first if len(first) == SHARDS else None

    resumed = wait_for("every shard processed again", every_shard_resumed, timeout=60)
    recovery = max(resumed.values()) - started_at
    print(
        f"recovery: every shard processed again {recovery:.2f}s after etcd was started "
        f"(TTL {OUTAGE_TTL}s)"
    )
    assert cluster.recorder.overlaps == []


def test_a_worker_killed_before_an_etcd_restart_loses_its_shards_once_its_renewed_lease_ends(
    stack: Any, cluster: Cluster
) -> None:
    """kill -9, then etcd restarts before the dead worker's lease expired: etcd renews
    that lease when it starts, so its shards move one TTL after etcd is back, not
    TTL·2/3 to TTL after the kill. Nobody can revoke a dead process's lease early."""
    cluster.set_shards(SHARDS)
    cluster.start_coordinator("c1", "--ttl", str(OUTAGE_TTL))
    for name in WORKERS:
        cluster.start_worker(name, "--ttl", str(OUTAGE_TTL))
    before = wait_for("8 shards over 2 workers", lambda: cluster.settled(set(WORKERS), SHARDS))
    victim_shards = {s for s, w in enumerate(before.owners) if w == "w2"}
    dead_lease = int(cluster.workers()["w2"].session, 16)

    killed_at = time.monotonic()
    cluster.kill9("w2")
    stack.restart("etcd")
    back_at = time.monotonic()
    # etcd is back and the dead worker's lease survived the restart.
    assert lease_ttl(cluster, dead_lease) > 0

    def moved() -> bool:
        try:
            owners = cluster.owners()
        except EtcdUnavailable:
            return False
        return all(owners.get(s, ("", 0))[0] == "w1" for s in victim_shards)

    wait_for("w2's shards owned by w1", moved, timeout=OUTAGE_TTL * 3 + 30)
    done_at = time.monotonic()
    print(
        f"kill -9 then etcd restart: w2's shards owned again {done_at - killed_at:.2f}s after "
        f"the kill, {done_at - back_at:.2f}s after etcd was back (TTL {OUTAGE_TTL}s)"
    )
    assert lease_ttl(cluster, dead_lease) == -1
    assert cluster.recorder.overlaps == []
