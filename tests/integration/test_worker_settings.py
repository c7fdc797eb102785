"""The [worker] section reaches a real `shardctl worker run` process: what the worker
registers in etcd (capacity, restart grace) comes from the flag, else the environment,
else the TOML file."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardctl.core.records import WorkerRecord
from tests.integration.coordination_harness import Cluster, wait_for

pytestmark = pytest.mark.integration


def test_worker_settings_come_from_flag_then_env_then_toml(
    cluster: Cluster, tmp_path: Path
) -> None:
    toml = tmp_path / "shardctl.toml"
    toml.write_text("[worker]\ncapacity = 3\nrestart_grace_s = 7.5\n")
    cluster.start_worker("from-toml", "--config", str(toml))
    cluster.env["SHARDCTL_WORKER_CAPACITY"] = "4"
    try:
        cluster.start_worker("from-env", "--config", str(toml))
        cluster.start_worker("from-flag", "--config", str(toml), "--capacity", "5")
    finally:
        del cluster.env["SHARDCTL_WORKER_CAPACITY"]

    def three() -> dict[str, WorkerRecord] | None:
        found = cluster.workers()
        return found if len(found) == 3 else None

    records = wait_for("three workers registered", three)
    assert {wid: r.capacity for wid, r in records.items()} == {
        "from-toml": 3,
        "from-env": 4,
        "from-flag": 5,
    }
    assert {r.restart_grace for r in records.values()} == {7.5}


def test_an_unknown_worker_setting_stops_the_process_naming_it(
    cluster: Cluster, tmp_path: Path
) -> None:
    toml = tmp_path / "shardctl.toml"
    toml.write_text("[worker]\nbatch_sise = 10\n")
    proc = cluster.start_worker("typo", "--config", str(toml))
    assert proc.wait(60) == 2
    log = cluster.log_text("typo")
    assert "worker.batch_sise: unknown setting" in log
    assert "Traceback" not in log
    assert cluster.workers() == {}
