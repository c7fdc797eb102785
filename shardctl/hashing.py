"""The shard of a message.

    shard = crc32(key) % num_shards

`key` is the exact UTF-8 byte string of the Kafka message key, and crc32 is the
IEEE 802.3 CRC-32 (zlib.crc32, Java's java.util.zip.CRC32, Go's hash/crc32
ChecksumIEEE), read as an unsigned 32-bit integer. Any language can recompute a
shard from a message key with its standard library.
"""

from __future__ import annotations

import zlib


def shard_of(key: bytes, num_shards: int) -> int:
    """The shard in [0, num_shards) that owns `key`."""
    if num_shards <= 0:
        raise ValueError(f"num_shards must be positive, got {num_shards}")
    return zlib.crc32(key) % num_shards
