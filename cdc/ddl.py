"""DDL statements from the binlog: which schema change a statement is.

Column names do not depend on this module: with `binlog_row_metadata=FULL`
every TABLE_MAP event carries the table's current column names and types, and
the reader builds a new table definition (and, for a new column layout, a new
decoder) from each one. So names follow ALTER TABLE exactly at the binlog
position where it happened.

This module classifies DDL statements into Maxwell's DDL event types, for the
`output_ddl` option and to drop cached per-table facts the binlog does not
carry (which MariaDB LONGTEXT columns hold JSON):

    CREATE DATABASE/SCHEMA        -> database-create  (`charset` as written, if written)
    ALTER DATABASE/SCHEMA         -> database-alter   (`charset` as written, if written)
    DROP DATABASE/SCHEMA          -> database-drop
    CREATE TABLE                  -> table-create   (not TEMPORARY)
    ALTER TABLE                   -> table-alter
    RENAME TABLE a TO b[, ...]    -> table-alter    (one per pair; `table` = b, `old_table` = a)
    DROP TABLE a[, b ...]         -> table-drop     (one per table; not TEMPORARY)

Everything else (GRANT, users, routines, triggers, index statements, TEMPORARY
tables, TRUNCATE) is not a schema change here and yields nothing, as in
Maxwell. TRUNCATE deletes rows without row events; the reader logs it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_COMMENT = re.compile(r"/\*(?!!).*?\*/|(?:--|#)[^\n]*", re.S)
# Executable comments /*!50100 ... */ hold real SQL: keep their text.
_EXEC_COMMENT = re.compile(r"/\*!\d*\s*(.*?)\*/", re.S)
_NAME = r"(?:`(?:[^`]|``)+`|[A-Za-z0-9_$\u0080-\uffff]+)"
_QUALIFIED = rf"({_NAME})(?:\s*\.\s*({_NAME}))?"

_DB_STMT = re.compile(
    rf"^(CREATE|ALTER|DROP)\s+(?:DATABASE|SCHEMA)\s+(?:IF\s+(?:NOT\s+)?EXISTS\s+)?({_NAME})(.*)$",
    re.I | re.S,
)
_DB_CHARSET = re.compile(r"(?:CHARACTER\s+SET|CHARSET)\s*(?:=\s*)?['\"`]?([A-Za-z0-9_]+)", re.I)
_DB_COLLATE = re.compile(r"COLLATE\s*(?:=\s*)?['\"`]?([A-Za-z0-9_]+)", re.I)
_CREATE_TABLE = re.compile(
    rf"^CREATE\s+(?:OR\s+REPLACE\s+)?(TEMPORARY\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?{_QUALIFIED}",
    re.I,
)
_ALTER_TABLE = re.compile(
    rf"^ALTER\s+(?:ONLINE\s+)?(?:IGNORE\s+)?TABLE\s+(?:IF\s+EXISTS\s+)?{_QUALIFIED}", re.I
)
_DROP_TABLE = re.compile(
    r"^DROP\s+(TEMPORARY\s+)?TABLES?\s+(?:IF\s+EXISTS\s+)?(?:/\*.*?\*/\s*)?(.*)$", re.I | re.S
)
_RENAME_TABLE = re.compile(r"^RENAME\s+TABLES?\s+(.*)$", re.I | re.S)
_TRUNCATE = re.compile(rf"^TRUNCATE\s+(?:TABLE\s+)?{_QUALIFIED}", re.I)
_QUALIFIED_ONLY = re.compile(rf"^\s*{_QUALIFIED}\s*$")


@dataclass(frozen=True, slots=True)
class SchemaChange:
    """One schema change. `table` is None for database statements."""

    type: str  # Maxwell's DDL type: database-create, table-alter, ...
    database: str
    table: str | None
    sql: str
    old_database: str | None = None
    old_table: str | None = None
    # Database statements: the charset the statement names (CHARACTER SET, or the
    # charset a COLLATE belongs to); None when it names neither.
    charset: str | None = None


def _unquote(name: str) -> str:
    if name.startswith("`") and name.endswith("`"):
        return name[1:-1].replace("``", "`")
    return name


def _split_top(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    depth, quote = 0, False
    for ch in text:
        if ch == "`":
            quote = not quote
        elif not quote and ch == "(":
            depth += 1
        elif not quote and ch == ")":
            depth -= 1
        if ch == sep and not quote and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _qualified(text: str, default_db: str) -> tuple[str, str] | None:
    return _names(_QUALIFIED_ONLY.match(text), default_db)


def _names(match: re.Match[str] | None, default_db: str) -> tuple[str, str] | None:
    """(database, table) of a `[db.]table` match, the default database if it has none."""
    if match is None:
        return None
    first, second = match.group(1), match.group(2)
    if second is None:
        return default_db, _unquote(first)
    return _unquote(first), _unquote(second)


def normalize(sql: str) -> str:
    text = _EXEC_COMMENT.sub(r"\1", sql)
    text = _COMMENT.sub(" ", text)
    return text.strip().rstrip(";").strip()


def is_truncate(sql: str, default_db: str) -> tuple[str, str] | None:
    return _names(_TRUNCATE.match(normalize(sql)), default_db)


def classify(sql: str, default_db: str) -> list[SchemaChange]:
    """The schema changes one statement makes; empty when it makes none."""
    text = normalize(sql)
    match = _DB_STMT.match(text)
    if match:
        verb = match.group(1).lower()
        charset = None if verb == "drop" else _database_charset(match.group(3))
        return [
            SchemaChange(f"database-{verb}", _unquote(match.group(2)), None, sql, charset=charset)
        ]
    match = _CREATE_TABLE.match(text)
    if match:
        if match.group(1):
            return []
        db, table = _pair(match, 2, default_db)
        return [SchemaChange("table-create", db, table, sql)]
    match = _ALTER_TABLE.match(text)
    if match:
        db, table = _pair(match, 1, default_db)
        return [SchemaChange("table-alter", db, table, sql)]
    match = _DROP_TABLE.match(text)
    if match:
        if match.group(1):
            return []
        names = _split_top(match.group(2), ",")
        out = []
        for name in names:
            name = re.sub(r"\s+(RESTRICT|CASCADE)\s*$", "", name.strip(), flags=re.I)
            found = _qualified(name, default_db)
            if found is not None:
                out.append(SchemaChange("table-drop", found[0], found[1], sql))
        return out
    match = _RENAME_TABLE.match(text)
    if match:
        out = []
        for pair in _split_top(match.group(1), ","):
            sides = re.split(r"\s+TO\s+", pair.strip(), maxsplit=1, flags=re.I)
            if len(sides) != 2:
                continue
            old, new = sides
            source = _qualified(old, default_db)
            target = _qualified(new, default_db)
            if source is not None and target is not None:
                out.append(
                    SchemaChange(
                        "table-alter",
                        target[0],
                        target[1],
                        sql,
                        old_database=source[0],
                        old_table=source[1],
                    )
                )
        return out
    return []


_ALTER_RENAME = re.compile(rf"^RENAME\s+(?:TO\s+|AS\s+)?{_QUALIFIED}$", re.I)


def renamed_tables(sql: str, default_db: str) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """((old database, old table), (new database, new table)) of every table a
    statement renames: `RENAME TABLE a TO b[, ...]`, or `ALTER TABLE a ... RENAME
    [TO|AS] b` (a clause among others)."""
    renames = [
        ((change.old_database, change.old_table), (change.database, change.table))
        for change in classify(sql, default_db)
        if change.old_database is not None and change.old_table is not None and change.table
    ]
    match = _ALTER_TABLE.match(normalize(sql))
    if match is not None:
        source = _pair(match, 1, default_db)
        for clause in _split_top(normalize(sql)[match.end() :], ","):
            found = _ALTER_RENAME.match(clause.strip())
            if found is not None:
                renames.append((source, _pair(found, 1, default_db)))
    return renames


def _pair(match: re.Match[str], group: int, default_db: str) -> tuple[str, str]:
    first, second = match.group(group), match.group(group + 1)
    if second is None:
        return default_db, _unquote(first)
    return _unquote(first), _unquote(second)


def _database_charset(options: str) -> str | None:
    """The charset named by CREATE/ALTER DATABASE options. A collation's name
    starts with its charset's name (`latin1_swedish_ci`), except `binary`."""
    found = _DB_CHARSET.search(options)
    if found is not None:
        return found.group(1).lower()
    collation = _DB_COLLATE.search(options)
    if collation is not None:
        name = collation.group(1).lower()
        return name if name == "binary" else name.split("_", 1)[0]
    return None
