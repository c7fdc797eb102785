"""`shardctl maintenance on|off` freezes the assignment (real processes, real etcd)."""

from __future__ import annotations

import json

import pytest

from tests.integration.coordination_harness import Cluster, wait_for

pytestmark = pytest.mark.integration


def test_maintenance_freezes_the_assignment_even_for_a_dead_worker(cluster: Cluster) -> None:
    cluster.set_shards(6)
    cluster.start_coordinator("c1")
    for name in ("w1", "w2", "w3"):
        cluster.start_worker(name)
    before = wait_for("6 shards over 3 workers", lambda: cluster.settled({"w1", "w2", "w3"}, 6))
    w3_shards = before.shards_of("w3")

    on = cluster.shardctl("maintenance", "on", "--reason", "disk swap")
    assert on.returncode == 0, on.stderr
    assert f"frozen at generation {before.generation}" in on.stdout
    again = cluster.shardctl("maintenance", "on")
    assert again.returncode == 0 and "already on" in again.stdout

    status = cluster.shardctl("status")
    assert status.returncode == 0, status.stderr
    assert "MAINTENANCE MODE ON" in status.stdout and "disk swap" in status.stdout
    document = json.loads(cluster.shardctl("status", "--json").stdout)
    assert document["maintenance"]["reason"] == "disk swap"
    doctor = cluster.shardctl("doctor", "--json")
    findings = {f["check"]: f for f in json.loads(doctor.stdout)}
    assert findings["maintenance"]["level"] == "warning"
    assert "MAINTENANCE MODE ON" in findings["maintenance"]["what"]

    cluster.kill9("w3")
    # The coordinator has seen w3's lease expire, and says it keeps the assignment.
    wait_for(
        "the coordinator to see w3 gone while frozen",
        lambda: "members are now [w1, w2]; the assignment stays frozen" in cluster.log_text("c1"),
    )
    frozen = cluster.assignment()
    assert frozen is not None
    assert frozen.generation == before.generation
    assert frozen.owners == before.owners, "a shard moved during maintenance"
    assert all(cluster.owners().get(s) is None for s in w3_shards)  # w3's shards stay idle

    off = cluster.shardctl("maintenance", "off")
    assert off.returncode == 0 and "maintenance mode off" in off.stdout
    after = wait_for("w3's shards to move to w1 and w2", lambda: cluster.settled({"w1", "w2"}, 6))
    assert after.generation > before.generation
    assert all(after.owners[s] in ("w1", "w2") for s in w3_shards)
    # Only w3's shards moved: w1 and w2 keep theirs.
    for shard, owner in enumerate(before.owners):
        if owner != "w3":
            assert after.owners[shard] == owner
    assert "MAINTENANCE" not in cluster.shardctl("status").stdout
    assert json.loads(cluster.shardctl("status", "--json").stdout)["maintenance"] is None
    not_on = cluster.shardctl("maintenance", "off")
    assert not_on.returncode == 0 and "was not on" in not_on.stdout
    assert cluster.recorder.overlaps == []
