"""The shard of a message: a documented function of its key and the shard count.

`key` is the exact byte string of the Kafka message key (the hash input of
`cdc.partitioner` for the other `producer_partition_by` modes). Two hashes exist;
the cluster config (`config.shard_hash`) records which one a cluster uses:

**jump** (new clusters): jump consistent hash (Lamping & Veach, 2014) of a stable
64-bit hash of the key.

    h = first 8 bytes of SHA-256(key), read as a big-endian unsigned 64-bit integer
    b, j = -1, 0
    while j < num_shards:
        b = j
        h = (h * 2862933555777941757 + 1) mod 2**64
        j = floor((b + 1) * (2**31 / ((h >> 33) + 1)))     # in IEEE double precision
    shard = b

When the shard count grows from N to M, a key either stays in its shard or moves
to one of the new shards N..M-1, and only (M-N)/M of the keys move: the fewest
possible. Shrinking is the reverse. SHA-256 is in every language's standard
library, and the loop is the paper's reference code, so any consumer can
recompute a shard.

**crc32** (clusters created before jump; a config without `shard_hash`):

    shard = crc32(key) % num_shards

with the IEEE 802.3 CRC-32 (zlib.crc32, Java's java.util.zip.CRC32, Go's
hash/crc32 ChecksumIEEE) read as an unsigned 32-bit integer. Changing the shard
count moves most keys.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable
from typing import Literal

ShardHash = Literal["jump", "crc32"]
SHARD_HASHES: tuple[ShardHash, ...] = ("jump", "crc32")

_MASK64 = (1 << 64) - 1
_LCG_MULTIPLIER = 2862933555777941757
_TWO_POW_31 = float(1 << 31)


def key_hash64(key: bytes) -> int:
    """The stable 64-bit hash jump is computed over: SHA-256's first 8 bytes, big-endian."""
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big")


def jump_consistent_hash(key: int, num_buckets: int) -> int:
    """Lamping & Veach's jump consistent hash of an unsigned 64-bit `key`."""
    if num_buckets <= 0:
        raise ValueError(f"num_shards must be positive, got {num_buckets}")
    if not 0 <= key <= _MASK64:
        raise ValueError(f"jump hash key {key} is not an unsigned 64-bit integer")
    bucket, jump = -1, 0
    while jump < num_buckets:
        bucket = jump
        key = (key * _LCG_MULTIPLIER + 1) & _MASK64
        jump = int((bucket + 1) * (_TWO_POW_31 / float((key >> 33) + 1)))
    return bucket


def shard_of(key: bytes, num_shards: int, shard_hash: ShardHash = "crc32") -> int:
    """The shard in [0, num_shards) that owns `key` under `shard_hash`."""
    if num_shards <= 0:
        raise ValueError(f"num_shards must be positive, got {num_shards}")
    if shard_hash == "jump":
        return jump_consistent_hash(key_hash64(key), num_shards)
    if shard_hash == "crc32":
        return zlib.crc32(key) % num_shards
    raise ValueError(f"shard_hash {shard_hash!r} is not one of {', '.join(SHARD_HASHES)}")


def shard_function(shard_hash: ShardHash) -> Callable[[bytes, int], int]:
    """`shard_of` for one hash, without the per-call dispatch (once per row in the reader)."""
    if shard_hash == "jump":
        return lambda key, n: jump_consistent_hash(key_hash64(key), n)
    if shard_hash == "crc32":
        return lambda key, n: zlib.crc32(key) % n
    raise ValueError(f"shard_hash {shard_hash!r} is not one of {', '.join(SHARD_HASHES)}")


def gaining_shards(old: int, new: int, shard_hash: ShardHash) -> range:
    """The shards that may receive keys another shard held when the count goes from
    `old` to `new`: under jump, only the added shards on growth; otherwise all of them."""
    if shard_hash == "jump" and new > old:
        return range(old, new)
    return range(new)
