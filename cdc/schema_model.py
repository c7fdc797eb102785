"""The table definitions of DDL messages: a schema model that follows the stream.

Maxwell's DDL messages carry `def` (the table after the statement) and, on
ALTER and RENAME, `old` (the table before it), in this form (Maxwell's
`Table` and `ColumnDefSerializer`):

    {"database": "shop", "charset": "utf8mb4", "table": "orders",
     "columns": [{"type": "int", "name": "id", "signed": true},
                 {"type": "varchar", "name": "note", "charset": "latin1"},
                 {"type": "enum", "name": "state", "enum-values": ["new", "done"]},
                 {"type": "timestamp", "name": "at", "column-length": 6}],
     "primary-key": ["id"]}

A column carries `charset` (text and binary string types; `binary` for BLOB,
BINARY and VARBINARY), `signed` (integer types), `enum-values` (ENUM, SET) or
`column-length` (the fractional digits of DATETIME, TIMESTAMP and TIME), and
nothing more for the other types. Type names are information_schema's
`DATA_TYPE` (MariaDB's JSON, a LONGTEXT with a `json_valid` check, is `json`).

The binlog carries no table definitions, so the model is built the way Maxwell
builds its own: read from information_schema when the read stage starts (every
database but information_schema and performance_schema), then changed by each DDL statement of the
stream, in order, as the reader reaches it. Statements are parsed with sqlglot
(MySQL dialect).

A schema change the server does not write to the binlog (a session with
`sql_log_bin=0`, a server-side binlog filter) cannot be seen: the model keeps
the table as it was until a later statement does not fit it (below), and the
definitions published in between describe the table without that change.

Where the model can differ from the server, and what happens then:

- **Statements before the read.** information_schema is read at the server's
  current position (read just before). A DDL statement the stream reaches
  before that position (the backlog of a reader that starts behind the head,
  after a restart say) is already in what was read, and perhaps later ones too:
  it is not applied, and its message has no `def`/`old` (a RENAME keeps the new
  `database` and `table` in `def`). A warning names the position and statement.
- **Statements the model cannot apply.** A statement sqlglot cannot read
  (`CONVERT TO CHARACTER SET`, partitioning clauses, `CREATE TABLE ... SELECT`,
  ...), or one that does not fit the model (adding a column that exists,
  altering a table the model does not know): the message has no `def`/`old`, a
  warning names the position, statement and reason, and the tables it names are
  read again from information_schema, as of the server's position then. Their
  later statements before that position are treated as above.

So a `def` is published only when the model applied the statement itself, from
a state known to be the table's state at that point of the stream.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from cdc.ddl import SchemaChange, normalize
from cdc.decoding.json_columns import json_column_of_check
from cdc.replication.position import BinlogPosition
from cdc.replication.server_check import binlog_head

log = logging.getLogger(__name__)

# Left out of the model, as in Maxwell's schema capture.
SYSTEM_DATABASES = ("information_schema", "performance_schema")

INTEGER_TYPES = frozenset({"tinyint", "smallint", "mediumint", "int", "bigint"})
TEXT_TYPES = frozenset({"char", "varchar", "tinytext", "text", "mediumtext", "longtext"})
BINARY_TYPES = frozenset({"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"})
ENUMERATED_TYPES = frozenset({"enum", "set"})
FRACTIONAL_TYPES = frozenset({"datetime", "timestamp", "time"})

# Type words sqlglot reads differently from MySQL (INT8 is BIGINT, REAL is DOUBLE):
# a statement naming one is not applied.
_MISREAD_TYPES = re.compile(r"\b(?:int8|real)\b", re.IGNORECASE)
_QUOTED = re.compile(r"'((?:[^'\\]|''|\\.)*)'")


class UnappliedDdl(Exception):
    """A DDL statement the model cannot apply; the message says why."""


@dataclass(frozen=True, slots=True)
class ColumnModel:
    name: str
    type: str
    signed: bool | None = None
    charset: str | None = None
    enum_values: tuple[str, ...] | None = None
    column_length: int | None = None

    def to_json(self) -> dict[str, Any]:
        """Maxwell's column form (ColumnDefSerializer)."""
        out: dict[str, Any] = {"type": self.type, "name": self.name}
        if self.type in TEXT_TYPES or self.type in BINARY_TYPES:
            out["charset"] = self.charset
        elif self.type in INTEGER_TYPES:
            out["signed"] = bool(self.signed)
        elif self.type in ENUMERATED_TYPES:
            out["enum-values"] = list(self.enum_values or ())
        elif self.type in FRACTIONAL_TYPES:
            out["column-length"] = self.column_length or 0
        return out


