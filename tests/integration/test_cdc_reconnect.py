"""A lost replication connection costs nothing: the reader reconnects at a transaction
boundary, loses no row and publishes none twice (the process never restarts)."""

from __future__ import annotations

import secrets
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cdc_support import (
    ReaderProcess,
    TopicReader,
    reader_env,
    stored_checkpoint,
    wait_for,
)
from tests.integration.test_cdc_crash import SHARDS, Load, _inserted_ids, _start_options

pytestmark = pytest.mark.integration


def _kill_connections(stack: Any, user: str) -> int:
    killed = 0
    with stack.mysql_root() as conn, conn.cursor() as cur:
        cur.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s", (user,))
        for (conn_id,) in cur.fetchall():
            try:
                cur.execute(f"KILL CONNECTION {int(conn_id)}")
                killed += 1
            except Exception:  # the connection ended between the list and the kill
                continue
    return killed


def _binlog_streams(stack: Any, user: str) -> set[int]:
    """Connection ids of ``user``'s binlog streams (the reader's replica connections)."""
    with stack.mysql_root() as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT ID FROM information_schema.PROCESSLIST"
            " WHERE USER = %s AND COMMAND LIKE 'Binlog Dump%%'",
            (user,),
        )
        return {int(conn_id) for (conn_id,) in cur.fetchall()}


def _cut_streams(stack: Any, user: str, cuts: int) -> int:
    """Cut the reader's binlog stream ``cuts`` times, each time only after the reader
    has reconnected (a new stream exists), so that no cut lands in a reconnect backoff
    and is wasted. Returns the number of streams cut."""
    cut: set[int] = set()

    def new_stream() -> set[int] | None:
        return _binlog_streams(stack, user) - cut or None

    for n in range(cuts):
        fresh = wait_for(f"the reader's stream after cut {n}", new_stream, timeout=60)
        _kill_connections(stack, user)
        cut.update(fresh)
    return len(cut)


@pytest.mark.parametrize("mode", ["file_pos", "gtid"])
def test_lost_connection_loses_and_repeats_nothing(
    stack: Any, settings: Any, unique: str, mysql_db: str, tmp_path: Path, mode: str
) -> None:
    user, password = f"u_{unique}", secrets.token_hex(8)
    with stack.mysql_root() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{password}'")
        cur.execute(
            f"GRANT SELECT, REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO '{user}'@'127.0.0.1'"
        )
    # Transactions of many rows events, so that some kills land inside one.
    load = Load(stack, mysql_db, rows_per_txn=400)
    options = _start_options(stack, unique, mysql_db)
    if mode == "gtid":
        with stack.mysql_root() as conn, conn.cursor() as cur:
            cur.execute("SELECT @@GLOBAL.gtid_binlog_pos")
            options["start_position"] = f"gtid:{cur.fetchone()[0]}"
    env = reader_env(stack, unique, "main", mode=mode, **options)
    env.pop("SHARDCTL_MYSQL_PASSWORD_FILE", None)
    env.update({"SHARDCTL_MYSQL_USER": user, "SHARDCTL_MYSQL_PASSWORD": password})
    reader = ReaderProcess(env, tmp_path, "reader")
    try:
        wait_for("initial checkpoint", lambda: stored_checkpoint(settings, "main"))
        load.start()
        # Six cuts, each after the reader has reconnected from the previous one; the
        # wait below proves it reconnected after the last one too.
        _cut_streams(stack, user, cuts=6)
        wait_for("the reader's stream after the last cut", lambda: _binlog_streams(stack, user))
        load.stop()
        topic = TopicReader(stack.kafka_bootstrap, f"{unique}_load_t", SHARDS)
        records = topic.read_until(lambda r: load.committed <= _inserted_ids(r), timeout=90)
        topic.close()
        assert reader.proc.poll() is None, reader.stderr()
    finally:
        assert reader.terminate() == 0, reader.stderr()
        with stack.mysql_root() as conn, conn.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS '{user}'@'127.0.0.1'")
    assert load.committed <= _inserted_ids(records)
    repeated = [eid for eid, n in Counter(r.value["event_id"] for r in records).items() if n > 1]
    assert repeated == []


class _KillInsideTransaction:
    """Row decoding that, at the first rows event it sees, kills the replication
    connection: the stream is then cut inside a transaction, deterministically."""

    def __init__(self, inner: Any, kill: Any) -> None:
        self.inner = inner
        self.kill = kill
        self.killed = False

    def on_table_map(self, event: Any, where: str) -> None:
        self.inner.on_table_map(event, where)

    def on_rotate(self, next_file: str) -> None:
        self.inner.on_rotate(next_file)

    def decode_rows(self, event: Any, where: str) -> Any:
        if not self.killed:
            self.killed = True
            self.kill()
        return self.inner.decode_rows(event, where)


@pytest.mark.parametrize("mode", ["file_pos", "gtid"])
def test_cut_inside_a_transaction_restarts_it_from_its_first_event(
    stack: Any, unique: str, mysql_db: str, mode: str
) -> None:
    import pymysql

    from cdc.decoding import BinlogDecoder
    from cdc.filtering import Filter
    from cdc.replication.decoding import FilteredDecoding
    from cdc.replication.position import Checkpoint
    from cdc.replication.source import BinlogSource, SourceOptions
    from cdc.replication.transaction import Transaction

    user, password = f"u_{unique}", secrets.token_hex(8)
    with stack.mysql_root() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{password}'")
        cur.execute(
            f"GRANT SELECT, REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO '{user}'@'127.0.0.1'"
        )
        cur.execute(f"CREATE TABLE `{mysql_db}`.big (id INT PRIMARY KEY, pad VARCHAR(200))")
        cur.execute("SHOW MASTER STATUS")
        file, pos = cur.fetchone()[:2]
        cur.execute("SELECT @@GLOBAL.gtid_binlog_pos")
        gtid = cur.fetchone()[0]
        # One transaction of many rows events, larger than the socket buffers, so
        # that the cut really falls inside it.
        cur.execute("BEGIN")
        for first in range(0, 40000, 500):
            cur.execute(
                f"INSERT INTO `{mysql_db}`.big VALUES "
                + ",".join(f"({i}, REPEAT('p', 150))" for i in range(first, first + 500))
            )
        cur.execute("COMMIT")
    connect = {
        "host": stack.mysql_host,
        "port": stack.mysql_port,
        "user": user,
        "password": password,
    }
    decoding = _KillInsideTransaction(
        FilteredDecoding(BinlogDecoder(), Filter(f"exclude: *.*, include: {mysql_db}.big")),
        lambda: _kill_connections(stack, user),
    )
    source = BinlogSource(
        SourceOptions(
            source="t",
            connect=connect,
            server_id=20_000 + int(unique[1:7], 16),
            mode=mode,
            heartbeat_s=0.5,
        ),
        decoding,
        Checkpoint(str(file), int(pos), gtid, 0, 1),
    )
    rows: list[int] = []
    try:
        for item in source:
            if isinstance(item, Transaction):
                rows.extend(c.row.data["id"] for c in item.changes)
            elif rows:
                break  # idle after our transaction
    finally:
        source.close()
        with stack.mysql_root() as conn, conn.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS '{user}'@'127.0.0.1'")
        del pymysql
    assert decoding.killed and source.reconnects >= 1
    assert rows == list(range(40000))  # the whole transaction, once, in order
