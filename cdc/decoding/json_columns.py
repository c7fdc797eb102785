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

import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from cdc.ddl import _split_top, classify, normalize

log = logging.getLogger(__name__)

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


# --- the schema model as of a binlog position ---------------------------------------

JsonModelState = tuple[tuple[str, str, tuple[str, ...]], ...]

_IDENT = r"(?:`(?:[^`]|``)+`|[A-Za-z0-9_$\u0080-\uffff]+)"
_JSON_TYPE = re.compile(r"^\s*JSON\b", re.IGNORECASE)
_INLINE_JSON_CHECK = re.compile(
    r"\bCHECK\s*\(\s*json_valid\s*\(\s*(" + _IDENT + r")\s*\)\s*\)", re.IGNORECASE
)
_TABLE_CHECK = re.compile(
    r"^(?:CONSTRAINT(?:\s+"
    + _IDENT
    + r")?\s+)?CHECK\s*\(\s*json_valid\s*\(\s*("
    + _IDENT
    + r")\s*\)\s*\)",
    re.IGNORECASE,
)
_KEYS = re.compile(
    r"^(?:(?:CONSTRAINT(?:\s+" + _IDENT + r")?\s+)?(?:PRIMARY|UNIQUE|FOREIGN)\b"
    r"|INDEX\b|KEY\b|FULLTEXT\b|SPATIAL\b|PERIOD\b|CHECK\b|CONSTRAINT\b)",
    re.IGNORECASE,
)
_CREATE_BODY = re.compile(
    r"^CREATE\s+(?:OR\s+REPLACE\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    + rf"{_IDENT}(?:\s*\.\s*{_IDENT})?\s*(.*)$",
    re.IGNORECASE | re.DOTALL,
)
_ALTER_BODY = re.compile(
    r"^ALTER\s+(?:ONLINE\s+)?(?:IGNORE\s+)?TABLE\s+(?:IF\s+EXISTS\s+)?"
    + rf"{_IDENT}(?:\s*\.\s*{_IDENT})?\s*(.*)$",
    re.IGNORECASE | re.DOTALL,
)
_LIKE = re.compile(rf"^\(?\s*LIKE\s+({_IDENT})(?:\s*\.\s*({_IDENT}))?\s*\)?\s*$", re.IGNORECASE)
_COLUMN_DEF = re.compile(rf"^({_IDENT})\s+(.*)$", re.DOTALL)
_ADD = re.compile(r"^ADD\s+(?:COLUMN\s+)?(?:IF\s+NOT\s+EXISTS\s+)?(.*)$", re.IGNORECASE | re.DOTALL)
_MODIFY = re.compile(r"^MODIFY\s+(?:COLUMN\s+)?(?:IF\s+EXISTS\s+)?(.*)$", re.IGNORECASE | re.DOTALL)
_CHANGE = re.compile(
    rf"^CHANGE\s+(?:COLUMN\s+)?(?:IF\s+EXISTS\s+)?({_IDENT})\s+(.*)$", re.IGNORECASE | re.DOTALL
)
_DROP_COLUMN = re.compile(
    rf"^DROP\s+(?:COLUMN\s+)?(?:IF\s+EXISTS\s+)?({_IDENT})\s*(?:RESTRICT|CASCADE)?$",
    re.IGNORECASE,
)
_DROP_OTHER = re.compile(r"^DROP\s+(?:PRIMARY\s+KEY|INDEX|KEY|FOREIGN\s+KEY)\b", re.IGNORECASE)
_RENAME_COLUMN = re.compile(rf"^RENAME\s+COLUMN\s+({_IDENT})\s+TO\s+({_IDENT})$", re.IGNORECASE)
_RENAME_TABLE = re.compile(
    rf"^RENAME\s+(?:TO\s+|AS\s+)?({_IDENT})(?:\s*\.\s*({_IDENT}))?$", re.IGNORECASE
)
# Clauses that change no column's JSON-ness.
_NEUTRAL = re.compile(
    r"^(?:ALTER\s+(?:COLUMN\s+)?" + _IDENT + r"\s+(?:SET|DROP)\s+DEFAULT\b"
    r"|(?:ADD\s+)?(?:CONSTRAINT\s+" + _IDENT + r"\s+)?(?:PRIMARY|UNIQUE|FOREIGN)\b"
    r"|ADD\s+(?:INDEX|KEY|FULLTEXT|SPATIAL|UNIQUE|PRIMARY|FOREIGN)\b"
    r"|RENAME\s+(?:INDEX|KEY)\b|ALTER\s+(?:INDEX|KEY)\b"
    r"|ENGINE|(?:DEFAULT\s+)?(?:CHARACTER\s+SET|CHARSET|COLLATE)|CONVERT\s+TO"
    r"|COMMENT|AUTO_INCREMENT|ROW_FORMAT|ALGORITHM|LOCK|FORCE|ORDER\s+BY"
    r"|KEY_BLOCK_SIZE|STATS_|PACK_KEYS|CHECKSUM|ENABLE\s+KEYS|DISABLE\s+KEYS)\b",
    re.IGNORECASE,
)


