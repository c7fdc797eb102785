"""`shardctl status` shows a change of shard count while it is under way (real etcd)."""

from __future__ import annotations

import json
import time

import pytest

from cdc.replication.position import Checkpoint
from shardctl.core.etcd import Put
from shardctl.core.records import Reshard
from tests.integration.coordination_harness import Cluster

pytestmark = pytest.mark.integration


def test_status_shows_a_reshard_until_it_completes(cluster: Cluster) -> None:
    topic = f"reshard-status-{cluster.settings.cluster}"
    init = cluster.shardctl("cluster", "init", "--shards", "8", "--topic", topic)
    assert init.returncode == 0, init.stderr
    assert "RESHARDING" not in cluster.shardctl("status").stdout
    # A reader has published with 8 shards (its checkpoint exists): the change is online.
    checkpoint = Checkpoint("binlog.000003", 4, None, int(time.time()), 1)
    cluster.loop.run(
        cluster.client.txn([], [Put(cluster.keys.cdc_checkpoint("src"), checkpoint.to_json())])
    )

    requested = cluster.shardctl("shards", "set", "12")
    assert requested.returncode == 0, requested.stderr
    status = cluster.shardctl("status")
    assert status.returncode == 0, status.stderr
    assert "RESHARDING 8 -> 12 shards (jump): requested" in status.stdout
    document = json.loads(cluster.shardctl("status", "--json").stdout)
    assert document["reshard"]["state"] == "requested"

    kv = cluster.loop.run(cluster.client.get(cluster.keys.reshard))
    assert kv is not None
    record = Reshard.decode(kv.key, kv.value)
    switched = record.model_copy(
        update={
            "state": "switched",
            "position": "binlog.000003:4242",
            "switched_at": time.time(),
            "barrier": {topic: [5] * 12},
        }
    )
    cluster.loop.run(cluster.client.txn([], [Put(cluster.keys.reshard, switched.encode())]))
    status = cluster.shardctl("status")
    assert "the reader switched at binlog.000003:4242; shards 8-11" in status.stdout

    complete = switched.model_copy(update={"state": "complete", "completed_at": time.time()})
    cluster.loop.run(cluster.client.txn([], [Put(cluster.keys.reshard, complete.encode())]))
    assert "RESHARDING" not in cluster.shardctl("status").stdout
    assert json.loads(cluster.shardctl("status", "--json").stdout)["reshard"]["state"] == "complete"
