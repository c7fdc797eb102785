"""Which columns hold JSON when the binlog cannot say (MariaDB).

MariaDB's JSON type is an alias: the column is LONGTEXT with a column-level
`CHECK (json_valid(`col`))` constraint, and the binlog's TABLE_MAP shows a
plain BLOB with a text charset. The rule used here:

    A BLOB/TEXT column is JSON when the table has a CHECK constraint whose
    whole clause is json_valid(`that column`) (this is what MariaDB creates for
    a JSON column), or when the column is listed explicitly in the reader's
    settings.

The constraints are read from information_schema.CHECK_CONSTRAINTS when a
table is first seen, and read again after a DDL statement touches the table
(the reader calls `invalidate`). A JSON column's text is then parsed; a value
that is not valid JSON stops the reader rather than being passed on as text.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

_JSON_VALID = re.compile(r"^\s*json_valid\(\s*`((?:[^`]|``)+)`\s*\)\s*$", re.IGNORECASE)

_QUERY = (
    "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS "
    "WHERE CONSTRAINT_SCHEMA = %s AND TABLE_NAME = %s"
)


class JsonColumnSource(Protocol):
    """Names the JSON columns of a table."""

    def json_columns(self, database: str, table: str) -> frozenset[str]: ...

    def invalidate(self, database: str, table: str | None = None) -> None: ...


def json_column_of_check(clause: str) -> str | None:
    """The column a `json_valid(`col`)` check clause guards, else None."""
    match = _JSON_VALID.match(clause)
    return match.group(1).replace("``", "`") if match else None


class StaticJsonColumns:
    """JSON columns given explicitly: {"db.table": ["col", ...]}."""

    def __init__(self, columns: Mapping[str, Iterable[str]] | None = None) -> None:
        self._columns = {key: frozenset(cols) for key, cols in (columns or {}).items()}

    def json_columns(self, database: str, table: str) -> frozenset[str]:
        return self._columns.get(f"{database}.{table}", frozenset())

    def invalidate(self, database: str, table: str | None = None) -> None:
        """Explicit settings do not change with DDL."""


class CheckConstraintJsonColumns:
    """JSON columns found from json_valid() CHECK constraints, plus explicit ones.

    `connect` returns a new DB-API connection (PyMySQL) to the source server;
    it is opened per lookup and closed again, so no idle session lingers.
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        explicit: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        self._connect = connect
        self._explicit = StaticJsonColumns(explicit)
        self._cache: dict[tuple[str, str], frozenset[str]] = {}
        self._lock = threading.Lock()

    def json_columns(self, database: str, table: str) -> frozenset[str]:
        key = (database, table)
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            return cached
        found = self._lookup(database, table) | self._explicit.json_columns(database, table)
        with self._lock:
            self._cache[key] = found
        return found

    def invalidate(self, database: str, table: str | None = None) -> None:
        with self._lock:
            for key in list(self._cache):
                if key[0] == database and (table is None or key[1] == table):
                    del self._cache[key]

    def _lookup(self, database: str, table: str) -> frozenset[str]:
        conn = self._connect()
        try:
            with conn.cursor() as cursor:
                cursor.execute(_QUERY, (database, table))
                rows = cursor.fetchall()
        finally:
            conn.close()
        names = (json_column_of_check(str(row[0])) for row in rows)
        return frozenset(name for name in names if name is not None)
