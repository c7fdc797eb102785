"""Placement by labels, zones and weights with a real coordinator and real workers."""

from __future__ import annotations

import json

import pytest

from shardctl.core.records import Assignment
from tests.integration.coordination_harness import Cluster, wait_for

pytestmark = pytest.mark.integration


def owned_as_assigned(cluster: Cluster, expected: list[str | None]) -> Assignment | None:
    """The assignment once it is `expected` and every assigned shard is owned."""
    current = cluster.assignment()
    if current is None or current.owners != expected:
        return None
    owners = cluster.owners()
    if any(owners.get(s, ("", 0))[0] != w for s, w in enumerate(expected) if w is not None):
        return None
    return current


def test_affinity_keeps_shards_on_labelled_workers_or_unassigned(cluster: Cluster) -> None:
    cluster.set_shards(6)
    placed = cluster.shardctl("shards", "place", "--affinity", "0-1:disk=ssd", "--weight", "2=3")
    assert placed.returncode == 0, placed.stderr
    bad = cluster.shardctl("shards", "place", "--weight", "9=2")
    assert bad.returncode == 2 and "shard 9 does not exist" in bad.stderr
    config = cluster.config()
    assert config is not None and config.weights == {2: 3}
    assert config.affinity == {0: {"disk": "ssd"}, 1: {"disk": "ssd"}}

    cluster.start_worker("w1", "--zone", "a", "--label", "disk=ssd")
    cluster.start_worker("w2", "--zone", "b")
    cluster.start_worker("w3", "--zone", "b")
    # The first generation sees all three: joins one by one would leave a balance
    # that is already within bounds, and nothing would move to the later ones.
    wait_for("w1, w2, w3 to register", lambda: set(cluster.workers()) == {"w1", "w2", "w3"})
    cluster.start_coordinator("c1")

    def three_workers() -> Assignment | None:
        current = cluster.assignment()
        if current is None or set(current.owners) != {"w1", "w2", "w3"}:
            return None
        return owned_as_assigned(cluster, current.owners)

    first = wait_for("6 shards over w1, w2, w3", three_workers)
    assert first.owners[0] == first.owners[1] == "w1"
    # Shards 2-5 weigh 3+1+1+1 = 6 over three equal workers: 2 each, within one max weight.
    loads = {w: 0 for w in ("w1", "w2", "w3")}
    for shard in range(2, 6):
        owner = first.owners[shard]
        assert owner is not None
        loads[owner] += 3 if shard == 2 else 1
    assert all(2 - 3 <= load <= 2 + 3 for load in loads.values()), loads
    document = json.loads(cluster.shardctl("status", "--json").stdout)
    assert {row["id"]: row["labels"].get("zone") for row in document["workers"]} == {
        "w1": "a",
        "w2": "b",
        "w3": "b",
    }
    assert document["unplaceable"] == []

    # Without a worker labelled disk=ssd, shards 0-1 stay unassigned and are reported.
    cluster.kill9("w1")

    def without_w1() -> Assignment | None:
        current = cluster.assignment()
        if current is None or current.owners[:2] != [None, None]:
            return None
        return owned_as_assigned(cluster, current.owners)

    second = wait_for("shards 2-5 on w2 and w3, 0-1 unassigned", without_w1)
    assert set(second.owners[2:]) == {"w2", "w3"}
    document = json.loads(cluster.shardctl("status", "--json").stdout)
    assert document["unplaceable"] == [0, 1] and document["unassigned"] == [0, 1]
    assert "unplaceable 0-1" in cluster.shardctl("status").stdout
    wait_for(
        "the coordinator to report shards 0-1",
        lambda: "no eligible worker for 2 shard(s) [0, 1]" in cluster.log_text("c1"),
    )

    # A new labelled worker takes them; the others keep theirs.
    cluster.start_worker("w4", "--zone", "b", "--label", "disk=ssd")
    third = wait_for(
        "w4 to own shards 0-1",
        lambda: owned_as_assigned(cluster, ["w4", "w4", *second.owners[2:]]),
    )
    assert third.generation > second.generation
    assert cluster.recorder.overlaps == []


def test_a_zone_flag_that_disagrees_with_the_zone_label_is_refused(cluster: Cluster) -> None:
    done = cluster.shardctl(
        "worker", "run", "--handler", "noop", "--zone", "a", "--label", "zone=b"
    )
    assert done.returncode == 2  # a bad usage
    assert "--zone 'a' and --label zone='b' disagree" in done.stderr
