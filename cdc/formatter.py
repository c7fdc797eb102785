"""Maxwell's JSON for row changes, DDL and bootstrap messages.

A row message, fields in this order (Maxwell's order; `[..]` = by option):

    {"database", "table", ["query"], "type", "ts", ["xid"], ["xoffset"], ["commit"],
     ["position"], ["gtid"], ["server_id"], ["thread_id"], ["event_id", "source"],
     ["primary_key"], ["primary_key_columns"], "data", "old" (updates only)}

Commit information follows Maxwell's `RowMap.toJSON` and its code defaults
(`output_commit_info` and `output_xoffset` both on): `xid` on every row,
`xoffset` (the row's index in the transaction) on every row but the last, and
`"commit":true` on the last row only. The value `every_row` of either option
writes the field on every row instead (`"commit":false` on the others, `xoffset`
on the last too): the form of earlier shardctl versions. `xoffset` needs
`output_commit_info`, as in Maxwell.

`event_id` (`output_event_id`, on by default) is ours: the stable id of the row
change (`cdc.rows.event_id`), the same on a replay. `source` comes with it:
`<cdc.source>/<server_id>` (`shardctl.core.event_ids.format_source`), which makes the
id's order stream unique across sources and servers.

The Kafka key is `{"database":..,"table":..,"pk.<col>":..}` with the primary key
columns in key order and their names lowercased, as Maxwell writes them, written
byte-stably (`cdc.json_text`): it is also the hash input of the shard. A table
without a primary key gets the key without `pk.` fields (Maxwell uses a random
`_uuid`, which would defeat replay dedupe and ordering).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from json.encoder import encode_basestring as _encode_str
from typing import Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from cdc.json_text import JsonTextError, ObjectEncoder, ValueKind, compile_object_encoder, encode
from cdc.rows import (
    EncodedRow,
    Message,
    PrimaryKeyChange,
    RowImage,
    TxnContext,
    split_key_change,
)
from cdc.schema import DATE_TYPES, INTEGER_TYPES, ColumnDef, ColumnType, TableDef
from shardctl.core.event_ids import format_source

BootstrapType = Literal["bootstrap-start", "bootstrap-insert", "bootstrap-complete"]


class FormatError(ValueError):
    """A row cannot be written as Maxwell JSON."""


class _Change(Protocol):
    @property
    def table(self) -> Any: ...  # a TableDef

    @property
    def row(self) -> RowImage | EncodedRow: ...


ChangeT = TypeVar("ChangeT", bound=_Change)

# `MaxwellFormatter.encoded_row_writer`: (row, row index, last in transaction) ->
# (key, value, event id).
EncodedRowWriter = Callable[[EncodedRow, int, bool], tuple[bytes, bytes, str]]

# `output_commit_info` / `output_xoffset`: True is Maxwell's form, "every_row" the
# field on every row, False none.
CommitInfo = bool | Literal["every_row"]


class FormatterOptions(BaseModel):
    """How messages are written: Maxwell's output options (same names, same defaults)
    and our own. The reader's settings (`cdc.options.CdcOptions`) are these plus the
    rest, so each option is declared once, here."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    output_binlog_position: bool = False
    output_gtid_position: bool = False
    output_server_id: bool = False
    output_thread_id: bool = False
    output_primary_keys: bool = False
    output_primary_key_columns: bool = False
    output_null_zerodates: bool = False
    output_ddl: bool = False
    # Maxwell's `query` on row messages: the statement that changed the row, when the
    # server logs it (MariaDB binlog_annotate_row_events, MySQL
    # binlog_rows_query_log_events); rows without one have no `query`.
    output_row_query: bool = False
    # Maxwell's commit information (its code defaults): `xid` on every row, `xoffset`
    # on every row but the last, `"commit":true` on the last. "every_row" writes the
    # field on every row (`"commit":false` on the others), false leaves it out.
    output_commit_info: CommitInfo = True
    output_xoffset: CommitInfo = True
    # Ours: `event_id` and `source`, the stable id of each message (sinks dedupe by it).
    output_event_id: bool = True
    # DECIMAL as a JSON string ("12.50") instead of a JSON number (12.50).
    decimal_as_string: bool = False
    # The reader's `cdc.source`: the first half of each row message's source identity.
    source: str = Field(default="default", description="name of the source; etcd keys use it")
    # An UPDATE that changes the primary key: `split` publishes a delete of the old
    # key and an insert of the new key (each on its key's shard); `update` publishes
    # Maxwell's single update (on the new key's shard).
    primary_key_change: PrimaryKeyChange = "split"


