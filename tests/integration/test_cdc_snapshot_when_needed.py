"""`snapshot_mode = when_needed`: a checkpoint in purged binlogs restarts the stream at
the server's current position and snapshots every included table, instead of
stopping. Runs against a MariaDB server of its own (it purges binlogs)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cdc.snapshot.modes import recovery_tag
from cdc.snapshot.progress import Progress
from shardctl.core.keyspace import Keyspace
from tests.integration.cdc_support import (
    PrivateMariaDB,
    ReaderProcess,
    etcd_get,
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


def _done(settings: Any, request_id: str) -> bool:
    raw = etcd_get(settings, Keyspace.of(settings).cdc_snapshot_prefix("main") + request_id)
    return raw is not None and Progress.from_json(raw).state.value == "done"


def test_when_needed_recovers_from_a_purged_binlog_with_a_snapshot(
    stack: Any, settings: Any, server: PrivateMariaDB, unique: str, tmp_path: Path
) -> None:
    db = f"w_{unique}"
    with server.root() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {db}")
        cur.execute(f"CREATE TABLE {db}.t (id INT PRIMARY KEY, v INT)")
        cur.execute(f"INSERT INTO {db}.t SELECT seq, seq FROM {db}.seq_1_to_40")
    env = reader_env(
        stack,
        unique,
        "main",
        num_shards=2,
        producer="stdout",
        filter=f"exclude: *.*, include: {db}.*",
        snapshot_mode="when_needed",
        snapshot_chunk_size=16,
    )
    env.pop("SHARDCTL_MYSQL_PASSWORD_FILE", None)
    env.update(server.env())
    first = ReaderProcess(env, tmp_path, "first")
    # A first start snapshots the tables too (as `initial`).
    wait_for("the first start's snapshot", lambda: _done(settings, f"initial-{db}.t"), timeout=60)
    assert first.terminate() == 0, first.stderr()
    checkpoint = stored_checkpoint(settings, "main")
    assert checkpoint is not None

    with server.root() as conn, conn.cursor() as cur:
        cur.execute("FLUSH BINARY LOGS")
        # Changes that are lost with the purged binlog: only a snapshot brings them.
        cur.execute(f"UPDATE {db}.t SET v = v * 10 WHERE id <= 20")
        cur.execute(f"INSERT INTO {db}.t VALUES (41, 41)")
        cur.execute("FLUSH BINARY LOGS")
        cur.execute("SHOW MASTER STATUS")
        newest = cur.fetchone()[0]
        purge_binlogs_to(conn, newest, checkpoint.file)

    second = ReaderProcess(env, tmp_path, "second")
    try:
        request = f"{recovery_tag(checkpoint.describe())}-{db}.t"
        wait_for("the recovery snapshot", lambda: _done(settings, request), timeout=60)
        restarted = stored_checkpoint(settings, "main")
        assert restarted is not None and restarted.file == newest
        assert second.proc.poll() is None
    finally:
        assert second.terminate() == 0, second.stderr()
    assert "was purged; cdc.snapshot_mode=when_needed" in second.stderr()
    out = (tmp_path / "second.out").read_text().splitlines()
    rows = {
        doc["data"]["id"]: doc["data"]["v"]
        for doc in map(json.loads, out)
        if doc.get("type") == "bootstrap-insert"
    }
    with server.root() as conn, conn.cursor() as cur:
        cur.execute(f"SELECT id, v FROM {db}.t")
        assert rows == {int(i): int(v) for i, v in cur.fetchall()}