def _unquote_ident(name: str) -> str:
    return name[1:-1].replace("``", "`") if name.startswith("`") else name


def _is_mariadb(cursor: Any) -> bool:
    """MySQL needs no model: its JSON is a type of its own, named in the TABLE_MAP."""
    cursor.execute("SELECT VERSION()")
    return "mariadb" in str(cursor.fetchone()[0]).lower()


class UnknownDdl(Exception):
    """A DDL statement whose effect on JSON columns this model cannot work out."""


def _is_json_definition(name: str, definition: str) -> bool:
    if _JSON_TYPE.match(definition):
        return True
    check = _INLINE_JSON_CHECK.search(definition)
    return check is not None and _unquote_ident(check.group(1)) == name


def _columns_of_create(body: str) -> set[str]:
    """JSON columns of a `( create_definition, ... )` list."""
    text = body.strip()
    if not text.startswith("("):
        raise UnknownDdl("no column list (CREATE TABLE ... SELECT or the like)")
    depth = 0
    for index, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            inner, rest = text[1:index], text[index + 1 :]
            break
    else:
        raise UnknownDdl("unbalanced parentheses")
    if re.search(r"\b(?:SELECT|AS)\b", rest, re.IGNORECASE):
        raise UnknownDdl("CREATE TABLE ... SELECT")
    found: set[str] = set()
    for part in _split_top(inner, ","):
        part = part.strip()
        table_check = _TABLE_CHECK.match(part)
        if table_check is not None:
            found.add(_unquote_ident(table_check.group(1)))
            continue
        if _KEYS.match(part):
            continue
        column = _COLUMN_DEF.match(part)
        if column is None:
            raise UnknownDdl(f"column definition {part[:60]!r}")
        name = _unquote_ident(column.group(1))
        if _is_json_definition(name, column.group(2)):
            found.add(name)
    return found


