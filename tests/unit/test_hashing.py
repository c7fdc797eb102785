"""The shard hashes: jump consistent hash over SHA-256's first 8 bytes, and CRC-32 % N."""

from __future__ import annotations

import hashlib
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardctl.core.hashing import (
    gaining_shards,
    jump_consistent_hash,
    key_hash64,
    shard_function,
    shard_of,
)

U64 = st.integers(min_value=0, max_value=2**64 - 1)

# (key, buckets, bucket): the vectors published with implementations of the paper's
# reference code (ClickHouse's jumpConsistentHash tests list these six).
JUMP_VECTORS = [
    (1, 1, 0),
    (42, 57, 43),
    (256, 1024, 520),
    (3735883980, 1, 0),
    (3735883980, 666, 361),
    (16045690984833335023, 255, 237),
]


@pytest.mark.parametrize(("key", "buckets", "expected"), JUMP_VECTORS)
def test_jump_matches_the_published_vectors(key: int, buckets: int, expected: int) -> None:
    assert jump_consistent_hash(key, buckets) == expected


def test_the_64_bit_key_hash_is_sha256s_first_eight_bytes_big_endian() -> None:
    # SHA-256("abc") = ba7816bf8f01cfea 414140de5dae2223 ...: the published FIPS 180-2 example.
    assert key_hash64(b"abc") == 0xBA7816BF8F01CFEA
    assert key_hash64(b"") == int.from_bytes(hashlib.sha256(b"").digest()[:8], "big")


def test_jump_shard_of_a_message_key_is_jump_of_its_key_hash() -> None:
    key = b'{"database":"shop","table":"orders","pk.id":4}'
    for n in (1, 8, 12, 64):
        assert shard_of(key, n, "jump") == jump_consistent_hash(key_hash64(key), n)
        assert shard_function("jump")(key, n) == shard_of(key, n, "jump")


def test_crc32_is_kept_for_existing_topics() -> None:
    # 0xCBF43926 is CRC-32/ISO-HDLC of b"123456789", the value every implementation lists.
    assert shard_of(b"123456789", 2**32, "crc32") == 0xCBF43926
    assert shard_of(b"123456789", 64) == 0xCBF43926 % 64
    assert shard_function("crc32")(b"123456789", 64) == 0xCBF43926 % 64


@given(key=U64, n=st.integers(min_value=1, max_value=5000), grow=st.integers(1, 5000))
def test_growing_moves_a_key_only_to_a_new_shard(key: int, n: int, grow: int) -> None:
    before = jump_consistent_hash(key, n)
    after = jump_consistent_hash(key, n + grow)
    assert 0 <= before < n and 0 <= after < n + grow
    assert after == before or after >= n


def test_growing_8_to_12_moves_the_fewest_keys() -> None:
    # 12,000 fixed keys: the least any hash can move is the share the 4 new shards must
    # hold, 1/3; jump moves about that and CRC-32 % N about two thirds.
    keys = [f'{{"database":"shop","table":"orders","pk.id":{i}}}'.encode() for i in range(12_000)]
    moved = sum(shard_of(k, 8, "jump") != shard_of(k, 12, "jump") for k in keys)
    assert abs(moved / len(keys) - 1 / 3) < 0.02
    for key in keys:
        old, new = shard_of(key, 8, "jump"), shard_of(key, 12, "jump")
        assert new == old or new in gaining_shards(8, 12, "jump")
    crc_moved = sum(zlib.crc32(k) % 8 != zlib.crc32(k) % 12 for k in keys)
    assert crc_moved > 1.8 * moved


def test_jump_spreads_keys_evenly() -> None:
    keys = [f"key-{i}".encode() for i in range(24_000)]
    counts = [0] * 12
    for key in keys:
        counts[shard_of(key, 12, "jump")] += 1
    assert max(counts) < 1.1 * 2_000 and min(counts) > 0.9 * 2_000


def test_gaining_shards() -> None:
    assert gaining_shards(8, 12, "jump") == range(8, 12)
    assert gaining_shards(12, 8, "jump") == range(8)  # a shrink moves keys into all
    assert gaining_shards(8, 12, "crc32") == range(12)


@given(st.binary(max_size=256), st.integers(min_value=1, max_value=100_000))
def test_shard_is_in_range(key: bytes, n: int) -> None:
    assert 0 <= shard_of(key, n, "crc32") < n
    assert 0 <= shard_of(key, n, "jump") < n


@pytest.mark.parametrize("n", [0, -3])
def test_shard_count_must_be_positive(n: int) -> None:
    with pytest.raises(ValueError, match="num_shards must be positive"):
        shard_of(b"k", n)
    with pytest.raises(ValueError, match="num_shards must be positive"):
        shard_of(b"k", n, "jump")


def test_an_unknown_hash_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="shard_hash 'md5'"):
        shard_of(b"k", 4, "md5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shard_hash 'md5'"):
        shard_function("md5")  # type: ignore[arg-type]
