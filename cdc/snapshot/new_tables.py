"""Tables that come into the filter (`cdc.snapshot_new_tables = true`).

A table the stream starts to publish without having published its rows gets an
incremental snapshot, requested like one of `shardctl cdc bootstrap`:

- **Renamed into the filter** (`RENAME TABLE x.t TO db.t`, `ALTER TABLE ...
  RENAME TO`), from a name the filter excludes to one it includes: its rows were
  written under a name the stream left out. Requested when the stream reads the
  statement, under an id named after it (`renamed-<db>.<table>-<position>`), so
  replaying the statement after a crash makes no second snapshot.
- **Included by a changed filter** on restart: the reader stores the filter it runs
  with (`cdc/<source>/filter`); at the start of its lead, every table the new
  filter includes and the stored one did not is snapshotted (ids
  `filter-<db>.<table>-<crc of the new filter>`), then the new filter is stored.
  With no stored filter (the first run that stores it) nothing is snapshotted.

Not snapshotted: tables **created** while the reader streams, whatever the
CREATE (plain, `LIKE`, `... SELECT`). Every row such a table ever had is in the
binlog after its CREATE (row-based logging writes the rows of CREATE TABLE ...
SELECT as row events), so the stream publishes them as `insert`s, as Maxwell and
Debezium do; a snapshot would only publish them twice. A rename within the filter
is not either: the stream published the table's rows under its old name.
"""

from __future__ import annotations

import logging
import re
import zlib
from functools import partial

from cdc.bootstrap import BootstrapRequest
from cdc.ddl import renamed_tables
from cdc.etcd_calls import call_with_retry
from cdc.filtering import Filter
from cdc.leader_context import LeaderContext
from cdc.replication.transaction import Statement
from cdc.rows import TxnContext
from cdc.snapshot.modes import included_tables
from shardctl.core.etcd.client import Put

log = logging.getLogger(__name__)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def renamed_into(statement: Statement, row_filter: Filter) -> list[tuple[str, str]]:
    """(database, table) of every table the statement renames from a name the filter
    excludes to one it includes."""
    return [
        new
        for old, new in renamed_tables(statement.sql, statement.database)
        if not row_filter.includes_table(*old) and row_filter.includes_table(*new)
    ]


def newly_included(
    tables: list[tuple[str, str]], old: Filter, new: Filter
) -> list[tuple[str, str]]:
    """The tables `new` includes and `old` did not."""
    return [t for t in tables if new.includes_table(*t) and not old.includes_table(*t)]


class NewTables:
    """Requests the snapshots of tables that come into the filter."""

    def __init__(self, context: LeaderContext) -> None:
        self._ctx = context
        self._requests = context.keyspace.cdc_bootstrap_prefix(context.options.source)
        self._filter_key = context.keyspace.cdc_filter(context.options.source)
        self._timeout = 10.0

    def renamed(self, statement: Statement, ctx: TxnContext) -> None:
        """The stream read `statement` (at `ctx`): snapshot what it renamed into the filter."""
        if not self._ctx.options.snapshot_new_tables:
            return
        for database, table in renamed_into(statement, self._ctx.row_filter):
            request_id = f"renamed-{_safe(f'{database}.{table}')}-{_safe(f'{ctx.file}_{ctx.pos}')}"
            self._request(
                BootstrapRequest(request_id, database, table),
                f"renamed into the filter at {ctx.file}:{ctx.pos}",
            )

    def filter_changed(self) -> None:
        """At the start of a lead: snapshot the tables a changed filter now includes,
        then store the filter (always, so that turning the option on later compares
        with the filter of the run before)."""
        current = self._ctx.options.filter or ""
        stored = call_with_retry(
            self._ctx.loop,
            lambda: self._ctx.client.get(self._filter_key),
            f"reading {self._filter_key}",
            timeout_s=self._timeout,
        )
        previous = None if stored is None else stored.value.decode()
        if previous == current:
            return
        if previous is not None and self._ctx.options.snapshot_new_tables:
            tag = f"{zlib.crc32(current.encode()):08x}"
            tables = newly_included(
                included_tables(self._ctx.connect, self._ctx.row_filter),
                Filter(previous or None),
                self._ctx.row_filter,
            )
            for database, table in tables:
                request_id = f"filter-{_safe(f'{database}.{table}')}-{tag}"
                self._request(
                    BootstrapRequest(request_id, database, table),
                    f"included by the changed filter (it was {previous!r})",
                )
        call_with_retry(
            self._ctx.loop,
            lambda: self._ctx.leadership.guarded_txn([Put(self._filter_key, current.encode())]),
            f"storing {self._filter_key}",
            timeout_s=self._timeout,
        )

    def _request(self, request: BootstrapRequest, why: str) -> None:
        result = call_with_retry(
            self._ctx.loop,
            partial(
                self._ctx.client.create_if_absent, self._requests + request.id, request.to_json()
            ),
            f"requesting the snapshot of {request.database}.{request.table}",
            timeout_s=self._timeout,
        )
        if result.created:
            log.info(
                "source %s: snapshot %s of %s.%s requested: the table was %s "
                "(cdc.snapshot_new_tables)",
                self._ctx.options.source,
                request.id,
                request.database,
                request.table,
                why,
            )