@dataclass(frozen=True, slots=True)
class _TablePlan:
    """What the formatter precomputes once per table definition."""

    table: TableDef
    head: str  # '{"database":..,"table":..,"type":"'
    key_head: str  # '{"database":..,"table":..'
    pk_names: tuple[str, ...]
    pk_key_fields: tuple[str, ...]  # ',"pk.id":'
    pk_columns_json: str
    date_columns: frozenset[str]
    decimal_columns: frozenset[str]
    encode_data: ObjectEncoder
    rewrites_values: bool  # an option changes values of this table (zero dates, decimals)


def _value_kind(col: ColumnDef, decimal_as_string: bool) -> ValueKind:
    """The JSON type of a column's decoded values, for the compiled encoder."""
    if col.type in INTEGER_TYPES or col.type in (ColumnType.YEAR, ColumnType.BIT):
        return "int"
    if col.type is ColumnType.NEWDECIMAL:
        return "str" if decimal_as_string else "decimal"
    if col.type in (ColumnType.FLOAT, ColumnType.DOUBLE):
        return "float"
    if col.is_json or col.type in (ColumnType.JSON, ColumnType.SET):
        return "any"
    return "str"


def _zero_date(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("0000-00-00")


class MaxwellFormatter:
    """Formats row images (and DDL and bootstrap records) as Maxwell messages."""

    def __init__(self, options: FormatterOptions | None = None) -> None:
        self.options = options or FormatterOptions()
        # By object id (fast), holding the object so its id is not reused.
        self._plans: dict[int, tuple[TableDef, _TablePlan]] = {}
        self._plans_by_value: dict[TableDef, _TablePlan] = {}
        self._txn_cache: tuple[TxnContext, str, str] | None = None
        self._source_texts: dict[int, str] = {}
        opts = self.options
        commit_info = opts.output_commit_info
        # xoffset: 0 never, 1 on every row but the last (Maxwell), 2 on every row.
        self._xoffset_mode = (
            0
            if not commit_info or not opts.output_xoffset
            else 2
            if opts.output_xoffset == "every_row"
            else 1
        )
        self._commit_last = ',"commit":true' if commit_info else ""
        self._commit_other = ',"commit":false' if commit_info == "every_row" else ""

    # --- rows ------------------------------------------------------------------

    def _plan(self, table: TableDef) -> _TablePlan:
        cached = self._plans.get(id(table))
        if cached is not None and cached[0] is table:
            return cached[1]
        # A TABLE_MAP per transaction makes a new TableDef object each time:
        # reuse the plan of an equal definition.
        plan = self._plans_by_value.get(table)
        if plan is None:
            plan = self._new_plan(table)
            if len(self._plans_by_value) > 4096:
                self._plans_by_value.clear()
            self._plans_by_value[table] = plan
        if len(self._plans) > 4096:
            self._plans.clear()
        self._plans[id(table)] = (table, plan)
        return plan

    def _new_plan(self, table: TableDef) -> _TablePlan:
        names = {c.name for c in table.columns}
        missing = [pk for pk in table.primary_key if pk not in names]
        if missing:
            raise FormatError(f"{table.qualified_name}: primary key columns {missing} unknown")
        head = '{"database":' + encode(table.database) + ',"table":' + encode(table.table)
        date_columns = frozenset(c.name for c in table.columns if c.type in DATE_TYPES)
        decimal_columns = frozenset(
            c.name for c in table.columns if c.type is ColumnType.NEWDECIMAL
        )
        return _TablePlan(
            table=table,
            head=head + ',"type":"',
            key_head=head,
            pk_names=table.primary_key,
            # Lowercased, as Maxwell writes them (its key bytes are what compacted
            # topics and consumers match on).
            pk_key_fields=tuple("," + encode("pk." + pk.lower()) + ":" for pk in table.primary_key),
            pk_columns_json=encode(list(table.primary_key)),
            date_columns=date_columns,
            decimal_columns=decimal_columns,
            encode_data=compile_object_encoder(
                [(c.name, _value_kind(c, self.options.decimal_as_string)) for c in table.columns]
            ),
            rewrites_values=bool(
                (self.options.output_null_zerodates and date_columns)
                or (self.options.decimal_as_string and decimal_columns)
            ),
        )

    def _values(self, plan: _TablePlan, values: dict[str, Any]) -> dict[str, Any]:
        opts = self.options
        if opts.output_null_zerodates and plan.date_columns:
            values = {
                k: (None if k in plan.date_columns and _zero_date(v) else v)
                for k, v in values.items()
            }
        if opts.decimal_as_string and plan.decimal_columns:
            values = {
                k: (v.__format__("f") if k in plan.decimal_columns and type(v) is Decimal else v)
                for k, v in values.items()
            }
        return values

    def _txn_fields(self, ctx: TxnContext) -> tuple[str, str]:
        """The per-transaction parts of a row message: before and after `xoffset`."""
        cached = self._txn_cache
        if cached is not None and cached[0] is ctx:
            return cached[1], cached[2]
        opts = self.options
        before = f'","ts":{int(ctx.ts)}'
        if opts.output_commit_info:
            before += f',"xid":{"null" if ctx.xid is None else int(ctx.xid)}'
        after = []
        if opts.output_binlog_position:
            after += [',"position":', encode(f"{ctx.file}:{ctx.pos}")]
        if opts.output_gtid_position and ctx.gtid is not None:
            after += [',"gtid":', encode(ctx.gtid)]
        if opts.output_server_id:
            after += [',"server_id":', str(int(ctx.server_id))]
        if opts.output_thread_id and ctx.thread_id is not None:
            after += [',"thread_id":', str(int(ctx.thread_id))]
        after_text = "".join(after)
        self._txn_cache = (ctx, before, after_text)
        return before, after_text

    def _source_text(self, server_id: int) -> str:
        """`,"source":"<name>/<server_id>"`, per server_id ("" without output_event_id)."""
        text = self._source_texts.get(server_id)
        if text is None:
            text = (
                ',"source":' + encode(format_source(self.options.source, server_id))
                if self.options.output_event_id
                else ""
            )
            self._source_texts[server_id] = text
        return text

    def split_key_changes(self, changes: list[ChangeT]) -> list[ChangeT]:
        """The transaction's changes as published: with `primary_key_change=split`, an
        update that changes the primary key becomes a delete and an insert
        (`cdc.rows.split_key_change`). Row indices (and so event ids) count the
        published rows, so the two are distinct and in order. Returns `changes`
        itself when nothing splits."""
        if self.options.primary_key_change != "split":
            return changes
        out: list[ChangeT] | None = None
        for index, change in enumerate(changes):
            row = change.row
            rows: tuple[RowImage | EncodedRow, ...]
            if row.old is None:
                rows = (row,)
            elif isinstance(row, EncodedRow):
                rows = _split_encoded(row)
            else:
                rows = split_key_change(row, change.table.primary_key)
            if len(rows) > 1 and out is None:
                out = list(changes[:index])
            if out is not None:
                out.extend(replace(change, row=r) for r in rows)  # type: ignore[type-var]
        return changes if out is None else out

    def format(
        self,
        ctx: TxnContext,
        table: TableDef,
        row: RowImage | EncodedRow,
        row_index: int,
        is_last_in_txn: bool,
        query: str | None = None,
    ) -> Message:
        """The message of one row change; `row_index` counts rows across the transaction.
        `query` (with `output_row_query`) is the statement that changed the row."""
        plan = self._plan(table)
        eid = f"{ctx.gtid}#{row_index}" if ctx.gtid else f"{ctx.file}:{ctx.pos}#{row_index}"
        before, after = self._txn_fields(ctx)
        source = self._source_text(ctx.server_id)
        if isinstance(row, EncodedRow):
            # The native decoder wrote the values' JSON with these options applied.
            pk_texts: Sequence[str] = row.primary_key
            data_text = row.data_json
            old_text = "" if row.old is None else ',"old":' + row.old
        else:
            pk_texts, data_text, old_text = self._value_texts(plan, row, eid)
        pk_fields = ""
        if self.options.output_primary_keys:
            pk_fields = ',"primary_key":[' + ",".join(pk_texts) + "]"
        if self.options.output_primary_key_columns:
            pk_fields += ',"primary_key_columns":' + plan.pk_columns_json
        mode = self._xoffset_mode
        commit = (
            f',"xoffset":{row_index}' if mode == 2 or (mode == 1 and not is_last_in_txn) else ""
        ) + (self._commit_last if is_last_in_txn else self._commit_other)
        event_id_text = f',"event_id":{_encode_str(eid)}{source}' if source else ""
        head = plan.head
        if query is not None and self.options.output_row_query:
            # Maxwell's place for it: after `table`, before `type`.
            head = f'{plan.key_head},"query":{_encode_str(query)},"type":"'
        value = (
            f"{head}{row.type}{before}{commit}{after}"
            f'{event_id_text}{pk_fields},"data":{data_text}{old_text}}}'
        )
        if len(pk_texts) == 1:
            key = f"{plan.key_head}{plan.pk_key_fields[0]}{pk_texts[0]}}}"
        else:
            key = plan.key_head
            for field_text, pk_text in zip(plan.pk_key_fields, pk_texts, strict=True):
                key += field_text + pk_text
            key += "}"
        return Message(
            key=_utf8(key),
            value=_utf8(value),
            event_id=eid,
            database=table.database,
            table=table.table,
        )

    def encoded_row_writer(
        self, ctx: TxnContext, table: TableDef, query: str | None = None
    ) -> EncodedRowWriter:
        """`format` of natively encoded rows of one table in one transaction, with
        everything that does not change from row to row written once: the writer
        gives `(key, value, event_id)` of a row, the bytes `format` gives."""
        plan = self._plan(table)
        opts = self.options
        before, after = self._txn_fields(ctx)
        source = self._source_text(ctx.server_id)
        head = plan.head
        if query is not None and opts.output_row_query:
            head = f'{plan.key_head},"query":{_encode_str(query)},"type":"'
        eid_prefix = f"{ctx.gtid}#" if ctx.gtid else f"{ctx.file}:{ctx.pos}#"
        # The JSON string of `eid_prefix + digits` is this and the digits and a
        # quote: JSON escapes characters one by one, and digits need none.
        eid_open = ',"event_id":' + _encode_str(eid_prefix)[:-1] if source else ""
        eid_close = '"' + source
        with_pks = opts.output_primary_keys
        pk_columns = (
            ',"primary_key_columns":' + plan.pk_columns_json
            if opts.output_primary_key_columns
            else ""
        )
        mode = self._xoffset_mode
        commit_last, commit_other = self._commit_last, self._commit_other
        key_head = plan.key_head
        pk_key_fields = plan.pk_key_fields
        single_key_head = key_head + pk_key_fields[0] if len(pk_key_fields) == 1 else None

        def write(
            row: EncodedRow, row_index: int, is_last_in_txn: bool
        ) -> tuple[bytes, bytes, str]:
            pk_texts = row.primary_key
            if mode == 2 or (mode == 1 and not is_last_in_txn):
                commit = f',"xoffset":{row_index}' + (
                    commit_last if is_last_in_txn else commit_other
                )
            else:
                commit = commit_last if is_last_in_txn else commit_other
            event_id_text = f"{eid_open}{row_index}{eid_close}" if eid_open else ""
            pk_fields = (
                ',"primary_key":[' + ",".join(pk_texts) + "]" + pk_columns
                if with_pks
                else pk_columns
            )
            old_text = "" if row.old is None else ',"old":' + row.old
            value = (
                f"{head}{row.type}{before}{commit}{after}{event_id_text}{pk_fields}"
                f',"data":{row.data_json}{old_text}}}'
            )
            if single_key_head is not None and len(pk_texts) == 1:
                key = f"{single_key_head}{pk_texts[0]}}}"
            else:
                key = key_head
                for field_text, pk_text in zip(pk_key_fields, pk_texts, strict=True):
                    key += field_text + pk_text
                key += "}"
            try:
                value_bytes = value.encode()
            except UnicodeEncodeError:
                value_bytes = _utf8(value)
            return _utf8(key), value_bytes, f"{eid_prefix}{row_index}"

        return write

    def _value_texts(self, plan: _TablePlan, row: RowImage, eid: str) -> tuple[list[str], str, str]:
        """The key values', data's and `,"old":..`'s JSON texts of a decoded row."""
        table = plan.table
        data = self._values(plan, row.data) if plan.rewrites_values else row.data
        try:
            if len(plan.pk_names) == 1:
                pk_texts = [encode(data[plan.pk_names[0]])]
            else:
                pk_texts = [encode(data[pk]) for pk in plan.pk_names]
            data_text = plan.encode_data(data) or encode(data)
            old_text = ""
            if row.old is not None:
                old = self._values(plan, row.old) if plan.rewrites_values else row.old
                old_text = ',"old":' + encode(old)
        except KeyError as exc:
            raise FormatError(
                f"{table.qualified_name} event {eid}: primary key column {exc} missing from row"
            ) from None
        except JsonTextError as exc:
            raise FormatError(f"{table.qualified_name} event {eid}: {exc}") from None
        return pk_texts, data_text, old_text

    @staticmethod
    def _encode_object(
        values: dict[str, Any], table: TableDef, eid: str, plan: _TablePlan | None = None
    ) -> str:
        try:
            text = plan.encode_data(values) if plan is not None else None
            return encode(values) if text is None else text
        except JsonTextError as exc:
            raise FormatError(f"{table.qualified_name} event {eid}: {exc}") from None

    @staticmethod
    def _encode_value(value: Any, table: TableDef, eid: str) -> str:
        try:
            return encode(value)
        except JsonTextError as exc:
            raise FormatError(f"{table.qualified_name} event {eid}: {exc}") from None

    # --- bootstrap ---------------------------------------------------------------

    def format_bootstrap(
        self,
        kind: BootstrapType,
        table: TableDef,
        *,
        event_id: str,
        ts: int | None = None,
        data: dict[str, Any] | None = None,
    ) -> Message:
        """A `bootstrap-start`, `bootstrap-insert` or `bootstrap-complete` message.

        `data` is the row (JSON-ready values, as the decoder makes them) for
        bootstrap-insert; start and complete carry `"data":{}` as in Maxwell.
        The key of an insert is the row's key, so a bootstrapped row lands on
        the same shard as its live changes.
        """
        plan = self._plan(table)
        seconds = int(time.time()) if ts is None else int(ts)
        values = self._values(plan, data or {})
        parts = [plan.head, kind, '","ts":', str(seconds)]
        if self.options.output_event_id:
            parts += [',"event_id":', encode(event_id)]
        key_parts = [plan.key_head]
        if kind == "bootstrap-insert":
            try:
                pk_values = [values[pk] for pk in plan.pk_names]
            except KeyError as exc:
                raise FormatError(
                    f"{table.qualified_name} bootstrap row {event_id}: "
                    f"primary key column {exc} missing"
                ) from None
            if self.options.output_primary_keys:
                parts += [',"primary_key":', encode(pk_values)]
            if self.options.output_primary_key_columns:
                parts += [',"primary_key_columns":', plan.pk_columns_json]
            for field_text, value in zip(plan.pk_key_fields, pk_values, strict=True):
                key_parts += [field_text, self._encode_value(value, table, event_id)]
        parts += [',"data":', self._encode_object(values, table, event_id, plan), "}"]
        key_parts.append("}")
        return Message(
            key=_utf8("".join(key_parts)),
            value=_utf8("".join(parts)),
            event_id=event_id,
            database=table.database,
            table=table.table,
        )

    # --- DDL -----------------------------------------------------------------------

    def format_ddl(
        self,
        *,
        ddl_type: str,
        database: str,
        table: str | None,
        sql: str,
        ts_ms: int,
        position: str,
        event_id: str,
        gtid: str | None = None,
        charset: str | None = None,
        definition: dict[str, Any] | None = None,
        old_definition: dict[str, Any] | None = None,
    ) -> Message | None:
        """A DDL message (`table-alter`, `database-create`, ...), or None unless
        `output_ddl` is on. The fields follow Maxwell's DDLMap: a database
        statement carries `database` and (create, alter) `charset`, no `table`;
        a table statement `database`, `table` and the `old`/`def` definitions the
        caller has. `ts` is in milliseconds; `position` only with
        `output_binlog_position`, `gtid` only with `output_gtid_position`."""
        if not self.options.output_ddl:
            return None
        parts = ['{"type":', encode(ddl_type), ',"database":', encode(database)]
        if table is None:
            if ddl_type != "database-drop":
                parts += [',"charset":', encode(charset)]
        else:
            parts += [',"table":', encode(table)]
        if old_definition is not None:
            parts += [',"old":', encode(old_definition)]
        if definition is not None:
            parts += [',"def":', encode(definition)]
        parts += [',"ts":', str(int(ts_ms)), ',"sql":', encode(sql)]
        if self.options.output_binlog_position:
            parts += [',"position":', encode(position)]
        if self.options.output_gtid_position and gtid is not None:
            parts += [',"gtid":', encode(gtid)]
        if self.options.output_event_id:
            parts += [',"event_id":', encode(event_id)]
        parts.append("}")
        key = '{"database":' + encode(database) + ',"table":' + encode(table) + "}"
        return Message(
            key=_utf8(key),
            value=_utf8("".join(parts)),
            event_id=event_id,
            database=database,
            table=table or "",
        )


def _split_encoded(row: EncodedRow) -> tuple[EncodedRow, ...]:
    """`split_key_change` of a natively encoded update: the native decoder wrote the
    whole before image only when a primary key column changed."""
    if row.type != "update" or row.before is None or row.before_primary_key is None:
        return (row,)
    return (
        EncodedRow("delete", row.before, row.before_primary_key),
        EncodedRow("insert", row.data_json, row.primary_key),
    )


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate, only possible inside a string of a JSON document
        # value: backslashreplace writes it as \\udXXXX, which inside a JSON
        # string is exactly the JSON escape of that code unit.
        return text.encode("utf-8", "backslashreplace")
