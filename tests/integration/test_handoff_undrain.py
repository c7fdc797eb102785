"""`shardctl undrain` cancels a drain still in progress (real processes, real etcd)."""

from __future__ import annotations

import json
import signal

import pytest

from tests.integration.coordination_harness import Cluster, wait_for

pytestmark = pytest.mark.integration


def test_undrain_keeps_a_draining_worker_serving_and_a_member(cluster: Cluster) -> None:
    cluster.set_shards(4)
    cluster.start_coordinator("c1")
    cluster.start_worker("w1")
    cluster.start_worker("w2")
    wait_for("4 shards over 2 workers", lambda: cluster.settled({"w1", "w2"}, 4))
    # Without a coordinator the drain cannot complete: it stays in progress.
    cluster.signal("c1", signal.SIGTERM)
    cluster.procs["c1"].wait(30)

    drained = cluster.shardctl("drain", "w1")
    assert drained.returncode == 0, drained.stderr
    wait_for("w1 to start draining", lambda: "drain requested" in cluster.log_text("w1"))

    undrained = cluster.shardctl("undrain", "w1")
    assert undrained.returncode == 0, undrained.stderr
    assert "active again" in undrained.stdout
    wait_for("w1 to serve again", lambda: "undrain requested" in cluster.log_text("w1"))
    again = cluster.shardctl("undrain", "w1")
    assert again.returncode == 0 and "was not draining" in again.stdout

    # A new coordinator counts w1 as a member and w1 keeps its shards.
    cluster.start_coordinator("c2")
    wait_for("4 shards over both workers", lambda: cluster.settled({"w1", "w2"}, 4))
    status = cluster.shardctl("status", "--json")
    assert status.returncode == 0, status.stderr
    states = {row["id"]: row["state"] for row in json.loads(status.stdout)["workers"]}
    assert states == {"w1": "active", "w2": "active"}
    assert cluster.procs["w1"].poll() is None, "w1 exited although its drain was cancelled"
    assert cluster.recorder.overlaps == []

    missing = cluster.shardctl("undrain", "nobody")
    assert missing.returncode == 1 and "no worker registered" in missing.stderr
