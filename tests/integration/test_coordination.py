"""Coordination against real etcd with real `shardctl` processes (P1, P2, P3, P6)."""

from __future__ import annotations

import itertools
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from coordinator.assignment import Member, minimal_moves, moves
from coordinator.writer import Current, write_assignment
from shardctl.core.etcd import Leadership, Mirror, NotLeader, Session
from shardctl.core.records import Assignment, OffsetRecord, WorkerRecord
from tests.integration.coordination_harness import (
    TTL,
    Cluster,
    processing_overlaps,
    wait_for,
)
from workers.offsets import OffsetFenced, OffsetStore

pytestmark = pytest.mark.integration


def event_logs(cluster: Cluster, names: list[str]) -> list[Path]:
    return [cluster.event_log(n) for n in names]


def test_kill9_worker_shards_are_owned_again_and_never_twice(cluster: Cluster) -> None:
    cluster.set_shards(16)
    cluster.start_coordinator("c1")
    names = ["w1", "w2", "w3"]
    for name in names:
        cluster.start_worker(name)
    before = wait_for("16 shards over 3 workers", lambda: cluster.settled(set(names), 16))
    victim_shards = {s for s, w in enumerate(before.owners) if w == "w2"}
    assert victim_shards

    killed_at = time.monotonic()
    cluster.kill9("w2")
    after = wait_for(
        "w2's shards owned by the others",
        lambda: cluster.settled({"w1", "w3"}, 16),
        timeout=TTL + 30,
    )
    print(f"re-owned {time.monotonic() - killed_at:.2f}s after kill -9 (TTL {TTL}s)")

    assert all(after.owners[s] in {"w1", "w3"} for s in victim_shards)
    assert cluster.recorder.overlaps == []
    assert processing_overlaps(event_logs(cluster, names)) == []
    # Only w2's shards moved; the survivors kept theirs (P3).
    survivors = {"w1": Member(), "w3": Member()}
    assert moves(before.owners, after.owners) == len(victim_shards)
    assert minimal_moves(before.owners, survivors, 16) == len(victim_shards)


def test_sigstop_past_ttl_zombie_stops_and_its_writes_are_fenced(cluster: Cluster) -> None:
    cluster.set_shards(8)
    cluster.start_coordinator("c1")
    cluster.start_worker("w1")
    cluster.start_worker("w2")
    wait_for("8 shards over 2 workers", lambda: cluster.settled({"w1", "w2"}, 8))
    zombie_tokens = {s: tok for s, (w, tok) in cluster.owners().items() if w == "w1"}
    old_session = cluster.workers()["w1"].session

    cluster.signal("w1", signal.SIGSTOP)
    taken = wait_for("w2 to own every shard", lambda: cluster.settled({"w2"}, 8), timeout=TTL + 30)
    takeover_revision = max(tok for s, (_, tok) in cluster.owners().items() if s in zombie_tokens)
    cluster.signal("w1", signal.SIGCONT)

    # The zombie notices on its own and stops every shard at once...
    wait_for(
        "w1 to report its lease lost",
        lambda: "lost" in cluster.log_text("w1") and "stopping shards" in cluster.log_text("w1"),
    )
    # ...then registers again as a new member, with a new session.
    wait_for(
        "w1 to register again",
        lambda: cluster.workers().get("w1") and cluster.workers()["w1"].session != old_session,
    )

    # Its fenced offset write is rejected: with its old token, for each of its shards.
    offsets = OffsetStore(cluster.client, cluster.keys)
    for shard, token in zombie_tokens.items():
        with pytest.raises(OffsetFenced, match=f"token {token} no longer owns"):
            zombie = OffsetRecord(positions={"noop": 10**9}, event_id="zombie", token=token)
            cluster.loop.run(offsets.commit(shard, zombie))
    # And none of the offset writes it attempted after the takeover landed.
    late = [
        (rev, shard, tok)
        for rev, shard, tok in cluster.recorder.offset_writes
        if rev > takeover_revision and tok in zombie_tokens.values()
    ]
    assert late == []
    assert taken.generation >= 2
    assert cluster.recorder.overlaps == []
    assert processing_overlaps(event_logs(cluster, ["w1", "w2"])) == []
    # Recovered without a restart: the same process gets shards again, with new tokens.
    wait_for("w1 back in the assignment", lambda: cluster.settled({"w1", "w2"}, 8))
    for worker, token in cluster.owners().values():
        if worker == "w1":
            assert token > takeover_revision
    assert cluster.procs["w1"].poll() is None


