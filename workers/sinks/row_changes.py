"""A batch's row writes for the SQL sinks: folded per primary key, then written with
multi-row statements.

Per target table and primary key value, the changes of one batch fold into at most
two writes, done in this order:

    delete   the key had a delete among its changes (a DELETE, or an update that
             moved the row off this key): DELETE it first
    image    the last image written after that delete; an upsert that follows
             another merges into it (its columns over the earlier ones): one upsert

So the target ends exactly as if every change had been applied in turn, with at
most one DELETE and one upsert per row. The writes then go out grouped: the DELETEs
of a table in one statement (`primary key IN (...)`), then the upserts of a table
and column list in one multi-row INSERT (`ON CONFLICT ... DO UPDATE` /
`ON DUPLICATE KEY UPDATE`), cut into chunks a statement can hold. A dialect with
a bulk path (PostgreSQL) writes a group of at least its `bulk_rows` rows in bulk
instead: COPY into a temporary table, then one merge statement.

Without folding (`fold_changes = false`) every change stays a write of its own, so
a trigger or an audit table on the target sees each one: the batch is cut into runs
in which no key repeats, and each run is written the same way, run after run.

Keys are compared by the values the event carries (after conversion for the target
column), which are the values the source stored.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import chain
from typing import Any

from workers.sinks.sql_common import Dialect

# (quoted table name, primary key columns, primary key values)
RowKey = tuple[str, tuple[str, ...], tuple[Any, ...]]

# A statement's text stays well below the servers' packet limits (MariaDB's
# max_allowed_packet is 16 MiB by default).
MAX_STATEMENT_BYTES = 4 << 20


class _Write:
    __slots__ = ("delete", "image")

    def __init__(self) -> None:
        self.delete = False
        self.image: dict[str, Any] | None = None


class RowChanges:
    """The row writes of one batch, in the order they must reach the target."""

    def __init__(self, fold: bool = True) -> None:
        self.fold = fold
        self._runs: list[dict[RowKey, _Write]] = [{}]

    def _slot(self, key: RowKey) -> _Write:
        run = self._runs[-1]
        found = run.get(key)
        if found is None:
            found = run[key] = _Write()
        elif not self.fold:
            # The key repeats: its next write goes into a new run, after this one.
            found = _Write()
            self._runs.append({key: found})
        return found

    def delete(self, table: str, primary_key: Sequence[str], values: Sequence[Any]) -> None:
        """The row of `table` whose primary key holds `values` is deleted."""
        write = self._slot((table, tuple(primary_key), tuple(values)))
        write.delete = True
        write.image = None

    def upsert(
        self, table: str, primary_key: Sequence[str], image: dict[str, Any], owned: bool = False
    ) -> None:
        """`image` (column -> value, the primary key among them) is written to `table`;
        `owned`: the caller gives `image` away (it is kept, not copied)."""
        key: RowKey
        if len(primary_key) == 1:
            key = (table, (primary_key[0],), (image[primary_key[0]],))
        else:
            key = (table, tuple(primary_key), tuple([image[c] for c in primary_key]))
        write = self._slot(key)
        if write.image is None:
            write.image = image if owned else dict(image)
        else:
            write.image = {**write.image, **image}

    def writes(self) -> int:
        """How many row writes (DELETEs and upserts) the statements make."""
        return sum(w.delete + (w.image is not None) for run in self._runs for w in run.values())

    def _groups(
        self,
    ) -> Iterator[tuple[str, str, tuple[str, ...], tuple[str, ...], list[tuple[Any, ...]]]]:
        """("delete" | "upsert", table, primary key, columns, rows) in the order to write
        them: per run, the DELETEs of each table, then the upserts of each table and
        column list (for a delete, columns is the primary key and rows its values)."""
        for run in self._runs:
            deletes: dict[tuple[str, tuple[str, ...]], list[tuple[Any, ...]]] = {}
            upserts: dict[tuple[str, tuple[str, ...], tuple[str, ...]], list[tuple[Any, ...]]] = {}
            for (table, primary_key, values), write in run.items():
                if write.delete:
                    deletes.setdefault((table, primary_key), []).append(values)
                if write.image is not None:
                    columns = tuple(write.image)
                    upserts.setdefault((table, primary_key, columns), []).append(
                        tuple(write.image.values())
                    )
            for (table, primary_key), keys in deletes.items():
                yield "delete", table, primary_key, primary_key, keys
            for (table, primary_key, columns), rows in upserts.items():
                yield "upsert", table, primary_key, columns, rows

    def statements(self, dialect: Dialect) -> Iterator[tuple[str, list[Any]]]:
        """(SQL, parameters) for every statement, in the order to execute them, all as
        multi-row statements (what `write` sends when the dialect has no bulk path)."""
        for kind, table, primary_key, columns, rows in self._groups():
            if kind == "delete":
                yield from delete_statements(dialect, table, primary_key, rows)
            else:
                yield from upsert_statements(
                    dialect, table, columns, primary_key, _updates(columns, primary_key), rows
                )

    def write(self, dialect: Dialect, cur: Any) -> None:
        """Write every change through `cur`: a group of at least the dialect's
        `bulk_rows` rows through its bulk path (PostgreSQL: COPY and one merge), the
        others as multi-row statements."""
        for kind, table, primary_key, columns, rows in self._groups():
            if kind == "delete":
                write_deletes(dialect, cur, table, primary_key, rows)
            else:
                updates = _updates(columns, primary_key)
                write_upserts(dialect, cur, table, columns, primary_key, updates, rows)


def _updates(columns: Sequence[str], primary_key: Sequence[str]) -> list[str]:
    """The columns an upsert sets on a conflict (a key-only row sets its first column)."""
    return [c for c in columns if c not in primary_key] or list(columns[:1])


def upsert_statements(
    dialect: Dialect,
    table: str,
    columns: Sequence[str],
    keys: Sequence[str],
    updates: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
) -> Iterator[tuple[str, list[Any]]]:
    """Multi-row upserts of `rows` (values of `columns`) into `table`."""
    for chunk in chunks(rows, dialect):
        yield (
            dialect.upsert(table, columns, keys, updates, rows=len(chunk)),
            list(chain.from_iterable(chunk)),
        )


def delete_statements(
    dialect: Dialect, table: str, keys: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> Iterator[tuple[str, list[Any]]]:
    """Multi-row DELETEs of the rows of `table` whose primary key `keys` holds `rows`."""
    for chunk in chunks(rows, dialect):
        yield dialect.delete(table, keys, len(chunk)), list(chain.from_iterable(chunk))


def write_upserts(
    dialect: Dialect,
    cur: Any,
    table: str,
    columns: Sequence[str],
    keys: Sequence[str],
    updates: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
) -> None:
    """Upsert `rows` into `table`: in bulk if there are enough, else multi-row."""
    if dialect.bulk_rows is not None and len(rows) >= dialect.bulk_rows:
        dialect.bulk_upsert(cur, table, columns, keys, updates, rows)
        return
    for statement, params in upsert_statements(dialect, table, columns, keys, updates, rows):
        dialect.execute(cur, statement, params)


def write_deletes(
    dialect: Dialect, cur: Any, table: str, keys: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> None:
    """Delete the rows of `table` whose key `keys` holds one of `rows`."""
    if dialect.bulk_rows is not None and len(rows) >= dialect.bulk_rows:
        dialect.bulk_delete(cur, table, keys, rows)
        return
    for statement, params in delete_statements(dialect, table, keys, rows):
        dialect.execute(cur, statement, params)


def _size(values: Sequence[Any]) -> int:
    """About the length of a row's values, or a run of rows, in a statement (its
    repr: one C call)."""
    return len(repr(values))


def chunks(
    rows: Sequence[tuple[Any, ...]], dialect: Dialect
) -> Iterator[Sequence[tuple[Any, ...]]]:
    """`rows` cut into runs one statement can hold: at most the dialect's rows per
    statement and parameters, and about MAX_STATEMENT_BYTES of values."""
    if not rows:
        return
    width = max(len(rows[0]), 1)
    limit = max(1, min(dialect.rows_per_statement, dialect.max_parameters // width))
    start = 0
    while start < len(rows):
        chunk = rows[start : start + limit]
        # One repr of the whole run measures it; only a run too long is measured
        # row by row, to cut it where it passes the limit.
        if len(chunk) > 1 and _size(chunk) > MAX_STATEMENT_BYTES:
            size = 0
            for n, row in enumerate(chunk):
                size += _size(row)
                if n > 0 and size > MAX_STATEMENT_BYTES:
                    chunk = chunk[:n]
                    break
        yield chunk
        start += len(chunk)
