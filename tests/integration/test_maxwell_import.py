"""`shardctl cdc import-maxwell`: Maxwell's stored position becomes our checkpoint.

The `positions` table is created exactly as Maxwell's schema defines it
(zendesk/maxwell, src/main/resources/sql/maxwell_schema.sql), and filled as
Maxwell's MysqlPositionStore does: one row per (server_id, client_id), the
server_id being the source server's own, the position the end of the last
transaction Maxwell processed. A reader started from the imported checkpoint
publishes every change after Maxwell's position and none before it.
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

# Maxwell's `positions` table, as its schema file defines it.
MAXWELL_POSITIONS_DDL = """
CREATE TABLE IF NOT EXISTS `{db}`.`positions` (
  server_id int unsigned not null,
  binlog_file varchar(255),
  binlog_position int unsigned,
  gtid_set varchar(4096),
  vgtid text charset latin1,
  client_id varchar(255) charset latin1 not null default 'maxwell',
  heartbeat_at bigint null default null,
  last_heartbeat_read bigint null default null,
  primary key(server_id, client_id)
)
"""


def _import(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SHARDCTL, "cdc", "import-maxwell", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _maxwell_schema(conn: Any, db: str, client_id: str, file: str, pos: int) -> None:
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE IF NOT EXISTS `{db}`")
        cur.execute(MAXWELL_POSITIONS_DDL.format(db=db))
        cur.execute("SELECT @@server_id")
        server_id = int(cur.fetchone()[0])
        cur.execute(
            f"REPLACE INTO `{db}`.positions "
            "(server_id, binlog_file, binlog_position, gtid_set, client_id, heartbeat_at) "
            "VALUES (%s, %s, %s, NULL, %s, %s)",
            (server_id, file, pos, client_id, 1_700_000_000_123),
        )
    conn.commit()


def _master_status(conn: Any) -> tuple[str, int]:
    with conn.cursor() as cur:
        cur.execute("SHOW MASTER STATUS")
        file, pos = cur.fetchone()[:2]
    return str(file), int(pos)


@pytest.fixture
def maxwell_db(stack: Any, unique: str) -> Iterator[str]:
    name = f"{unique}_maxwell"
    yield name
    conn = stack.mysql_root()
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        conn.close()


def test_the_reader_resumes_exactly_where_maxwell_stood(
    stack: Any,
    settings: Any,
    unique: str,
    mysql_db: str,
    maxwell_db: str,
    tmp_path: Path,
) -> None:
    conn = stack.mysql_root(mysql_db)
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE moved (id INT PRIMARY KEY)")
            cur.execute("INSERT INTO moved VALUES (777001)")  # Maxwell published this one
        conn.commit()
        file, pos = _master_status(conn)
        _maxwell_schema(conn, maxwell_db, "maxwell-a", file, pos)
        with conn.cursor() as cur:
            cur.execute("INSERT INTO moved VALUES (777002)")  # after Maxwell's position
        conn.commit()
        with conn.cursor() as cur:
            cur.execute("SELECT BINLOG_GTID_POS(%s, %s)", (file, pos))
            gtid_at_position = cur.fetchone()[0]
    finally:
        conn.close()
    env = reader_env(stack, unique, "main", producer="stdout", num_shards=1)
    args = ("--schema-database", maxwell_db, "--client-id", "maxwell-a", "--source", "main")

    done = _import(env, *args)
    assert done.returncode == 0, done.stderr
    assert f"{file}:{pos}" in done.stdout
    checkpoint = stored_checkpoint(settings, "main")
    assert checkpoint is not None
    assert (checkpoint.file, checkpoint.pos, checkpoint.gtid) == (file, pos, gtid_at_position)
    assert checkpoint.ts == 1_700_000_000

    reader = ReaderProcess(env, tmp_path, "r1")
    try:
        out = tmp_path / "r1.out"
        wait_for("the row after Maxwell's position", lambda: "777002" in out.read_text())
    finally:
        assert reader.terminate() == 0, reader.stderr()
    published = out.read_text()
    assert "777002" in published
    assert "777001" not in published

    # A second import would move back the checkpoint the reader has been keeping.
    kept = stored_checkpoint(settings, "main")
    assert kept is not None and kept.position.sort_key() > checkpoint.position.sort_key()
    again = _import(env, *args)
    assert again.returncode == 1
    assert "already has a checkpoint" in again.stderr and "--force" in again.stderr
    assert stored_checkpoint(settings, "main") == kept
    forced = _import(env, *args, "--force")
    assert forced.returncode == 0, forced.stderr
    assert stored_checkpoint(settings, "main") == checkpoint


def test_no_position_for_the_client_id_is_refused(
    stack: Any, settings: Any, unique: str, maxwell_db: str
) -> None:
    conn = stack.mysql_root()
    try:
        file, pos = _master_status(conn)
        _maxwell_schema(conn, maxwell_db, "maxwell-a", file, pos)
    finally:
        conn.close()
    env = reader_env(stack, unique, "main")
    done = _import(env, "--schema-database", maxwell_db, "--client-id", "other", "--source", "main")
    assert done.returncode == 1
    assert "no position for client_id 'other'" in done.stderr
    assert stored_checkpoint(settings, "main") is None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateMariaDB]:
    with private_mariadb(tmp_path_factory.mktemp("mariadb")) as found:
        yield found


def test_a_purged_position_is_refused(
    stack: Any, settings: Any, unique: str, server: PrivateMariaDB
) -> None:
    with server.root() as conn:
        file, pos = _master_status(conn)
        _maxwell_schema(conn, "maxwell", "maxwell-a", file, pos)
        with conn.cursor() as cur:
            cur.execute("FLUSH BINARY LOGS")
        newest, _ = _master_status(conn)
        purge_binlogs_to(conn, newest, file)
    env = reader_env(stack, unique, "main")
    env.pop("SHARDCTL_MYSQL_PASSWORD_FILE", None)
    env.update(server.env())
    done = _import(env, "--client-id", "maxwell-a", "--source", "main")
    assert done.returncode == 3, done.stderr
    assert f"{file}:{pos} is purged" in done.stderr
    assert stored_checkpoint(settings, "main") is None
