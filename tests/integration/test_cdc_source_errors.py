"""Clear errors at start: bad server settings, and a checkpoint in purged binlogs.

These tests change server-wide settings and purge binlogs, so they run against a
MariaDB server of their own, never the shared one.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cdc_support import (
    SHARDCTL,
    PrivateMariaDB,
    ReaderProcess,
    private_mariadb,
    purge_binlogs_to,
    reader_env,
    stored_checkpoint,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateMariaDB]:
    with private_mariadb(tmp_path_factory.mktemp("mariadb")) as found:
        yield found


def _env(stack: Any, server: PrivateMariaDB, cluster: str, **cdc: Any) -> dict[str, str]:
    env = reader_env(stack, cluster, "main", num_shards=2, producer="stdout", **cdc)
    env.pop("SHARDCTL_MYSQL_PASSWORD_FILE", None)
    env.update(server.env())
    return env


@pytest.mark.parametrize(
    ("variable", "bad", "good"),
    [
        ("binlog_row_metadata", "MINIMAL", "FULL"),
        ("binlog_row_image", "MINIMAL", "FULL"),
        ("binlog_format", "STATEMENT", "ROW"),
        ("log_bin_compress", "ON", "OFF"),
    ],
)
def test_bad_server_setting_stops_the_reader_naming_it(
    stack: Any,
    server: PrivateMariaDB,
    unique: str,
    tmp_path: Path,
    variable: str,
    bad: str,
    good: str,
) -> None:
    with server.root() as conn, conn.cursor() as cur:
        cur.execute(f"SET GLOBAL {variable} = '{bad}'")
    try:
        reader = ReaderProcess(_env(stack, server, unique), tmp_path, "bad")
        assert reader.wait(60) == 2
    finally:
        with server.root() as conn, conn.cursor() as cur:
            cur.execute(f"SET GLOBAL {variable} = '{good}'")
    err = reader.stderr()
    assert f"{variable}: the source server has {variable}='{bad}'" in err
    assert "Traceback" not in err


def test_own_server_id_is_refused(
    stack: Any, server: PrivateMariaDB, unique: str, tmp_path: Path
) -> None:
    reader = ReaderProcess(_env(stack, server, unique, server_id=7), tmp_path, "sid")
    assert reader.wait(60) == 2
    assert "cdc.server_id" in reader.stderr()


def test_bad_option_is_refused_naming_it(stack: Any, unique: str) -> None:
    env = reader_env(stack, unique, "main", producer_partition_by="random")
    done = subprocess.run(
        [SHARDCTL, "cdc", "run"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "cdc.producer_partition_by" in done.stderr


@pytest.mark.parametrize("mode", ["file_pos", "gtid"])
def test_purged_binlog_gives_position_and_recovery_command(
    stack: Any, settings: Any, server: PrivateMariaDB, unique: str, tmp_path: Path, mode: str
) -> None:
    db = f"p_{unique}"
    with server.root() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {db}")
        cur.execute(f"CREATE TABLE {db}.t (id INT PRIMARY KEY)")
    env = _env(stack, server, unique, mode=mode)
    reader = ReaderProcess(env, tmp_path, "first")
    wait_for("initial checkpoint", lambda: stored_checkpoint(settings, "main"))
    with server.root() as conn, conn.cursor() as cur:
        cur.execute(f"INSERT INTO {db}.t VALUES (1)")
    wait_for(
        "checkpoint after the insert",
        lambda: (cp := stored_checkpoint(settings, "main")) and cp.event_id,
    )
    assert reader.terminate() == 0, reader.stderr()
    checkpoint = stored_checkpoint(settings, "main")
    assert checkpoint is not None

    with server.root() as conn, conn.cursor() as cur:
        cur.execute("FLUSH BINARY LOGS")
        cur.execute(f"INSERT INTO {db}.t VALUES (2)")
        cur.execute("FLUSH BINARY LOGS")
        cur.execute("SHOW MASTER STATUS")
        newest = cur.fetchone()[0]
        purge_binlogs_to(conn, newest, checkpoint.file)

    again = ReaderProcess(env, tmp_path, "second")
    assert again.wait(60) == 3
    err = again.stderr()
    assert checkpoint.describe() in err
    assert "shardctl cdc checkpoint reset --source main --to current" in err
    assert "Traceback" not in err

    # The recovery command works, and the reader then starts.
    reset = subprocess.run(
        [SHARDCTL, "cdc", "checkpoint", "reset", "--source", "main", "--to", "current"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert reset.returncode == 0, reset.stderr
    third = ReaderProcess(env, tmp_path, "third")
    wait_for("reader leading again", lambda: "leads source main" in third.stderr())
    assert third.proc.poll() is None
    assert third.terminate() == 0, third.stderr()
