"""Snapshot modes of the reader (`cdc.snapshot_mode`), like Debezium's `snapshot.mode`.

- `never` (the default): only the snapshots asked for with `shardctl cdc bootstrap`.
- `initial`: on the first start of a source (no checkpoint yet), one incremental
  snapshot of every table the filter includes, then the stream. The requests are
  made before the first checkpoint is stored: a crash in between makes them again
  under the same ids (`initial-<database>.<table>`), which changes nothing.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import pymysql

from cdc.bootstrap import BootstrapRequest
from cdc.etcd_calls import call_with_retry
from cdc.filtering import Filter
from cdc.options import CdcOptions
from shardctl.etcd.client import EtcdClient
from shardctl.etcd.loop_thread import LoopThread
from shardctl.keyspace import Keyspace

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
    prefix = keyspace.cdc_bootstrap_prefix(options.source)
    made: list[BootstrapRequest] = []
    for database, table in included_tables(connect, Filter(options.filter)):
        request = BootstrapRequest(f"initial-{database}.{table}", database, table)
        call_with_retry(
            loop,
            partial(client.create_if_absent, prefix + request.id, request.to_json()),
            f"requesting the initial snapshot of {database}.{table}",
        )
        made.append(request)
    return made