@dataclass(frozen=True, slots=True)
class TableModel:
    database: str
    table: str
    charset: str | None
    columns: tuple[ColumnModel, ...]
    primary_key: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """Maxwell's table form (`Table`, as its DDL messages write it)."""
        return {
            "database": self.database,
            "charset": self.charset,
            "table": self.table,
            "columns": [c.to_json() for c in self.columns],
            "primary-key": list(self.primary_key),
        }

    def index_of(self, name: str) -> int | None:
        # Column names are case-insensitive in MySQL and MariaDB.
        folded = name.casefold()
        for index, col in enumerate(self.columns):
            if col.name.casefold() == folded:
                return index
        return None


@dataclass(frozen=True, slots=True)
class Definitions:
    """`old` and `def` of one DDL message; None where the model has none."""

    old: dict[str, Any] | None = None
    new: dict[str, Any] | None = None


@dataclass(slots=True)
class ServerFacts:
    """What resolving a column's charset and type needs from the server."""

    server_charset: str
    mariadb: bool = False
    collations: dict[str, str] = field(default_factory=dict)  # collation -> charset
    charset_maxlen: dict[str, int] = field(default_factory=dict)

    def charset_name(self, name: str) -> str:
        name = name.lower()
        # MariaDB 10.6+ and MySQL 8.0.30+ call utf8 utf8mb3.
        if name == "utf8" and "utf8" not in self.charset_maxlen and self.charset_maxlen:
            return "utf8mb3"
        return name

    def charset_of_collation(self, collation: str) -> str:
        collation = collation.lower()
        found = self.collations.get(collation)
        if found is None and collation.startswith("utf8_"):
            found = self.collations.get("utf8mb3_" + collation[5:])
        if found is None:
            if collation == "binary":
                return "binary"
            if not self.collations:
                return self.charset_name(collation.split("_", 1)[0])
            raise UnappliedDdl(f"unknown collation {collation!r}")
        return found


Tables = dict[tuple[str, str], TableModel]
# Reads the named tables (and their databases' charsets) from the server: the
# server's position before the read, and each table's model (None: no such table).
TableReader = Callable[
    [list[tuple[str, str]]], tuple[BinlogPosition, dict[tuple[str, str], TableModel | None]]
]


