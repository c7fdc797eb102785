"""An incremental snapshot whose server connection is lost (killed on the server)
reads its chunk again on a new connection and goes on: it ends done, the consumer
ends equal to the table, and no row is published twice."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from shardctl.core.config import Settings
from tests.integration.cdc_support import wait_for
from tests.integration.test_cdc_snapshot import (
    _applied,
    _cli,
    _fill,
    _in_state,
    _marker_ids,
    _read_table,
    _request_id,
    _start_reader,
    _truth,
)

pytestmark = pytest.mark.integration


def _kill_reader_connections(stack: Any) -> int:
    """Kill every connection of the reader's server user but its binlog stream (the
    snapshot's among them); how many."""
    user = stack.env()["SHARDCTL_MYSQL_USER"]
    with stack.mysql_root() as root, root.cursor() as cur:
        cur.execute(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s"
            " AND COMMAND NOT LIKE 'Binlog Dump%%'",
            (user,),
        )
        ids = [int(row[0]) for row in cur.fetchall()]
        for connection_id in ids:
            cur.execute(f"KILL {connection_id}")
    return len(ids)


def test_a_lost_server_connection_does_not_fail_the_snapshot(
    stack: Any, settings: Settings, unique: str, mysql_db: str, tmp_path: Path
) -> None:
    conn = stack.mysql_root(mysql_db)
    _fill(conn, "slow", 1500)
    env, reader = _start_reader(stack, settings, unique, mysql_db, tmp_path, snapshot_chunk_size=50)
    try:
        request = _request_id(_cli(env, f"{mysql_db}.slow", "--no-wait", "--rows-per-s", "400"))
        for chunks in (2, 8):
            wait_for(
                f"{chunks} chunks", lambda n=chunks: _in_state(settings, request, "running", n)
            )
            assert _kill_reader_connections(stack) > 0
        done = wait_for("done", lambda: _in_state(settings, request, "done"), timeout=90)
        records = _read_table(stack, unique, mysql_db, "slow")
    finally:
        assert reader.terminate() == 0, reader.stderr()
    assert done.rows_done == 1500
    assert "connection was lost" in reader.stderr()
    assert _applied(records, _marker_ids(records)) == _truth(stack, mysql_db, "slow")
    inserts = Counter(r.value["event_id"] for r in records if r.value["type"] == "bootstrap-insert")
    assert len(inserts) == 1500 and set(inserts.values()) == {1}
