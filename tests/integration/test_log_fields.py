"""Lifecycle log lines carry their fields as JSON keys with --log-json, read from the
output of real coordinator and worker processes, and the fields agree with etcd."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.integration.coordination_harness import Cluster, wait_for

pytestmark = pytest.mark.integration


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_lifecycle_lines_carry_shard_token_worker_and_position(cluster: Cluster) -> None:
    cluster.set_shards(3)
    cluster.start_coordinator("c1", "--log-json")
    cluster.start_worker("w1", "--log-json")
    wait_for("3 shards owned by w1", lambda: cluster.settled({"w1"}, 3))

    def three_owners() -> dict[int, tuple[str, int]] | None:
        owners = cluster.owners()
        return owners if len(owners) == 3 else None

    owners = wait_for("3 owner keys", three_owners)

    def acquired() -> dict[int, dict[str, Any]] | None:
        found = {
            line["shard"]: line
            for line in json_lines(cluster.log_text("w1"))
            if "acquired shard" in line["event"]
        }
        return found if len(found) == 3 else None

    lines = wait_for("three `acquired` lines", acquired)
    for shard, (worker, token) in owners.items():
        line = lines[shard]
        assert (line["worker"], line["shard"], line["token"]) == (worker, shard, token)
        assert "position" in line and line["level"] == "info"

    status = json.loads(cluster.shardctl("status", "--json").stdout)
    leading = [
        line
        for line in json_lines(cluster.log_text("c1"))
        if line["event"].startswith("c1: leading with token")
    ]
    assert [(x["coordinator"], x["token"]) for x in leading] == [("c1", status["leader"]["token"])]
    written = [x["generation"] for x in json_lines(cluster.log_text("c1")) if "generation" in x]
    assert status["generation"] in written