def test_killing_the_leading_coordinator_hands_over_and_fences_the_old_leader(
    cluster: Cluster,
) -> None:
    cluster.set_shards(8)
    cluster.start_coordinator("c1")
    wait_for(
        "c1 to lead", lambda: cluster.loop.run(cluster.client.get(cluster.keys.coordinator_leader))
    )
    cluster.start_coordinator("c2")
    cluster.start_worker("w1")
    first = wait_for("8 shards on w1", lambda: cluster.settled({"w1"}, 8))
    old = cluster.loop.run(cluster.client.get(cluster.keys.coordinator_leader))
    assert old is not None and old.value == b"c1"

    cluster.kill9("c1")
    new = wait_for(
        "c2 to lead",
        lambda: (
            (kv := cluster.loop.run(cluster.client.get(cluster.keys.coordinator_leader)))
            and kv.value == b"c2"
            and kv
        ),
        timeout=TTL + 30,
    )
    assert new.create_revision > old.create_revision

    # The new leader does its job: a new worker gets its share.
    cluster.start_worker("w2")
    second = wait_for("8 shards over w1, w2", lambda: cluster.settled({"w1", "w2"}, 8))
    assert second.generation > first.generation

    # A write by the deposed leader (its token) is refused, and changes nothing (P6).
    session = Session.open_blocking(cluster.settings.etcd, TTL, name="deposed-c1")
    try:
        deposed = Leadership(
            cluster.client, session, cluster.keys.coordinator_leader, "c1", old.create_revision
        )
        kv = cluster.loop.run(cluster.client.get(cluster.keys.assignment))
        assert kv is not None
        forged = Assignment(generation=second.generation + 1, num_shards=8, owners=["c1"] * 8)
        with pytest.raises(NotLeader, match=f"create_revision {old.create_revision}"):
            cluster.loop.run(write_assignment(deposed, cluster.keys, Current.of(kv), forged))
    finally:
        session.close_blocking()
    assert cluster.assignment() == second

    shown = cluster.shardctl("status", "--json")
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert status["leader"] == {"id": "c2", "token": new.create_revision}
    assert status["generation"] == second.generation
    assert {w["id"]: len(w["owned"]) for w in status["workers"]} == {"w1": 4, "w2": 4}

    # `shardctl drain` moves w1's shards to w2, after which w1 exits by itself.
    drained = cluster.shardctl("drain", "w1", "--wait", "--timeout", "60")
    assert drained.returncode == 0, drained.stderr
    assert cluster.procs["w1"].wait(30) == 0
    wait_for("8 shards on w2", lambda: cluster.settled({"w2"}, 8))
    missing = cluster.shardctl("drain", "w1")
    assert missing.returncode == 1 and "no worker registered" in missing.stderr


def test_etcd_restart_mid_run_recovers_without_restarting_processes(
    stack: Any, cluster: Cluster
) -> None:
    cluster.set_shards(8)
    cluster.start_coordinator("c1")
    cluster.start_worker("w1")
    cluster.start_worker("w2")
    wait_for("8 shards over 2 workers", lambda: cluster.settled({"w1", "w2"}, 8))
    pids = {name: proc.pid for name, proc in cluster.procs.items()}
    mirror = Mirror(cluster.client, cluster.keys.config, prefix=False)
    cluster.loop.run(_start(mirror))

    stack.restart("etcd")

    # A watch opened before the restart sees writes made after it.
    cluster.set_shards(12)
    wait_for(
        "the pre-restart watch to see the new config",
        lambda: any(b'"num_shards":12' in kv.value for kv in mirror.items.values()),
    )
    cluster.loop.run(mirror.stop())
    # The coordinator and both workers carry on: a new worker joins and all settle.
    cluster.start_worker("w3")
    wait_for(
        "12 shards over 3 workers", lambda: cluster.settled({"w1", "w2", "w3"}, 12), timeout=60
    )
    for name, pid in pids.items():
        assert cluster.procs[name].poll() is None, f"{name} exited"
        assert cluster.procs[name].pid == pid
    assert cluster.recorder.overlaps == []
    assert processing_overlaps(event_logs(cluster, ["w1", "w2", "w3"])) == []


