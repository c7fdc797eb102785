"""The shard hash is CRC-32 (IEEE) of the message key, modulo the shard count."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardctl.hashing import shard_of


def test_matches_the_published_crc32_check_value() -> None:
    # 0xCBF43926 is CRC-32/ISO-HDLC of b"123456789", the value every implementation lists.
    assert shard_of(b"123456789", 2**32) == 0xCBF43926
    assert shard_of(b"123456789", 64) == 0xCBF43926 % 64


def test_maxwell_key_example() -> None:
    key = b'{"database":"shop","table":"orders","pk.id":4}'
    assert shard_of(key, 16) == shard_of(key, 16)
    assert shard_of(key, 1) == 0


@given(st.binary(max_size=256), st.integers(min_value=1, max_value=100_000))
def test_shard_is_in_range(key: bytes, n: int) -> None:
    assert 0 <= shard_of(key, n) < n


@pytest.mark.parametrize("n", [0, -3])
def test_shard_count_must_be_positive(n: int) -> None:
    with pytest.raises(ValueError, match="num_shards must be positive"):
        shard_of(b"k", n)
