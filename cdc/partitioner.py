"""Which shard a message goes to (on Kafka, partition = shard).

`kafka_partition_hash` picks the hash and, with it, the hash input.

**`crc32`** (the default) means shardctl's own shard hash, whichever the cluster
config's `shard_hash` names: `shard = shard_of(hash input, num_shards, shard_hash)`
with `shardctl.core.hashing.shard_of`, jump consistent hash for clusters created with it,
`crc32 % num_shards` for clusters created before it. The hash input is a byte
string that depends on `producer_partition_by`:

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

**`default` and `murmur3`** give Maxwell's partition numbers (Maxwell v1.45's
`MaxwellKafkaPartitioner`): `shard = abs(hash(s) % num_shards)` with Java's
truncating `%`, where `hash` is Java's `String.hashCode` of `s` (`default`) or
MurmurHash3 x86 32-bit of the UTF-8 bytes of `s` with seed 25342 (`murmur3`),
both as signed 32-bit integers. The partition string `s` follows Maxwell's
rules (`AbstractMaxwellPartitioner`, `RowIdentity.toConcatString`,
`RowMap.buildPartitionKey`):

| mode             | partition string                                                    |
|------------------|---------------------------------------------------------------------|
| `primary_key`    | the primary key values as text, concatenated with no separator,    |
|                  | NULLs skipped; `None` if all are NULL; `<database><table>` for a    |
|                  | table without a primary key                                         |
| `table`          | `<table>`                                                           |
| `database`       | `<database>`                                                        |
| `transaction_id` | the XID in decimal, `null` without one (and for bootstrap rows)     |
| `column`         | the values of `producer_partition_columns` as text, concatenated    |
|                  | with no separator, NULL or missing ones skipped; if that is empty,  |
|                  | the string of `producer_partition_by_fallback`                      |

Values are written as Java writes Maxwell's values: strings as they are,
integers and DECIMALs as `toString` (`1E-7` for 0.0000001), floats as Java's
`Double.toString` (`1.0E10`), booleans as `true`/`false`, SET members as
`[a, b]`. DDL messages go by `<database>`, as Maxwell's DDL partitioner does.
"""

from __future__ import annotations

import decimal
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import mmh3

from cdc.rows import TxnContext
from shardctl.core.config import ConfigError
from shardctl.core.hashing import SHARD_HASHES, ShardHash, shard_function

PartitionBy = Literal["primary_key", "table", "database", "transaction_id", "column"]
FallbackBy = Literal["primary_key", "table", "database", "transaction_id"]
PartitionHash = Literal["crc32", "default", "murmur3"]
MODES: tuple[str, ...] = ("primary_key", "table", "database", "transaction_id", "column")
FALLBACKS: tuple[str, ...] = ("primary_key", "table", "database", "transaction_id")
HASHES: tuple[str, ...] = ("crc32", "default", "murmur3")
# MaxwellKafkaPartitioner's MURMUR_HASH_SEED.
MAXWELL_MURMUR3_SEED = 25342

_UTF16 = "utf-16-le" if sys.byteorder == "little" else "utf-16-be"


def java_string_hash(text: str) -> int:
    """Java's `String.hashCode`: `s[0]*31^(n-1) + ... + s[n-1]` over UTF-16 code
    units, as a signed 32-bit integer."""
    units: Sequence[int]
    if text.isascii():
        units = text.encode("ascii")
    else:
        units = memoryview(text.encode(_UTF16, "surrogatepass")).cast("H")
    h = 0
    for unit in units:
        h = (31 * h + unit) & 0xFFFFFFFF
    return h - 0x1_0000_0000 if h & 0x8000_0000 else h


def maxwell_murmur3(text: str) -> int:
    """Maxwell's murmur3: MurmurHash3 x86 32-bit of the UTF-8 bytes, seed 25342, signed."""
    return mmh3.hash(text.encode("utf-8", "surrogatepass"), MAXWELL_MURMUR3_SEED, signed=True)


def java_partition(hash_value: int, num_shards: int) -> int:
    """`Math.abs(hash % n)` with Java's `%`, which keeps the dividend's sign."""
    return abs(hash_value) % num_shards