async def _start(mirror: Mirror) -> None:
    mirror.start()
    await mirror.ready.wait()


def test_scale_one_to_five_and_back_moves_the_minimum(cluster: Cluster) -> None:
    cluster.set_shards(64)
    cluster.start_coordinator("c1")
    names = [f"w{i}" for i in range(1, 6)]
    cluster.start_worker(names[0])
    current = wait_for("64 shards on w1", lambda: cluster.settled({names[0]}, 64))
    steps = [names[:k] for k in range(2, 6)] + [names[:k] for k in range(4, 0, -1)]
    for members in steps:
        active = set(members)
        before = current
        tokens_before = cluster.owners()
        if len(active) > len(set(before.owners)):
            cluster.start_worker(members[-1])
        else:
            leaving = next(iter(set(before.owners) - active))
            cluster.signal(leaving, signal.SIGTERM)  # drain, then exit

        def step_done(active: set[str] = active) -> Assignment | None:
            return cluster.settled(active, 64)

        current = wait_for(f"64 shards over {sorted(active)}", step_done)
        expected = minimal_moves(before.owners, {w: Member() for w in active}, 64)
        assert moves(before.owners, current.owners) == expected, members
        # Shards that did not move were never paused: same owner, same token (P3).
        tokens_after = cluster.owners()
        for shard in range(64):
            if before.owners[shard] == current.owners[shard]:
                assert tokens_after[shard] == tokens_before[shard], shard
    assert cluster.recorder.overlaps == []
    assert processing_overlaps(event_logs(cluster, names)) == []
    for leaving in names[1:]:
        assert cluster.procs[leaving].wait(30) == 0, f"{leaving} did not exit cleanly"


def test_shards_set_grows_kafka_topics_and_refuses_other_partition_counts(
    stack: Any, cluster: Cluster, unique: str
) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    done = cluster.shardctl("shards", "set", "4")
    assert done.returncode == 0, done.stderr
    assert "no topics configured" in done.stdout

    grows, odd = f"{unique}-rows", f"{unique}-odd"
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    created = admin.create_topics(
        [NewTopic(grows, num_partitions=4, replication_factor=1), NewTopic(odd, 5, 1)]
    )
    for future in created.values():
        future.result(30)

    def partitions(topic: str) -> int:
        return len(admin.list_topics(topic, timeout=30).topics[topic].partitions)

    try:
        config = cluster.config()
        assert config is not None
        with_topics = config.model_copy(update={"topics": [grows, odd, f"{unique}-absent"]})
        cluster.loop.run(cluster.client.put(cluster.keys.config, with_topics.encode()))

        refused = cluster.shardctl("shards", "set", "6")
        assert refused.returncode == 1
        assert f"{odd} has 5 partition(s)" in refused.stderr
        assert "shard count unchanged" in refused.stderr
        after = cluster.config()
        assert after is not None and after.num_shards == 4
        assert partitions(grows) == 4  # nothing changed, not even the topic that could grow

        same = cluster.shardctl("shards", "set", "4")
        assert same.returncode == 0 and "already 4" in same.stdout

        without_odd = with_topics.model_copy(update={"topics": [grows, f"{unique}-absent"]})
        cluster.loop.run(cluster.client.put(cluster.keys.config, without_odd.encode()))
        accepted = cluster.shardctl("shards", "set", "6")
        assert accepted.returncode == 0, accepted.stderr
        assert f"topic {grows}: 4 -> 6 partitions" in accepted.stdout
        assert f"topic {unique}-absent does not exist yet" in accepted.stdout
        assert partitions(grows) == 6
        after = cluster.config()
        assert after is not None and after.num_shards == 6 and after.topics[0] == grows

        shrink = cluster.shardctl("shards", "set", "3")
        assert shrink.returncode == 1
        assert "cannot shrink from 6 to 3 shards" in shrink.stderr
        after = cluster.config()
        assert after is not None and after.num_shards == 6
    finally:
        for future in admin.delete_topics([grows, odd]).values():
            future.result(30)


