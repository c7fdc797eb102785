"""Snapshot modes of the reader (`cdc.snapshot_mode`), like Debezium's `snapshot.mode`.

- `never` (the default): only the snapshots asked for with `shardctl cdc bootstrap`.
- `initial`: on the first start of a source (no checkpoint yet), one incremental
  snapshot of every table the filter includes, then the stream. The requests are
  made before the first checkpoint is stored: a crash in between makes them again
  under the same ids (`initial-<database>.<table>`), which changes nothing.
- `when_needed`: as `initial`, and also when the checkpoint points into purged
  binlogs: the reader stores a new checkpoint at the server's current position
  and snapshots every included table, the recovery an operator would otherwise
  do by hand (`checkpoint reset --to current`, then a bootstrap per table). The
  requests are made first, under ids named after the lost checkpoint, so a crash
  before the new checkpoint is stored makes no second copy.
"""

from __future__ import annotations

import logging
import re
from functools import partial
from typing import Any

import pymysql

from cdc.bootstrap import BootstrapRequest
from cdc.decoding.json_columns import JsonSchemaModel
from cdc.etcd_calls import call_with_retry
from cdc.filtering import Filter
from cdc.options import CdcOptions
from cdc.replication.errors import PurgedBinlogError
from cdc.replication.position import Checkpoint
from cdc.replication.server_check import check_server, current_position
from shardctl.core.etcd.client import EtcdClient
from shardctl.core.etcd.loop_thread import LoopThread
from shardctl.core.keyspace import Keyspace

log = logging.getLogger(__name__)

_SYSTEM_SCHEMAS = ("mysql", "information_schema", "performance_schema", "sys")


def included_tables(connect: dict[str, Any], row_filter: Filter) -> list[tuple[str, str]]:
    """(database, table) of every base table the filter includes, in name order."""
    connection = pymysql.connect(**connect)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES"
                " WHERE TABLE_TYPE = 'BASE TABLE' AND TABLE_SCHEMA NOT IN (%s, %s, %s, %s)"
                " ORDER BY TABLE_SCHEMA, TABLE_NAME",
                _SYSTEM_SCHEMAS,
            )
            rows = [(str(db), str(table)) for db, table in cursor.fetchall()]
    finally:
        connection.close()
    return [(db, table) for db, table in rows if row_filter.includes_table(db, table)]


def request_initial_snapshots(
    loop: LoopThread,
    client: EtcdClient,
    keyspace: Keyspace,
    options: CdcOptions,
    connect: dict[str, Any],
) -> list[BootstrapRequest]:
    """The requests of `snapshot_mode = initial`; see the module docstring."""
    return _request_all(loop, client, keyspace, options, connect, "initial")


def _request_all(
    loop: LoopThread,
    client: EtcdClient,
    keyspace: Keyspace,
    options: CdcOptions,
    connect: dict[str, Any],
    tag: str,
) -> list[BootstrapRequest]:
    prefix = keyspace.cdc_bootstrap_prefix(options.source)
    made: list[BootstrapRequest] = []
    for database, table in included_tables(connect, Filter(options.filter)):
        request = BootstrapRequest(f"{tag}-{database}.{table}", database, table)
        call_with_retry(
            loop,
            partial(client.create_if_absent, prefix + request.id, request.to_json()),
            f"requesting the initial snapshot of {database}.{table}",
        )
        made.append(request)
    return made


def recovery_tag(lost_checkpoint: str) -> str:
    """The id prefix of the snapshots that replace the binlog after `lost_checkpoint`."""
    return "recovery-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", lost_checkpoint).strip("_")


def recover_from_purged(
    loop: LoopThread,
    client: EtcdClient,
    keyspace: Keyspace,
    options: CdcOptions,
    connect: dict[str, Any],
    error: PurgedBinlogError,
) -> Checkpoint:
    """`snapshot_mode = when_needed` after a purged binlog; see the module docstring.
    Requests the snapshots and returns the new checkpoint, for the caller to store."""
    requests = _request_all(loop, client, keyspace, options, connect, recovery_tag(error.where))
    connection = pymysql.connect(**connect)
    try:
        info = check_server(connection, options.server_id)
        position, gtid = current_position(connection, info)
    finally:
        connection.close()
    model = JsonSchemaModel.from_server(partial(pymysql.connect, **connect))
    checkpoint = Checkpoint(
        position.file, position.pos, gtid or None, 0, info.server_id, json_columns=model.state
    )
    log.error(
        "source %s: the checkpoint %s was purged; cdc.snapshot_mode=when_needed: streaming "
        "from %s and snapshotting %d tables: %s",
        options.source,
        error.where,
        checkpoint.describe(),
        len(requests),
        ", ".join(f"{r.database}.{r.table}" for r in requests) or "none",
    )
    return checkpoint
