"""Shard choice per producer_partition_by, and its documented hash input."""

from __future__ import annotations

import zlib
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc.partitioner import Partitioner
from cdc.rows import TxnContext
from shardctl.config import ConfigError

KEY = b'{"database":"shop","table":"orders","pk.id":4}'
CTX = TxnContext(
    server_id=1, thread_id=None, gtid="0-1-57", file="binlog.000001", pos=400, ts=0, xid=48213
)


def crc(text: bytes, n: int) -> int:
    return zlib.crc32(text) % n


def test_primary_key_hashes_the_message_key() -> None:
    assert Partitioner(16).shard(KEY, "shop", "orders", CTX, {"id": 4}) == crc(KEY, 16)


def test_table_database_and_transaction_inputs() -> None:
    assert Partitioner(7, "table").hash_input(KEY, "shop", "orders", CTX, None) == b"shop.orders"
    assert Partitioner(7, "database").hash_input(KEY, "shop", "orders", CTX, None) == b"shop"
    assert Partitioner(7, "transaction_id").hash_input(KEY, "s", "t", CTX, None) == b"48213"
    no_xid = TxnContext(1, None, None, "binlog.000002", 4, 0, None)
    assert Partitioner(7, "transaction_id").hash_input(KEY, "s", "t", no_xid, None) == (
        b"binlog.000002:4"
    )


def test_column_mode_joins_values_and_falls_back() -> None:
    part = Partitioner(9, "column", ("customer", "amount"), "table")
    data = {"customer": "ann", "amount": Decimal("12.50"), "other": 1}
    assert part.hash_input(KEY, "shop", "orders", CTX, data) == b"ann,12.50"
    missing = {"customer": "ann", "amount": None}
    assert part.hash_input(KEY, "shop", "orders", CTX, missing) == b"shop.orders"


def test_bad_settings_name_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"cdc\.producer_partition_columns"):
        Partitioner(4, "column")
    with pytest.raises(ConfigError, match=r"cdc\.num_shards"):
        Partitioner(0)
    with pytest.raises(ConfigError, match=r"cdc\.producer_partition_by"):
        Partitioner(4, "random")  # type: ignore[arg-type]


@given(key=st.binary(min_size=1, max_size=64), n=st.integers(min_value=1, max_value=4096))
def test_shard_is_in_range_and_stable(key: bytes, n: int) -> None:
    part = Partitioner(n)
    shard = part.shard(key, "d", "t", CTX, None)
    assert 0 <= shard < n
    assert shard == part.shard(key, "d", "t", CTX, None) == crc(key, n)