def test_a_flapping_worker_causes_no_rebalance_storm(cluster: Cluster) -> None:
    stabilization = 1.5  # far above the flapping period, so load cannot blur the two
    cluster.set_shards(8)
    cluster.start_coordinator("c1", "--stabilization", str(stabilization))
    cluster.start_worker("w1")
    cluster.start_worker("w2")
    before = wait_for("8 shards over 2 workers", lambda: cluster.settled({"w1", "w2"}, 8))
    flappy = WorkerRecord(host="flappy", pid=1).encode()
    key = cluster.keys.worker("flappy")
    # Joins and leaves much faster than the stabilization delay, then stays away.
    for _ in range(6):
        cluster.loop.run(cluster.client.put(key, flappy))
        time.sleep(0.05)
        cluster.loop.run(cluster.client.delete(key))
        time.sleep(0.05)
    time.sleep(stabilization * 2)
    assert cluster.assignment() == before  # not a single new generation
    # A member that stays is taken in once the member set is quiet.
    cluster.loop.run(cluster.client.put(key, flappy))
    wait_for(
        "flappy in the assignment",
        lambda: (a := cluster.assignment()) is not None and "flappy" in a.owners,
    )
    cluster.loop.run(cluster.client.delete(key))


def test_churn_budget_spreads_a_rebalance_over_generations(cluster: Cluster) -> None:
    cluster.set_shards(12)
    cluster.start_coordinator("c1", "--max-moves", "2")
    cluster.start_worker("w1")
    start = wait_for("12 shards on w1", lambda: cluster.settled({"w1"}, 12))
    cluster.start_worker("w2")
    cluster.start_worker("w3")
    final = wait_for("12 shards over 3 workers", lambda: cluster.settled({"w1", "w2", "w3"}, 12))
    generations = [
        a
        for a in cluster.recorder.assignments
        if start.generation <= a.generation <= final.generation
    ]
    expected = list(range(start.generation, final.generation + 1))
    assert [a.generation for a in generations] == expected
    for before, after in itertools.pairwise(generations):
        moved = moves(before.owners, after.owners)
        assert moved <= 2, (before.generation, after.generation, moved)
    # 8 shards had to leave w1, two at a time: at least 4 more generations.
    assert final.generation >= start.generation + 4
    assert cluster.recorder.overlaps == []


def test_a_second_worker_with_the_same_id_waits_for_the_first(cluster: Cluster) -> None:
    cluster.set_shards(4)
    cluster.start_coordinator("c1")
    first = cluster.start_worker("w1")
    wait_for("4 shards on w1", lambda: cluster.settled({"w1"}, 4))
    first_session = cluster.workers()["w1"].session
    cluster.spawn(
        "w1-again", ["worker", "run", "--handler", "noop", "--id", "w1", "--ttl", str(TTL)]
    )
    wait_for("the second w1 to wait", lambda: "still registered by" in cluster.log_text("w1-again"))
    assert cluster.workers()["w1"].session == first_session
    assert first.poll() is None

    cluster.kill9("w1")
    wait_for(
        "the second w1 to take over",
        lambda: (
            (w := cluster.workers().get("w1")) is not None
            and w.session != first_session
            and cluster.settled({"w1"}, 4)
        ),
    )
    assert cluster.recorder.overlaps == []
