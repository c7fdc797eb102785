"""Which shard a message goes to: `shard = shard_of(hash input, num_shards, shard_hash)`.

`shard_of` is `shardctl.hashing.shard_of`: jump consistent hash, or `crc32 % num_shards`
for clusters created before it (the cluster config's `shard_hash`). The hash input
is a byte string that depends on `producer_partition_by`:

| mode             | hash input (UTF-8 bytes)                                            |
|------------------|---------------------------------------------------------------------|
| `primary_key`    | the Kafka message key exactly as published, e.g.                    |
|                  | `{"database":"shop","table":"orders","pk.id":4}`                    |
| `table`          | `<database>.<table>`, e.g. `shop.orders`                            |
| `database`       | `<database>`, e.g. `shop`                                           |
| `transaction_id` | the transaction's XID in decimal, e.g. `48213`; for a transaction   |
|                  | without XID, its GTID (`0-1-57`) or else `<file>:<pos>` of its start |
| `column`         | the values of `producer_partition_columns` in the order given,      |
|                  | each as text (strings as is, numbers in decimal, true/false), joined |
|                  | by `,`; if any of the columns is missing or NULL the message is     |
|                  | placed by `producer_partition_by_fallback` instead                  |

`primary_key` (the default) keeps every change of one row in one shard, so each
row's changes stay in commit order. `table`, `database` and `transaction_id`
keep larger groups in order at the cost of spread.
"""

from __future__ import annotations

import decimal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from cdc.rows import TxnContext
from shardctl.config import ConfigError
from shardctl.hashing import SHARD_HASHES, ShardHash, shard_function

PartitionBy = Literal["primary_key", "table", "database", "transaction_id", "column"]
FallbackBy = Literal["primary_key", "table", "database", "transaction_id"]
MODES: tuple[str, ...] = ("primary_key", "table", "database", "transaction_id", "column")
FALLBACKS: tuple[str, ...] = ("primary_key", "table", "database", "transaction_id")


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, decimal.Decimal):
        return format(value, "f")
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


@dataclass(frozen=True, slots=True)
class Partitioner:
    num_shards: int
    by: PartitionBy = "primary_key"
    columns: tuple[str, ...] = ()
    fallback: FallbackBy = "database"
    shard_hash: ShardHash = "crc32"

    def __post_init__(self) -> None:
        if self.shard_hash not in SHARD_HASHES:
            raise ConfigError(
                f"config.shard_hash: {self.shard_hash!r} is not one of {', '.join(SHARD_HASHES)}"
            )
        if self.num_shards <= 0:
            raise ConfigError(f"cdc.num_shards: must be positive, got {self.num_shards}")
        if self.by not in MODES:
            raise ConfigError(
                f"cdc.producer_partition_by: {self.by!r} is not one of {', '.join(MODES)}"
            )
        if self.by == "column" and not self.columns:
            raise ConfigError(
                "cdc.producer_partition_columns: required when producer_partition_by=column"
            )
        if self.fallback not in FALLBACKS:
            raise ConfigError(
                f"cdc.producer_partition_by_fallback: {self.fallback!r} is not one of "
                f"{', '.join(FALLBACKS)}"
            )

    def hash_input(
        self,
        key: bytes,
        database: str,
        table: str,
        ctx: TxnContext | None,
        data: Mapping[str, Any] | None,
    ) -> bytes:
        """The bytes whose hash picks the shard; see the module docstring."""
        return self._input(self.by, key, database, table, ctx, data)

    def shard(
        self,
        key: bytes,
        database: str,
        table: str,
        ctx: TxnContext | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> int:
        shard_for = self.shard_for
        if self.by == "primary_key":
            # The common case, once per row: skip the mode dispatch.
            return shard_for(key, self.num_shards)
        return shard_for(self.hash_input(key, database, table, ctx, data), self.num_shards)

    @property
    def shard_for(self) -> Callable[[bytes, int], int]:
        """The hash as a function of (hash input, shard count)."""
        return shard_function(self.shard_hash)

    def _input(
        self,
        mode: str,
        key: bytes,
        database: str,
        table: str,
        ctx: TxnContext | None,
        data: Mapping[str, Any] | None,
    ) -> bytes:
        if mode == "primary_key":
            return key
        if mode == "table":
            return f"{database}.{table}".encode()
        if mode == "database":
            return database.encode()
        if mode == "transaction_id":
            if ctx is None:
                # Messages outside a transaction (bootstrap) fall back to their key.
                return key
            if ctx.xid is not None:
                return str(ctx.xid).encode()
            return (ctx.gtid or f"{ctx.file}:{ctx.pos}").encode()
        values = self._column_values(data)
        if values is None:
            return self._input(self.fallback, key, database, table, ctx, data)
        return ",".join(values).encode()

    def _column_values(self, data: Mapping[str, Any] | None) -> Sequence[str] | None:
        if data is None:
            return None
        out: list[str] = []
        for column in self.columns:
            text = _text(data.get(column))
            if text is None:
                return None
            out.append(text)
        return out
