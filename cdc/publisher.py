"""From a transaction to the messages to publish, with their shards.

Row changes are already filtered (see `cdc.replication.decoding`); every kept
row becomes one Maxwell message, `commit: true` on the last kept row of the
transaction. Messages are made one at a time as the caller asks for them (a
transaction's rows may be spilled to a file; they are never all in memory).
A statement becomes DDL messages when `output_ddl` is on (and the
table passes the filter), and always drops the cached facts about the tables it
changed. A CREATE TABLE ... SELECT is a statement with rows: its DDL messages
come first (event ids `#0`...), then its rows, numbered on from there. A
transaction may yield no message at all; its end still counts for the
checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from cdc.ddl import classify, is_truncate
from cdc.filtering import Filter
from cdc.formatter import EncodedRowWriter, MaxwellFormatter
from cdc.partitioner import Partitioner
from cdc.producers.base import Outgoing
from cdc.replication.position import BinlogPosition
from cdc.replication.transaction import RowChange, Transaction
from cdc.rows import EncodedRow, Message
from cdc.schema_model import Definitions, SchemaModel

log = logging.getLogger(__name__)


class Publisher:
    def __init__(
        self,
        formatter: MaxwellFormatter,
        partitioner: Partitioner,
        row_filter: Filter,
        ddl_topic: str | None = None,
        invalidate: Callable[[str, str | None], None] | None = None,
        server_charset: str | None = None,
        schema_model: SchemaModel | None = None,
    ) -> None:
        self.formatter = formatter
        self.partitioner = partitioner
        self.filter = row_filter
        self.ddl_topic = ddl_topic
        self._invalidate = invalidate
        # The charset of a CREATE DATABASE that names none (as Maxwell does:
        # the server's character_set_server).
        self._server_charset = server_charset
        # The table definitions of DDL messages (`def`/`old`), kept in stream order.
        self._schema_model = schema_model

    def messages(self, txn: Transaction) -> Iterator[Outgoing]:
        """The transaction's messages in order, made as they are asked for."""
        index = 0
        if txn.statement is not None:
            yield from self._statement(txn)
            if not txn.row_count:
                return
            # CREATE TABLE ... SELECT: its DDL messages come first, in their place;
            # its rows count on after them, so every event id stays distinct.
            index = len(classify(txn.statement.sql, txn.statement.database))
        ctx = txn.ctx
        fmt = self.formatter.format
        partitioner = self.partitioner
        by_key = partitioner.by_message_key
        num_shards = partitioner.num_shards
        shard_for = partitioner.shard_for
        # The writer of natively encoded rows of the last table definition and
        # statement seen (a transaction's rows events mostly share both).
        encoded_writer = self.formatter.encoded_row_writer
        writer: EncodedRowWriter | None = None
        writer_for: tuple[Any, str | None] = (None, None)
        changes = self._published_changes(txn)
        change = next(changes, None)
        while change is not None:
            # One change ahead: the last one carries `commit: true`.
            following = next(changes, None)
            row = change.row
            if by_key and type(row) is EncodedRow:
                table = change.table
                if writer is None or writer_for[0] is not table or writer_for[1] != change.query:
                    writer = encoded_writer(ctx, table, change.query)
                    writer_for = (table, change.query)
                key, value, event_id = writer(row, index, following is None)
                yield Outgoing(
                    key,
                    value,
                    shard_for(key, num_shards),
                    event_id,
                    table.database,
                    table.table,
                )
                change = following
                index += 1
                continue
            message = fmt(ctx, change.table, row, index, following is None, change.query)
            key = message.key
            shard = (
                shard_for(key, num_shards)
                if by_key
                else partitioner.shard(
                    key,
                    message.database,
                    message.table,
                    ctx,
                    change.row.data,
                    change.table.primary_key,
                )
            )
            yield Outgoing(
                key, message.value, shard, message.event_id, message.database, message.table
            )
            change = following
            index += 1

    def _published_changes(self, txn: Transaction) -> Iterator[RowChange]:
        """The transaction's changes as published: an update that changes the primary
        key may become two (`MaxwellFormatter.split_key_changes`)."""
        split = self.formatter.split_key_changes
        for change in txn.rows():
            if change.row.old is None:
                yield change
            else:
                yield from split([change])

    def _statement(self, txn: Transaction) -> list[Outgoing]:
        statement = txn.statement
        assert statement is not None
        truncated = is_truncate(statement.sql, statement.database)
        if truncated is not None:
            log.warning(
                "TRUNCATE of %s.%s at %s:%d deletes rows without row events; consumers are "
                "not told (as in Maxwell)",
                truncated[0],
                truncated[1],
                txn.ctx.file,
                txn.ctx.pos,
            )
        out: list[Outgoing] = []
        for index, change in enumerate(classify(statement.sql, statement.database)):
            if self._invalidate is not None:
                self._invalidate(change.database, change.table)
                if change.old_table is not None and change.old_database is not None:
                    self._invalidate(change.old_database, change.old_table)
            defs = (
                self._schema_model.apply(change, BinlogPosition(txn.ctx.file, txn.ctx.pos))
                if self._schema_model is not None
                else Definitions()
            )
            # As in Maxwell, a RENAME names the table it renames; the new name
            # goes in `def` (alone when the model has no definition).
            table: str | None
            definition: dict[str, Any] | None = defs.new
            if change.old_table is not None and change.old_database is not None:
                database, table = change.old_database, change.old_table
                if definition is None:
                    definition = {"database": change.database, "table": change.table or ""}
            else:
                database, table = change.database, change.table
            if self.filter.is_blacklisted(database, table or "") or (
                table is not None and not self.filter.includes_table(database, table)
            ):
                continue
            charset = change.charset
            if change.type == "database-create" and charset is None:
                charset = self._server_charset
            gtid = txn.ctx.gtid
            event_id = f"{gtid}#{index}" if gtid else f"{txn.ctx.file}:{txn.ctx.pos}#{index}"
            message: Message | None = self.formatter.format_ddl(
                ddl_type=change.type,
                database=database,
                table=table,
                sql=statement.sql,
                ts_ms=txn.ctx.ts * 1000,
                position=f"{txn.ctx.file}:{txn.ctx.pos}",
                event_id=event_id,
                gtid=gtid,
                charset=charset,
                definition=definition,
                old_definition=defs.old,
            )
            if message is None:
                continue
            out.append(
                Outgoing(
                    key=message.key,
                    value=message.value,
                    shard=self.partitioner.ddl_shard(
                        message.key, message.database, message.table, txn.ctx
                    ),
                    event_id=message.event_id,
                    database=message.database,
                    table=message.table,
                    topic=self.ddl_topic,
                )
            )
        return out