class JsonSchemaModel:
    """Which MariaDB LONGTEXT columns hold JSON, as of the reader's position.

    The binlog's TABLE_MAP carries column names and types but not CHECK
    constraints, so the JSON flag cannot come from the event, nor from today's
    information_schema (a later ALTER or DROP would change how older events
    decode). The model starts from information_schema when a source first starts,
    travels with every checkpoint, and is changed by each DDL statement of the
    stream in order. A DDL it cannot read (CREATE TABLE ... SELECT, say) sets that
    table from information_schema, with a warning: exact when the reader is near
    the server's head, as today's schema may have moved on otherwise.
    """

    def __init__(
        self,
        state: JsonModelState,
        connect: Callable[[], Any] | None = None,
        explicit: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        self._tables: dict[tuple[str, str], frozenset[str]] = {
            (db, table): frozenset(cols) for db, table, cols in state
        }
        self._connect = connect
        self._explicit = StaticJsonColumns(explicit)
        self._state: JsonModelState = self._freeze()

    @classmethod
    def from_server(
        cls, connect: Callable[[], Any], explicit: Mapping[str, Iterable[str]] | None = None
    ) -> JsonSchemaModel:
        """The model from information_schema now (for a source's first start)."""
        conn = connect()
        try:
            with conn.cursor() as cursor:
                if not _is_mariadb(cursor):
                    return cls((), connect, explicit)
                cursor.execute(
                    "SELECT CONSTRAINT_SCHEMA, TABLE_NAME, CHECK_CLAUSE "
                    "FROM information_schema.CHECK_CONSTRAINTS"
                )
                rows = cursor.fetchall()
        finally:
            conn.close()
        tables: dict[tuple[str, str], set[str]] = {}
        for db, table, clause in rows:
            name = json_column_of_check(str(clause))
            if name is not None:
                tables.setdefault((str(db), str(table)), set()).add(name)
        state = tuple(
            (db, table, tuple(sorted(cols))) for (db, table), cols in sorted(tables.items())
        )
        return cls(state, connect, explicit)

    @property
    def state(self) -> JsonModelState:
        """The model as an immutable value, to store with a checkpoint."""
        return self._state

    def _freeze(self) -> JsonModelState:
        return tuple(
            (db, table, tuple(sorted(cols)))
            for (db, table), cols in sorted(self._tables.items())
            if cols
        )

    # JsonColumnSource
    def json_columns(self, database: str, table: str) -> frozenset[str]:
        found = self._tables.get((database, table), frozenset())
        return found | self._explicit.json_columns(database, table)

    def invalidate(self, database: str, table: str | None = None) -> None:
        """Nothing to drop: `apply_ddl` changes the model itself."""

    def apply_ddl(self, sql: str, default_db: str, where: str) -> None:
        """Change the model by one DDL statement of the stream (at `where`)."""
        for change in classify(sql, default_db):
            if change.table is None:
                if change.type == "database-drop":
                    for key in [k for k in self._tables if k[0] == change.database]:
                        del self._tables[key]
                continue
            key = (change.database, change.table)
            try:
                if change.old_table is not None and change.old_database is not None:
                    moved = self._tables.pop((change.old_database, change.old_table), frozenset())
                    self._tables[key] = moved
                elif change.type == "table-drop":
                    self._tables.pop(key, None)
                elif change.type == "table-create":
                    self._create(key, normalize(sql), default_db)
                else:
                    self._alter(key, normalize(sql), default_db)
            except UnknownDdl as exc:
                self._from_server(key, where, str(exc))
        self._state = self._freeze()

    def _create(self, key: tuple[str, str], text: str, default_db: str) -> None:
        match = _CREATE_BODY.match(text)
        if match is None:
            raise UnknownDdl("CREATE TABLE")
        like = _LIKE.match(match.group(1).strip())
        if like is not None:
            first, second = like.group(1), like.group(2)
            source = (
                (_unquote_ident(first), _unquote_ident(second))
                if second
                else (default_db, _unquote_ident(first))
            )
            self._tables[key] = self._tables.get(source, frozenset())
            return
        self._tables[key] = frozenset(_columns_of_create(match.group(1)))

    def _alter(self, key: tuple[str, str], text: str, default_db: str) -> None:
        match = _ALTER_BODY.match(text)
        if match is None:
            raise UnknownDdl("ALTER TABLE")
        columns = set(self._tables.get(key, frozenset()))
        target = key
        for raw in _split_top(match.group(1), ","):
            clause = raw.strip()
            if not clause:
                continue
            if (found := _RENAME_COLUMN.match(clause)) is not None:
                old, new = _unquote_ident(found.group(1)), _unquote_ident(found.group(2))
                if old in columns:
                    columns.discard(old)
                    columns.add(new)
            elif (found := _RENAME_TABLE.match(clause)) is not None:
                first, second = found.group(1), found.group(2)
                target = (
                    (_unquote_ident(first), _unquote_ident(second))
                    if second
                    else (default_db, _unquote_ident(first))
                )
            elif _DROP_OTHER.match(clause):
                continue
            elif (found := _DROP_COLUMN.match(clause)) is not None:
                columns.discard(_unquote_ident(found.group(1)))
            elif (found := _CHANGE.match(clause)) is not None:
                columns.discard(_unquote_ident(found.group(1)))
                columns |= _columns_of_create(f"({found.group(2)})")
            elif (found := _MODIFY.match(clause)) is not None:
                definition = _COLUMN_DEF.match(found.group(1).strip())
                if definition is None:
                    raise UnknownDdl(f"clause {clause[:60]!r}")
                name = _unquote_ident(definition.group(1))
                columns.discard(name)
                if _is_json_definition(name, definition.group(2)):
                    columns.add(name)
            elif _NEUTRAL.match(clause):
                continue
            elif (found := _ADD.match(clause)) is not None:
                body = found.group(1).strip()
                if _TABLE_CHECK.match(body):
                    columns |= _columns_of_create(f"({body})")
                elif body.startswith("("):
                    columns |= _columns_of_create(body)
                else:
                    columns |= _columns_of_create(f"({body})")
            else:
                raise UnknownDdl(f"clause {clause[:60]!r}")
        if target != key:
            self._tables.pop(key, None)
        self._tables[target] = frozenset(columns)

    def _from_server(self, key: tuple[str, str], where: str, why: str) -> None:
        if self._connect is None:
            raise UnknownDdl(f"{key[0]}.{key[1]} at {where}: {why}")
        conn = self._connect()
        try:
            with conn.cursor() as cursor:
                if not _is_mariadb(cursor):
                    return
                log.warning(
                    "DDL on %s.%s at %s: %s; its JSON columns are read from the server's "
                    "current schema, which is exact only if no later DDL changed them",
                    key[0],
                    key[1],
                    where,
                    why,
                )
                cursor.execute(_QUERY, key)
                rows = cursor.fetchall()
        finally:
            conn.close()
        names = (json_column_of_check(str(row[0])) for row in rows)
        self._tables[key] = frozenset(name for name in names if name is not None)
