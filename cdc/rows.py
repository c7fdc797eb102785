"""The shared vocabulary of the CDC pipeline: where a transaction sits, one decoded
row change, and one formatted message.

The stream fills `TxnContext`, the row decoder yields `RowImage`s, and the
formatter turns both into a `Message` that a producer publishes unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from shardctl.core.event_ids import format_event_id

RowType = Literal["insert", "update", "delete"]
# How an UPDATE that changes the primary key is published (`cdc.primary_key_change`).
PrimaryKeyChange = Literal["split", "update"]


@dataclass(frozen=True, slots=True)
class TxnContext:
    """Where a transaction sits in the binlog. Filled by the stream, read by the formatter."""

    server_id: int
    thread_id: int | None
    # "domain-server-seq" (MariaDB) or "uuid:n" (MySQL); None if the server gives none.
    gtid: str | None
    # Binlog file and log position of the transaction's first event (GTID or BEGIN).
    file: str
    pos: int
    # Seconds, from the event header.
    ts: int
    # Set once the XID event has arrived; every row message carries it.
    xid: int | None


@dataclass(slots=True)
class RowImage:
    """One decoded row change from a rows event.

    `data` holds JSON-ready values: the after-image for inserts and updates, the
    deleted row for deletes. `old` is set on updates only and holds the changed
    columns with their values before the update.
    """

    type: RowType
    data: dict[str, Any]
    old: dict[str, Any] | None = None


@dataclass(slots=True)
class EncodedRow:
    """One row change whose JSON texts the native decoder already wrote
    (`cdc.decoding.native`): the formatter puts them in the message as they are.

    `data` is the JSON object of the after-image (the deleted row for deletes),
    `primary_key` the JSON texts of the key values in key order. Updates carry
    `old` (the changed columns before the update, a JSON object); when the update
    changed a primary key column, `before` is the whole row before it and
    `before_primary_key` its key values, for `primary_key_change = split`.
    """

    type: RowType
    data_json: str
    primary_key: tuple[str, ...]
    old: str | None = None
    before: str | None = None
    before_primary_key: tuple[str, ...] | None = None

    @property
    def data(self) -> dict[str, Any]:
        # Only rows that no one reads values from are encoded natively (see
        # `cdc.decoding.native`); reaching this is a bug in that decision.
        raise TypeError("a natively encoded row keeps no values; use the Python decoder")


@dataclass(slots=True)
class Message:
    """One row change, ready to publish. Treat it as immutable (it is not frozen
    only because frozen dataclasses are slow to build, and one is built per row).

    `key` is the Maxwell Kafka key JSON and the hash input of the shard, so it is
    byte-stable for a given row. `value` is the Maxwell JSON document.
    """

    key: bytes
    value: bytes
    event_id: str
    database: str
    table: str


def event_id(ctx: TxnContext, row_index: int) -> str:
    """Stable id of a row change (the format is in `shardctl.core.event_ids`).

    `row_index` counts rows from 0 across the whole transaction, so a replayed
    transaction yields the same ids.
    """
    return format_event_id(ctx.gtid, ctx.file, ctx.pos, row_index)


def split_key_change(row: RowImage, primary_key: Sequence[str]) -> tuple[RowImage, ...]:
    """An update that changes the primary key as a `delete` of the old key followed by
    an `insert` of the new key (Debezium's design); any other row as it is.

    The old key's earlier changes sit on the old key's shard: the delete goes there,
    after them, so a consumer that applies that shard late still ends without the
    old key. The delete carries the whole row before the update.
    """
    old = row.old
    if row.type != "update" or not old:
        return (row,)
    data = row.data
    if not any(pk in old and old[pk] != data.get(pk) for pk in primary_key):
        return (row,)
    before = {name: old.get(name, value) for name, value in data.items()}
    return RowImage("delete", before), RowImage("insert", data)