def java_text(value: Any) -> str:
    """A decoded value as Java's `toString` writes the value Maxwell holds for it."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, decimal.Decimal):
        # Python's and Java's BigDecimal `toString` follow the same rule (scientific
        # notation when the exponent is positive or the adjusted exponent < -6).
        return str(value)
    if isinstance(value, float):
        return _java_double_text(value)
    if isinstance(value, list):
        return "[" + ", ".join(java_text(v) for v in value) + "]"
    # JSON documents: Maxwell hashes its own object there; ours is the compact text.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _java_double_text(value: float) -> str:
    """Java's `Double.toString` (JDK 19 and later: the shortest digits that read back)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
    sign = "-" if value < 0 else ""
    magnitude = abs(value)
    shortest = decimal.Decimal(repr(magnitude))
    if 1e-3 <= magnitude < 1e7:
        text = format(shortest, "f")
        if "." not in text:
            text += ".0"
        return sign + text
    digits_tuple = shortest.normalize().as_tuple()
    digits = "".join(str(d) for d in digits_tuple.digits)
    exponent = len(digits) - 1 + int(digits_tuple.exponent)
    return f"{sign}{digits[0]}.{digits[1:] or '0'}E{exponent}"


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
    hash_function: PartitionHash = "crc32"
    shard_hash: ShardHash = "crc32"
    # The hash as a function of (hash input, shard count); made once, used per row.
    shard_for: Callable[[bytes, int], int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.shard_hash not in SHARD_HASHES:
            raise ConfigError(
                f"config.shard_hash: {self.shard_hash!r} is not one of {', '.join(SHARD_HASHES)}"
            )
        object.__setattr__(self, "shard_for", shard_function(self.shard_hash))
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
        if self.hash_function not in HASHES:
            raise ConfigError(
                f"cdc.kafka_partition_hash: {self.hash_function!r} is not one of "
                f"{', '.join(HASHES)}"
            )

    @property
    def by_message_key(self) -> bool:
        """True when the shard is shardctl's hash of the message key: callers may then
        use `shard_for(key, num_shards)` directly."""
        return self.by == "primary_key" and self.hash_function == "crc32"

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
        primary_key: Sequence[str] = (),
    ) -> int:
        """The shard of a row message; `primary_key` names the table's key columns
        (Maxwell's partition string of `primary_key` is made of their values)."""
        if self.hash_function != "crc32":
            text = self.partition_string(self.by, database, table, ctx, data, primary_key)
            return self._maxwell_shard(text)
        shard_for = self.shard_for
        if self.by == "primary_key":
            # The common case, once per row: skip the mode dispatch.
            return shard_for(key, self.num_shards)
        return shard_for(self.hash_input(key, database, table, ctx, data), self.num_shards)

    def ddl_shard(self, key: bytes, database: str, table: str, ctx: TxnContext) -> int:
        """The shard of a DDL message: with Maxwell's hashes by database, as Maxwell's
        DDL partitioner does; with crc32 as a row message without data."""
        if self.hash_function != "crc32":
            return self._maxwell_shard(database)
        return self.shard(key, database, table, ctx, None)

    def _maxwell_shard(self, text: str) -> int:
        if self.hash_function == "murmur3":
            return java_partition(maxwell_murmur3(text), self.num_shards)
        return java_partition(java_string_hash(text), self.num_shards)

    def partition_string(
        self,
        mode: str,
        database: str,
        table: str,
        ctx: TxnContext | None,
        data: Mapping[str, Any] | None,
        primary_key: Sequence[str],
    ) -> str:
        """Maxwell's partition string of a row message; see the module docstring."""
        if mode == "database":
            return database
        if mode == "table":
            if not table and self.fallback == "database":
                return database
            return table
        if mode == "primary_key":
            if not primary_key:
                return database + table
            values = data or {}
            text = "".join(java_text(values[c]) for c in primary_key if values.get(c) is not None)
            return text or "None"
        if mode == "transaction_id":
            return "null" if ctx is None or ctx.xid is None else str(ctx.xid)
        values = data or {}
        text = "".join(java_text(values[c]) for c in self.columns if values.get(c) is not None)
        if text:
            return text
        return self.partition_string(self.fallback, database, table, ctx, data, primary_key)

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
