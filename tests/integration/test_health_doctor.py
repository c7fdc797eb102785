"""`shardctl doctor` checks what runs: a coordinator leader, a leading reader per
source, registered workers and an owner for every shard; real processes on the
local stack."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shardctl.core.config import Settings
from tests.conftest import StackHandle
from tests.integration.cdc_support import ReaderProcess, reader_env
from tests.integration.workers_support import delete_cluster, delete_topics
from tests.polling import wait_for

pytestmark = pytest.mark.integration

RUNNING = ("coordinator", "cdc reader", "workers", "shards")


def doctor(env: dict[str, str]) -> tuple[int, dict[str, list[dict[str, Any]]]]:
    result = subprocess.run(
        [sys.executable, "-m", "shardctl.cli.main", "doctor", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    by_check: dict[str, list[dict[str, Any]]] = {}
    for item in json.loads(result.stdout):
        by_check.setdefault(item["check"], []).append(item)
    return result.returncode, by_check


@pytest.fixture
def env(
    stack: StackHandle, settings: Settings, unique: str, mysql_db: str
) -> Iterator[dict[str, str]]:
    yield reader_env(
        stack, unique, unique, kafka_topic=f"{unique}-cdc", producer="stdout",
        filter=f"exclude: *.*, include: {mysql_db}.*",
    )  # fmt: skip
    asyncio.run(delete_cluster(settings))
    delete_topics(stack.kafka_bootstrap, [f"{unique}-cdc"])


def test_doctor_finds_what_does_not_run_then_passes(
    env: dict[str, str], unique: str, tmp_path: Path
) -> None:
    cli = [sys.executable, "-m", "shardctl.cli.main"]
    init = subprocess.run(
        [*cli, "cluster", "init", "--shards", "4", "--topic", f"{unique}-cdc"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr

    code, found = doctor(env)
    assert code == 1
    assert [f["level"] for c in RUNNING for f in found[c]] == ["problem"] * 4
    assert "no coordinator leads" in found["coordinator"][0]["what"]
    assert f"source {unique}: no reader leads" in found["cdc reader"][0]["what"]
    assert "4 of 4 shards have no owner: 0-3" in found["shards"][0]["what"]

    procs: list[subprocess.Popen[bytes]] = []
    reader = ReaderProcess(env, tmp_path, "r1")
    try:
        for args in (
            ["coordinator", "run", "--id", "c1", "--stabilization", "0.2"],
            ["worker", "run", "--handler", "noop", "--id", "w1", "--ttl", "3"],
        ):
            log = (tmp_path / f"{args[0]}.log").open("wb")
            procs.append(
                subprocess.Popen([*cli, *args], env=env, stdout=log, stderr=subprocess.STDOUT)
            )

        def all_ok() -> dict[str, list[dict[str, Any]]] | None:
            code, found = doctor(env)
            return found if code == 0 else None

        found = wait_for("doctor to find everything running", all_ok, 90)
        assert {f["level"] for items in found.values() for f in items} == {"ok"}
        assert found["shards"][0]["what"] == "all 4 shards are owned"
        assert found["coordinator"][0]["what"].startswith("c1 leads")
        assert found["cdc reader"][0]["what"] == f"source {unique}: r1 leads"
    finally:
        reader.kill9()
        for proc in procs:
            proc.kill()
            proc.wait(10)