class SchemaModel:
    """Databases and tables as of the reader's place in the stream; see the module
    docstring. `apply` is called for each schema change in stream order."""

    def __init__(
        self,
        databases: dict[str, str],
        tables: Tables,
        read_at: BinlogPosition,
        facts: ServerFacts,
        reader: TableReader | None = None,
    ) -> None:
        self.databases = dict(databases)
        self.tables = dict(tables)
        self.read_at = read_at
        self.facts = facts
        self._reader = reader
        # Tables read again after a statement the model could not apply.
        self._table_read_at: dict[tuple[str, str], BinlogPosition] = {}

    # --- reading the server ------------------------------------------------------

    @classmethod
    def from_server(cls, connect: Callable[[], Any]) -> SchemaModel:
        """The model as information_schema shows it now."""
        conn = connect()
        try:
            with conn.cursor() as cursor:
                facts = _server_facts(cursor)
                read_at = binlog_head(cursor)
                databases, tables = _read_schema(cursor, facts, None)
        finally:
            conn.close()

        def reader(
            keys: list[tuple[str, str]],
        ) -> tuple[BinlogPosition, dict[tuple[str, str], TableModel | None]]:
            conn = connect()
            try:
                with conn.cursor() as cursor:
                    head = binlog_head(cursor)
                    _, found = _read_schema(cursor, facts, keys)
            finally:
                conn.close()
            return head, {key: found.get(key) for key in keys}

        log.info(
            "schema model: %d tables of %d databases read from information_schema at %s",
            len(tables),
            len(databases),
            read_at,
        )
        return cls(databases, tables, read_at, facts, reader)

    # --- following the stream ----------------------------------------------------

    def apply(self, change: SchemaChange, position: BinlogPosition) -> Definitions:
        """Apply one schema change met at `position`; the `old`/`def` of its message."""
        where = f"{position} ({change.sql[:300]!r})"
        if change.table is None:
            self._apply_database(change, position)
            return Definitions()
        key = (change.database, change.table)
        source = (
            (change.old_database, change.old_table)
            if change.old_database is not None and change.old_table is not None
            else None
        )
        keys = [key] if source is None else [source, key]
        read_at = max((self._read_at(k) for k in keys), key=BinlogPosition.sort_key)
        if position.sort_key() < read_at.sort_key():
            # Already in what was read, with whatever came after it.
            log.warning(
                "DDL at %s: the schema model of %s was read from information_schema at "
                "%s, after this statement; its message has no table definitions",
                where,
                ", ".join(f"{db}.{t}" for db, t in keys),
                read_at,
            )
            return Definitions()
        try:
            return self._apply_table(change, key, source)
        except (UnappliedDdl, SqlglotError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self._read_again(keys, where, reason)
            return Definitions()

    def _read_at(self, key: tuple[str, str]) -> BinlogPosition:
        return self._table_read_at.get(key, self.read_at)

    def _apply_database(self, change: SchemaChange, position: BinlogPosition) -> None:
        if position.sort_key() < self.read_at.sort_key():
            return
        name = change.database
        if change.type == "database-drop":
            self.databases.pop(name, None)
            for key in [k for k in self.tables if k[0] == name]:
                del self.tables[key]
        elif change.type == "database-create":
            charset = change.charset or self.facts.server_charset
            self.databases.setdefault(name, self.facts.charset_name(charset))
        elif change.charset is not None:
            self.databases[name] = self.facts.charset_name(change.charset)

    def _read_again(self, keys: list[tuple[str, str]], where: str, reason: str) -> None:
        if self._reader is None:
            for key in keys:
                self.tables.pop(key, None)
        else:
            head, found = self._reader(keys)
            for key, table in found.items():
                self._table_read_at[key] = head
                if table is None:
                    self.tables.pop(key, None)
                else:
                    self.tables[key] = table
        log.warning(
            "DDL at %s: the schema model cannot apply it (%s); its message has no table "
            "definitions, and %s were read again from information_schema",
            where,
            reason,
            ", ".join(f"{db}.{t}" for db, t in keys),
        )

    def _apply_table(
        self,
        change: SchemaChange,
        key: tuple[str, str],
        source: tuple[str, str] | None,
    ) -> Definitions:
        if source is not None:  # RENAME TABLE source TO key
            old = self._known(source)
            if key in self.tables:
                raise UnappliedDdl(f"{key[0]}.{key[1]} exists in the model")
            new = replace(old, database=key[0], table=key[1])
            del self.tables[source]
            self.tables[key] = new
            self._table_read_at.pop(source, None)
            return Definitions(old.to_json(), new.to_json())
        if change.type == "table-drop":
            self.tables.pop(key, None)
            return Definitions()
        text = normalize(change.sql)
        if _MISREAD_TYPES.search(text):
            raise UnappliedDdl("the statement names INT8 or REAL")
        parsed = sqlglot.parse_one(text, read="mysql")
        if change.type == "table-create":
            return self._create(parsed, key, change.database)
        return self._alter(parsed, key, change.database)

    def _known(self, key: tuple[str, str]) -> TableModel:
        table = self.tables.get(key)
        if table is None:
            raise UnappliedDdl(f"{key[0]}.{key[1]} is not in the model")
        return table

    def _create(self, parsed: object, key: tuple[str, str], default_db: str) -> Definitions:
        if not isinstance(parsed, exp.Create) or parsed.args.get("expression") is not None:
            raise UnappliedDdl("not a CREATE TABLE with a column list")
        exists = key in self.tables
        if exists and parsed.args.get("exists"):
            # IF NOT EXISTS on an existing table changes nothing.
            return Definitions(None, self.tables[key].to_json())
        if exists and not parsed.args.get("replace"):
            raise UnappliedDdl(f"{key[0]}.{key[1]} exists in the model")
        like = _like_source(parsed, default_db)
        if like is not None:
            new = replace(self._known(like), database=key[0], table=key[1])
        else:
            schema = parsed.this
            if not isinstance(schema, exp.Schema):
                raise UnappliedDdl("no column list")
            charset = self._table_charset(parsed.args.get("properties"), key[0])
            columns: list[ColumnModel] = []
            primary: tuple[str, ...] = ()
            for item in schema.expressions:
                if isinstance(item, exp.ColumnDef):
                    columns.append(self._column(item, charset))
                    if _inline_primary(item):
                        primary = (columns[-1].name,)
                elif (pk := item.find(exp.PrimaryKey)) is not None:
                    primary = _key_columns(pk)
            new = TableModel(key[0], key[1], charset, tuple(columns), primary)
            new = _checked_key(new)
        self.tables[key] = new
        self._table_read_at.pop(key, None)
        return Definitions(None, new.to_json())

    def _alter(self, parsed: object, key: tuple[str, str], default_db: str) -> Definitions:
        if not isinstance(parsed, exp.Alter):
            raise UnappliedDdl("not an ALTER TABLE sqlglot can read")
        old = self._known(key)
        table = old
        target = key
        properties = exp.Properties(expressions=list(parsed.args.get("options") or []))
        for option in properties.expressions:
            if isinstance(option, exp.CharacterSetProperty | exp.CollateProperty):
                table = replace(table, charset=self._table_charset(properties, key[0], old.charset))
        for action in parsed.args.get("actions") or []:
            table, target = self._alter_action(table, target, action, default_db)
        table = _checked_key(table)
        del self.tables[key]
        self.tables[target] = table
        if target != key:
            self._table_read_at.pop(key, None)
        return Definitions(old.to_json(), table.to_json())

    def _alter_action(
        self,
        table: TableModel,
        target: tuple[str, str],
        action: exp.Expression,
        default_db: str,
    ) -> tuple[TableModel, tuple[str, str]]:
        columns = list(table.columns)
        primary = list(table.primary_key)
        if isinstance(action, exp.ColumnDef):  # ADD [COLUMN]
            column = self._column(action, table.charset)
            if table.index_of(column.name) is not None:
                if action.args.get("exists"):
                    return table, target
                raise UnappliedDdl(f"column {column.name!r} exists in the model")
            columns.insert(_position(table, action, len(columns)), column)
            if _inline_primary(action):
                primary = [column.name]
        elif isinstance(action, exp.ModifyColumn):  # MODIFY or CHANGE
            definition = action.this
            renamed_from = action.args.get("rename_from")
            name = renamed_from.name if renamed_from is not None else definition.name
            index = table.index_of(name)
            if index is None:
                raise UnappliedDdl(f"no column {name!r} in the model")
            column = self._column(definition, table.charset)
            del columns[index]
            rest = replace(table, columns=tuple(columns))
            columns.insert(_position(rest, definition, index), column)
            primary = [column.name if p.casefold() == name.casefold() else p for p in primary]
            if _inline_primary(definition):
                primary = [column.name]
        elif isinstance(action, exp.RenameColumn):
            old_name, new_name = action.this.name, action.args["to"].name
            index = table.index_of(old_name)
            if index is None:
                raise UnappliedDdl(f"no column {old_name!r} in the model")
            columns[index] = replace(columns[index], name=new_name)
            primary = [new_name if p.casefold() == old_name.casefold() else p for p in primary]
        elif isinstance(action, exp.Drop):
            kind = str(action.args.get("kind") or "").upper()
            if kind == "COLUMN":
                for dropped in action.args.get("tables") or []:
                    index = table.index_of(dropped.name)
                    if index is None:
                        if action.args.get("exists"):
                            continue
                        raise UnappliedDdl(f"no column {dropped.name!r} in the model")
                    name = columns[index].name
                    del columns[index]
                    primary = [p for p in primary if p.casefold() != name.casefold()]
                    table = replace(table, columns=tuple(columns))
            elif kind in ("INDEX", "KEY"):
                # The primary key is the index named PRIMARY.
                if any(i.name.upper() == "PRIMARY" for i in action.args.get("tables") or []):
                    primary = []
            elif kind not in ("FOREIGN KEY", "CONSTRAINT", "CHECK"):
                raise UnappliedDdl(f"DROP {kind or '?'}")
        elif isinstance(action, exp.DropPrimaryKey):
            primary = []
        elif isinstance(action, exp.AddConstraint):
            for item in action.expressions:
                if (pk := item.find(exp.PrimaryKey)) is not None:
                    primary = list(_key_columns(pk))
        elif isinstance(action, exp.AlterRename):
            renamed = action.this
            target = (renamed.db or default_db, renamed.name)
            if target != (table.database, table.table) and target in self.tables:
                raise UnappliedDdl(f"{target[0]}.{target[1]} exists in the model")
            return replace(table, database=target[0], table=target[1]), target
        elif isinstance(action, exp.AlterColumn | exp.RenameIndex | exp.ForceProperty):
            pass  # defaults, index names, a rebuild: nothing Maxwell's definition holds
        else:
            raise UnappliedDdl(f"ALTER clause {action.sql('mysql')[:80]!r}")
        return replace(table, columns=tuple(columns), primary_key=tuple(primary)), target

    # --- columns -------------------------------------------------------------------

    def _table_charset(
        self, properties: Any, database: str, current: str | None = None
    ) -> str | None:
        charset: str | None = None
        collation: str | None = None
        for prop in properties.expressions if properties is not None else ():
            if isinstance(prop, exp.CharacterSetProperty):
                charset = prop.this.name
            elif isinstance(prop, exp.CollateProperty):
                collation = prop.this.name
        if charset is not None:
            return self.facts.charset_name(charset)
        if collation is not None:
            return self.facts.charset_of_collation(collation)
        if current is not None:
            return current
        return self.databases.get(database, self.facts.server_charset)

    def _column(self, definition: exp.ColumnDef, table_charset: str | None) -> ColumnModel:
        kind = definition.args.get("kind")
        name = definition.name
        if not isinstance(kind, exp.DataType) or not name:
            raise UnappliedDdl(f"column {name!r} has no type sqlglot reads")
        charset: str | None = None
        zerofill = False
        for constraint in definition.args.get("constraints") or []:
            inner = constraint.args.get("kind")
            zerofill = zerofill or isinstance(inner, exp.ZeroFillColumnConstraint)
            if isinstance(inner, exp.CharacterSetColumnConstraint):
                charset = self.facts.charset_name(inner.this.name)
            elif isinstance(inner, exp.CollateColumnConstraint) and charset is None:
                charset = self.facts.charset_of_collation(inner.this.name)
        type_name, signed = _type_name(kind, name)
        params = [_param_text(p) for p in kind.expressions]
        if type_name in TEXT_TYPES and charset == "binary":
            type_name = {"char": "binary", "varchar": "varbinary"}.get(
                type_name, type_name.replace("text", "blob")
            )
        if type_name in ("text", "blob") and params:
            type_name = self._sized_text(type_name, int(params[0]), charset or table_charset)
        if type_name in TEXT_TYPES:
            return ColumnModel(name, type_name, charset=charset or table_charset)
        if type_name in BINARY_TYPES:
            return ColumnModel(name, type_name, charset="binary")
        if type_name in INTEGER_TYPES:
            # ZEROFILL makes a column UNSIGNED.
            return ColumnModel(name, type_name, signed=signed and not zerofill)
        if type_name in ENUMERATED_TYPES:
            return ColumnModel(name, type_name, enum_values=tuple(params))
        if type_name in FRACTIONAL_TYPES:
            return ColumnModel(name, type_name, column_length=int(params[0]) if params else 0)
        if type_name == "float" and len(params) == 1 and int(params[0]) > 24:
            type_name = "double"
        return ColumnModel(name, type_name)

    def _sized_text(self, type_name: str, length: int, charset: str | None) -> str:
        # TEXT(M)/BLOB(M): the smallest type that holds M characters (bytes for BLOB).
        width = 1 if type_name == "blob" else self.facts.charset_maxlen.get(charset or "", 4)
        size = length * width
        prefix = "tiny" if size < 1 << 8 else "" if size < 1 << 16 else "medium"
        if size >= 1 << 24:
            prefix = "long"
        return prefix + type_name


_T = exp.DataType.Type
_TYPE_NAMES: dict[Any, tuple[str, bool]] = {
    _T.TINYINT: ("tinyint", True),
    _T.UTINYINT: ("tinyint", False),
    _T.SMALLINT: ("smallint", True),
    _T.USMALLINT: ("smallint", False),
    _T.MEDIUMINT: ("mediumint", True),
    _T.UMEDIUMINT: ("mediumint", False),
    _T.INT: ("int", True),
    _T.UINT: ("int", False),
    _T.BIGINT: ("bigint", True),
    _T.UBIGINT: ("bigint", False),
    _T.SERIAL: ("bigint", False),
    _T.BOOLEAN: ("tinyint", True),
    _T.BIT: ("bit", True),
    _T.FLOAT: ("float", True),
    _T.DOUBLE: ("double", True),
    _T.DECIMAL: ("decimal", True),
    _T.UDECIMAL: ("decimal", True),
    _T.CHAR: ("char", True),
    _T.NCHAR: ("char", True),
    _T.VARCHAR: ("varchar", True),
    _T.NVARCHAR: ("varchar", True),
    _T.TINYTEXT: ("tinytext", True),
    _T.TEXT: ("text", True),
    _T.MEDIUMTEXT: ("mediumtext", True),
    _T.LONGTEXT: ("longtext", True),
    _T.BINARY: ("binary", True),
    _T.VARBINARY: ("varbinary", True),
    _T.TINYBLOB: ("tinyblob", True),
    _T.BLOB: ("blob", True),
    _T.MEDIUMBLOB: ("mediumblob", True),
    _T.LONGBLOB: ("longblob", True),
    _T.DATE: ("date", True),
    _T.DATETIME: ("datetime", True),
    _T.TIMESTAMP: ("timestamp", True),
    _T.TIMESTAMPTZ: ("timestamp", True),
    _T.TIME: ("time", True),
    _T.YEAR: ("year", True),
    _T.ENUM: ("enum", True),
    _T.SET: ("set", True),
    _T.JSON: ("json", True),
    _T.GEOMETRY: ("geometry", True),
}


def _type_name(kind: exp.DataType, column: str) -> tuple[str, bool]:
    found = _TYPE_NAMES.get(kind.this)
    if found is None:
        raise UnappliedDdl(f"column {column!r}: type {kind.sql('mysql')!r} is not modelled")
    return found


def _param_text(param: exp.Expression) -> str:
    literal = param.this if isinstance(param, exp.DataTypeParam) else param
    value = literal.this if isinstance(literal, exp.Expression) else literal
    return str(value)


def _inline_primary(definition: exp.ColumnDef) -> bool:
    return any(
        isinstance(c.args.get("kind"), exp.PrimaryKeyColumnConstraint)
        for c in definition.args.get("constraints") or []
    )


def _key_columns(pk: exp.PrimaryKey) -> tuple[str, ...]:
    names: list[str] = []
    for part in pk.expressions:
        ident = part if isinstance(part, exp.Identifier) else part.find(exp.Identifier)
        if ident is None:
            raise UnappliedDdl(f"primary key part {part.sql('mysql')!r}")
        names.append(ident.name)
    return tuple(names)


def _checked_key(table: TableModel) -> TableModel:
    """The table with its key's columns spelled as the table spells them."""
    names: list[str] = []
    for name in table.primary_key:
        index = table.index_of(name)
        if index is None:
            raise UnappliedDdl(f"primary key column {name!r} is not a column")
        names.append(table.columns[index].name)
    return replace(table, primary_key=tuple(names))


def _position(table: TableModel, definition: exp.Expression, default: int) -> int:
    where = definition.args.get("position")
    if where is None:
        return default
    if str(where.args.get("position") or "").upper() == "FIRST":
        return 0
    after = where.this
    index = table.index_of(after.name) if after is not None else None
    if index is None:
        raise UnappliedDdl(f"no column {after.name if after else '?'!r} to place after")
    return index + 1


def _like_source(parsed: exp.Create, default_db: str) -> tuple[str, str] | None:
    properties = parsed.args.get("properties")
    for prop in properties.expressions if properties is not None else ():
        if isinstance(prop, exp.LikeProperty):
            source = prop.this
            return (source.db or default_db, source.name)
    return None


def enum_values(column_type: str) -> tuple[str, ...]:
    """The members of information_schema's COLUMN_TYPE `enum('a','b')` / `set(...)`."""
    body = column_type[column_type.index("(") + 1 : column_type.rindex(")")]
    return tuple(m.group(1).replace("''", "'") for m in _QUOTED.finditer(body))


# --- information_schema ------------------------------------------------------------


def _server_facts(cursor: Any) -> ServerFacts:
    cursor.execute("SELECT @@character_set_server, VERSION()")
    server_charset, version = cursor.fetchone()
    cursor.execute("SELECT COLLATION_NAME, CHARACTER_SET_NAME FROM information_schema.COLLATIONS")
    collations = {str(c).lower(): str(s) for c, s in cursor.fetchall()}
    cursor.execute("SELECT CHARACTER_SET_NAME, MAXLEN FROM information_schema.CHARACTER_SETS")
    maxlen = {str(c): int(n) for c, n in cursor.fetchall()}
    mariadb = "mariadb" in str(version).lower()
    return ServerFacts(str(server_charset), mariadb, collations, maxlen)


def _in_list(column: str, values: Iterable[str]) -> tuple[str, list[str]]:
    items = sorted(set(values))
    return f"{column} IN ({', '.join(['%s'] * len(items))})", items


def _read_schema(
    cursor: Any, facts: ServerFacts, keys: list[tuple[str, str]] | None
) -> tuple[dict[str, str], Tables]:
    """Databases and tables from information_schema: all (`keys` None) or the named ones."""
    system = ", ".join(f"'{db}'" for db in SYSTEM_DATABASES)
    where = f"SCHEMA_NAME NOT IN ({system})"
    params: list[str] = []
    if keys is not None:
        clause, params = _in_list("SCHEMA_NAME", (db for db, _ in keys))
        where += f" AND {clause}"
    cursor.execute(
        f"SELECT SCHEMA_NAME, DEFAULT_CHARACTER_SET_NAME FROM information_schema.SCHEMATA "
        f"WHERE {where}",
        params,
    )
    databases = {str(db): str(cs) for db, cs in cursor.fetchall()}
    if not databases:
        return databases, {}
    db_clause, db_params = _in_list("TABLE_SCHEMA", databases)
    wanted = set(keys) if keys is not None else None

    def keep(db: Any, table: Any) -> bool:
        return wanted is None or (str(db), str(table)) in wanted

    cursor.execute(
        "SELECT TABLE_SCHEMA, TABLE_NAME, TABLE_COLLATION FROM information_schema.TABLES "
        f"WHERE TABLE_TYPE = 'BASE TABLE' AND {db_clause}",
        db_params,
    )
    charsets = {
        (str(db), str(t)): facts.collations.get(str(coll).lower()) if coll else None
        for db, t, coll in cursor.fetchall()
        if keep(db, t)
    }
    json_columns: set[tuple[str, str, str]] = set()
    if facts.mariadb:
        # MariaDB's JSON is LONGTEXT with a json_valid() check (MySQL's is a type).
        cursor.execute(
            "SELECT CONSTRAINT_SCHEMA, TABLE_NAME, CHECK_CLAUSE FROM "
            "information_schema.CHECK_CONSTRAINTS WHERE CONSTRAINT_" + db_clause[len("TABLE_") :],
            db_params,
        )
        for db, t, clause in cursor.fetchall():
            name = json_column_of_check(str(clause))
            if name is not None:
                json_columns.add((str(db), str(t), name))
    cursor.execute(
        "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME, DATA_TYPE, CHARACTER_SET_NAME, "
        "COLUMN_TYPE, DATETIME_PRECISION FROM information_schema.COLUMNS "
        f"WHERE {db_clause} ORDER BY TABLE_SCHEMA, TABLE_NAME, ORDINAL_POSITION",
        db_params,
    )
    columns: dict[tuple[str, str], list[ColumnModel]] = {}
    for db, t, name, data_type, charset, column_type, precision in cursor.fetchall():
        key = (str(db), str(t))
        if key not in charsets:
            continue  # a view
        type_name = str(data_type).lower()
        if (key[0], key[1], str(name)) in json_columns and type_name == "longtext":
            type_name = "json"
        columns.setdefault(key, []).append(
            ColumnModel(
                name=str(name),
                type=type_name,
                signed="unsigned" not in str(column_type).lower().split()
                if type_name in INTEGER_TYPES
                else None,
                charset=(
                    "binary" if type_name in BINARY_TYPES else str(charset) if charset else None
                )
                if type_name in TEXT_TYPES or type_name in BINARY_TYPES
                else None,
                enum_values=enum_values(str(column_type))
                if type_name in ENUMERATED_TYPES
                else None,
                column_length=int(precision or 0) if type_name in FRACTIONAL_TYPES else None,
            )
        )
    cursor.execute(
        "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE "
        f"WHERE CONSTRAINT_NAME = 'PRIMARY' AND {db_clause} "
        "ORDER BY TABLE_SCHEMA, TABLE_NAME, ORDINAL_POSITION",
        db_params,
    )
    primary: dict[tuple[str, str], list[str]] = {}
    for db, t, name in cursor.fetchall():
        primary.setdefault((str(db), str(t)), []).append(str(name))
    tables = {
        key: TableModel(
            key[0], key[1], charset, tuple(columns.get(key, ())), tuple(primary.get(key, ()))
        )
        for key, charset in charsets.items()
    }
    return databases, tables
