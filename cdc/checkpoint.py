"""The reader's checkpoint in etcd: `<root>cdc/<source>/checkpoint`.

The value is a `cdc.replication.position.Checkpoint` document: a transaction
boundary (file:pos just after a transaction's end event, and the GTID state
including it). It only moves forward, to the end of the newest transaction
whose messages, and those of every transaction before it, were acknowledged
by the producer.

Writes are fenced by the reader's leadership token: the put happens in an etcd
transaction that requires `cdc/<source>/leader` to still have the
create_revision the leader got when it was elected. A deposed reader (lease
expired, paused past its TTL) therefore cannot move the checkpoint, even if it
has not noticed yet. Operators reset it only while no reader leads.

`shardctl cdc checkpoint skip` moves it past exactly one transaction, the one it
sits at, after the reader stopped on it (a session binlog setting without full
rows); it reads that transaction from the server to name the tables it changed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from cdc.decoding.json_columns import JsonSchemaModel
from cdc.replication.errors import SessionSettingError
from cdc.replication.position import Checkpoint, CheckpointFormatError
from cdc.replication.source import BinlogSource, SourceOptions
from cdc.replication.transaction import RowChange, Transaction
from shardctl.core.etcd.client import Absent, Delete, EtcdClient, Put
from shardctl.core.etcd.election import Leadership
from shardctl.core.keyspace import Keyspace


class CheckpointError(Exception):
    """The checkpoint cannot be read or changed."""


class CheckpointStore:
    def __init__(self, client: EtcdClient, keyspace: Keyspace, source: str) -> None:
        self._client = client
        self.key = keyspace.cdc_checkpoint(source)
        self.leader_key = keyspace.cdc_leader(source)
        self.source = source

    async def load(self) -> Checkpoint | None:
        kv = await self._client.get(self.key)
        if kv is None:
            return None
        try:
            return Checkpoint.from_json(kv.value)
        except CheckpointFormatError as exc:
            raise CheckpointError(f"{self.key}: {exc}") from exc

    async def save(self, leadership: Leadership, checkpoint: Checkpoint) -> None:
        """Write `checkpoint` while `leadership` holds; raises NotLeader otherwise."""
        await leadership.guarded_put(self.key, checkpoint.to_json())

    async def reset(self, checkpoint: Checkpoint | None, *, replace: bool = True) -> None:
        """Set (or, with None, delete) the checkpoint; refused while a reader leads,
        and, with `replace=False`, when the source already has one."""
        op = Delete(self.key) if checkpoint is None else Put(self.key, checkpoint.to_json())
        guards = (
            [Absent(self.leader_key)] if replace else [Absent(self.leader_key), Absent(self.key)]
        )
        ok, _ = await self._client.txn(guards, [op])
        if not ok and not replace and await self._client.get(self.key) is not None:
            raise CheckpointError(
                f"{self.key}: source {self.source!r} already has a checkpoint; "
                "replacing it needs --force"
            )
        if not ok:
            leader = await self._client.get(self.leader_key)
            who = leader.value.decode() if leader is not None else "a reader"
            raise CheckpointError(
                f"{self.key}: {who} leads source {self.source!r}; stop every reader of the "
                "source before changing its checkpoint"
            )


@dataclass
class SkippedTransaction:
    """The one transaction `shardctl cdc checkpoint skip` moves the checkpoint past."""

    transaction: Transaction
    tables: list[str]  # every table it changed, as database.table
    findings: list[SessionSettingError]  # why the reader stopped on it

    @property
    def start(self) -> str:
        return f"{self.transaction.ctx.file}:{self.transaction.ctx.pos}"

    def next_checkpoint(self, current: Checkpoint) -> Checkpoint:
        """The transaction's end, with the schema model carried past it."""
        end = self.transaction.end
        if current.json_columns is None:
            return end
        model = JsonSchemaModel(current.json_columns)
        statement = self.transaction.statement
        if statement is not None:
            model.apply_ddl(statement.sql, statement.database, self.start)
        return dataclasses.replace(end, json_columns=model.state)


class _TableRecorder:
    """Row "decoding" that only notes the tables a transaction changes."""

    def __init__(self) -> None:
        self.tables: list[str] = []

    def on_table_map(self, event: Any, where: str) -> None:
        return None

    def on_rotate(self, next_file: str) -> None:
        return None

    def decode_rows(self, event: Any, where: str) -> Sequence[RowChange]:
        name = f"{event.schema}.{event.table}"
        if name not in self.tables:
            self.tables.append(name)
        return ()


def transaction_at_checkpoint(
    source: str,
    connect: dict[str, Any],
    server_id: int,
    mode: Literal["file_pos", "gtid"],
    checkpoint: Checkpoint,
    position: str,
) -> SkippedTransaction:
    """Read the transaction that follows `checkpoint` from the server, as a replica.

    Raises CheckpointError unless it starts at `position` (file:pos of its first
    event, or its GTID): only the transaction the checkpoint sits at is skipped.
    """
    recorder = _TableRecorder()
    findings: list[SessionSettingError] = []
    stream = BinlogSource(
        SourceOptions(
            source=source,
            connect=connect,
            server_id=server_id,
            mode=mode,
            heartbeat_s=1.0,
            on_session_setting=findings.append,
        ),
        recorder,
        checkpoint,
    )
    try:
        for item in stream:
            if not isinstance(item, Transaction):
                raise CheckpointError(
                    f"source {source!r}: no transaction follows the checkpoint "
                    f"{checkpoint.describe()}; nothing to skip"
                )
            start = f"{item.ctx.file}:{item.ctx.pos}"
            if position not in (start, item.ctx.gtid):
                gtid = f" (gtid {item.ctx.gtid})" if item.ctx.gtid else ""
                raise CheckpointError(
                    f"source {source!r}: the checkpoint {checkpoint.describe()} sits at the "
                    f"transaction that starts at {start}{gtid}, not at {position}; only the "
                    "transaction the checkpoint sits at can be skipped"
                )
            tables = list(recorder.tables)
            for finding in findings:
                if finding.table not in tables:
                    tables.append(finding.table)
            return SkippedTransaction(item, tables, findings)
    finally:
        stream.close()
    raise CheckpointError(f"source {source!r}: the binlog stream ended")
