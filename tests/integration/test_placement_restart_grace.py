"""Restart grace: a worker that dies keeps its shards reserved for G seconds (real
processes, real etcd)."""

from __future__ import annotations

import json
import signal

import pytest

from tests.integration.coordination_harness import Cluster, wait_for

pytestmark = pytest.mark.integration


def test_a_worker_back_within_its_grace_takes_its_shards_back_without_a_move(
    cluster: Cluster,
) -> None:
    cluster.set_shards(6)
    cluster.start_coordinator("c1")
    cluster.start_worker("w1", "--restart-grace", "60")
    cluster.start_worker("w2", "--restart-grace", "60")
    before = wait_for("6 shards over w1 and w2", lambda: cluster.settled({"w1", "w2"}, 6))
    rows = json.loads(cluster.shardctl("status", "--json").stdout)["workers"]
    assert {row["id"]: row["restart_grace"] for row in rows} == {"w1": 60.0, "w2": 60.0}
    assert "60s" in cluster.shardctl("status").stdout

    cluster.kill9("w2")
    wait_for(
        "the coordinator to reserve w2's shards",
        lambda: (
            "worker w2 left while active; its shards stay reserved for 60s"
            in cluster.log_text("c1")
        ),
    )
    status = json.loads(cluster.shardctl("status", "--json").stdout)
    assert status["absent_owners"] == {"w2": sorted(before.shards_of("w2"))}
    # Same id again: it registers once the old lease is gone and takes its shards back.
    cluster.start_worker("w2", "--restart-grace", "60")
    after = wait_for("w2 to own its shards again", lambda: cluster.settled({"w1", "w2"}, 6))
    assert after.generation == before.generation, "a generation was written during the grace"
    assert after.owners == before.owners
    assert "worker w2 is back within its restart grace" in cluster.log_text("c1")
    later = [a for a in cluster.recorder.assignments if a.generation >= before.generation]
    assert later and all(a.owners == before.owners for a in later)
    assert cluster.recorder.overlaps == []


def test_shards_move_once_the_grace_expires(cluster: Cluster) -> None:
    cluster.set_shards(6)
    cluster.start_coordinator("c1")
    cluster.start_worker("w1")
    cluster.start_worker("w2", "--restart-grace", "2")
    before = wait_for("6 shards over w1 and w2", lambda: cluster.settled({"w1", "w2"}, 6))
    cluster.kill9("w2")
    wait_for("w2's shards to move to w1", lambda: cluster.settled({"w1"}, 6))
    log = cluster.log_text("c1")
    reserved = log.index("worker w2 left while active; its shards stay reserved for 2s")
    assert log.index("restart grace of worker w2 expired; its shards move") > reserved
    assert cluster.assignment() is not None
    assert cluster.recorder.assignments[-1].generation == before.generation + 1
    assert cluster.recorder.overlaps == []


def test_without_grace_a_dead_workers_shards_move_at_once(cluster: Cluster) -> None:
    cluster.set_shards(4)
    cluster.start_coordinator("c1")
    cluster.start_worker("w1")
    cluster.start_worker("w2")
    wait_for("4 shards over w1 and w2", lambda: cluster.settled({"w1", "w2"}, 4))
    cluster.kill9("w2")
    wait_for("w2's shards to move to w1", lambda: cluster.settled({"w1"}, 4))
    assert "reserved" not in cluster.log_text("c1")


def test_sigterm_with_grace_releases_without_draining_and_the_restart_moves_nothing(
    cluster: Cluster,
) -> None:
    cluster.set_shards(6)
    cluster.start_coordinator("c1")
    cluster.start_worker("w1", "--restart-grace", "60")
    cluster.start_worker("w2", "--restart-grace", "60")
    before = wait_for("6 shards over w1 and w2", lambda: cluster.settled({"w1", "w2"}, 6))

    cluster.signal("w2", signal.SIGTERM)
    assert cluster.procs["w2"].wait(30) == 0
    assert "releasing every shard without draining" in cluster.log_text("w2")
    assert "stop requested, draining" not in cluster.log_text("w2")
    wait_for(
        "the coordinator to reserve w2's shards",
        lambda: (
            "worker w2 left while active; its shards stay reserved for 60s"
            in cluster.log_text("c1")
        ),
    )
    assert all(cluster.owners().get(s) is None for s in before.shards_of("w2"))
    cluster.start_worker("w2", "--restart-grace", "60")
    after = wait_for("w2 to own its shards again", lambda: cluster.settled({"w1", "w2"}, 6))
    assert after.generation == before.generation and after.owners == before.owners
    assert cluster.recorder.overlaps == []
