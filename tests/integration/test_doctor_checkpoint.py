"""`shardctl doctor` on a source's checkpoint, against a MariaDB of the test's own: the
checkpoint's binlog file is on the server and the retention covers its age, then the
file is purged and doctor says so."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shardctl.core.config import Settings
from tests.conftest import StackHandle
from tests.integration.cdc_support import (
    ReaderProcess,
    private_mariadb,
    purge_binlogs_to,
    reader_env,
    stored_checkpoint,
)
from tests.integration.workers_support import delete_cluster, delete_topics
from tests.polling import wait_for

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "shardctl.cli.main"]


def doctor(env: dict[str, str]) -> tuple[int, dict[str, list[dict[str, Any]]]]:
    result = subprocess.run(
        [*CLI, "doctor", "--json"], env=env, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    by_check: dict[str, list[dict[str, Any]]] = {}
    for item in json.loads(result.stdout):
        by_check.setdefault(item["check"], []).append(item)
    return result.returncode, by_check


def test_doctor_checks_the_checkpoint_file_and_the_retention(
    stack: StackHandle, settings: Settings, unique: str, tmp_path: Path
) -> None:
    topic = f"{unique}-cdc"
    with private_mariadb(tmp_path / "db") as db:
        env = {**reader_env(stack, unique, unique, producer="stdout"), **db.env()}
        try:
            init = subprocess.run(
                [*CLI, "cluster", "init", "--shards", "2", "--topic", topic],
                env=env, capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            assert init.returncode == 0, init.stderr
            with db.root() as conn, conn.cursor() as cur:
                cur.execute("SET GLOBAL binlog_expire_logs_seconds = 86400")
            reader = ReaderProcess(env, tmp_path, "r1")
            try:
                checkpoint = wait_for(
                    "a checkpoint", lambda: stored_checkpoint(settings, unique), 60
                )
            finally:
                reader.terminate()

            _, found = doctor(env)
            assert [f["level"] for f in found["checkpoint"]] == ["ok"]
            assert found["checkpoint"][0]["what"] == (
                f"source {unique}: {checkpoint.file}:{checkpoint.pos} is on the server"
            )
            retention = found["binlog retention"]
            assert [f["level"] for f in retention] == ["ok"]
            assert "the server purges binlogs after 86,400 s" in retention[0]["what"]

            with db.root() as conn:
                with conn.cursor() as cur:
                    cur.execute("FLUSH BINARY LOGS")
                    cur.execute("SHOW MASTER STATUS")
                    newest = str(cur.fetchone()[0])
                purge_binlogs_to(conn, newest, checkpoint.file)

            code, found = doctor(env)
            assert code == 1
            assert [f["level"] for f in found["checkpoint"]] == ["problem"]
            assert f"no longer has {checkpoint.file}" in found["checkpoint"][0]["what"]
            assert "binlog retention" not in found
        finally:
            asyncio.run(delete_cluster(settings))
            delete_topics(stack.kafka_bootstrap, [topic])
