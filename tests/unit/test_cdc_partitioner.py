"""Shard choice per producer_partition_by and kafka_partition_hash, and its documented
hash input."""

from __future__ import annotations

import zlib
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc.partitioner import Partitioner, java_string_hash, java_text, maxwell_murmur3
from cdc.rows import TxnContext
from shardctl.core.config import ConfigError
from tests.maxwell_reference import java_hash_code, maxwell_partition, murmur3_x86_32

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


# --- Maxwell's hashes (kafka_partition_hash = default | murmur3) -------------------
# Expected numbers come from tests/maxwell_reference.py (the documented algorithms),
# itself checked against published vectors below.


def test_reference_hashes_match_published_vectors() -> None:
    # java.lang.String javadoc formula; "hello".hashCode() == 99162322 is well known,
    # "Aa"/"BB" is the classic collision, "polygenelubricants" hashes to Integer.MIN_VALUE.
    assert java_hash_code("hello") == 99162322
    assert java_hash_code("Aa") == java_hash_code("BB") == 2112
    assert java_hash_code("polygenelubricants") == -(2**31)
    assert java_hash_code("") == 0
    # smhasher MurmurHash3_x86_32 vectors.
    assert murmur3_x86_32(b"", 0) == 0
    assert murmur3_x86_32(b"hello", 0) == 0x248BFA47
    assert murmur3_x86_32(b"The quick brown fox jumps over the lazy dog", 0) == 0x2E4FF723
    assert murmur3_x86_32(b"Hello, world!", 0x9747B28C) & 0xFFFFFFFF == 0x24884CBA


@given(st.text(max_size=80))
def test_java_string_hash_is_javas_formula(text: str) -> None:
    assert java_string_hash(text) == java_hash_code(text)


@given(st.text(max_size=80))
def test_murmur3_is_maxwells_seeded_murmur3_of_utf8(text: str) -> None:
    assert maxwell_murmur3(text) == murmur3_x86_32(text.encode("utf-8"), 25342)


@given(
    text=st.text(max_size=40),
    n=st.integers(min_value=1, max_value=4096),
    hash_function=st.sampled_from(["default", "murmur3"]),
)
def test_database_partition_is_maxwells(text: str, n: int, hash_function: str) -> None:
    part = Partitioner(n, "database", hash_function=hash_function)
    shard = part.shard(KEY, text, "orders", CTX, {"id": 1}, ("id",))
    assert 0 <= shard < n
    assert shard == maxwell_partition(text, n, hash_function)


def test_min_value_hash_lands_in_range() -> None:
    # Math.abs(Integer.MIN_VALUE % n): the remainder is taken before abs.
    for n in (1, 3, 7, 16, 1000):
        shard = Partitioner(n, "database", hash_function="default").shard(
            KEY, "polygenelubricants", "t"
        )
        assert shard == maxwell_partition("polygenelubricants", n, "default")
        assert 0 <= shard < n


def maxwell_string(part: Partitioner, data: dict[str, object], pk: tuple[str, ...]) -> str:
    return part.partition_string(part.by, "shop", "orders", CTX, data, pk)


def test_primary_key_string_follows_row_identity_to_concat_string() -> None:
    # RowIdentity.toConcatString: values' toString with no separator, NULLs skipped,
    # "None" when all are NULL, database + table without a primary key.
    part = Partitioner(8, "primary_key", hash_function="default")
    data = {"id": 4, "code": "Äb", "n": None, "amount": Decimal("12.50")}
    assert maxwell_string(part, data, ("id", "code")) == "4Äb"
    assert maxwell_string(part, data, ("code", "n", "amount")) == "Äb12.50"
    assert maxwell_string(part, {"n": None}, ("n",)) == "None"
    assert maxwell_string(part, data, ()) == "shoporders"
    expected = maxwell_partition("4Äb", 8, "default")
    assert part.shard(KEY, "shop", "orders", CTX, data, ("id", "code")) == expected


def test_table_transaction_and_column_strings() -> None:
    # AbstractMaxwellPartitioner.getHashString and RowMap.buildPartitionKey.
    assert maxwell_string(Partitioner(8, "table", hash_function="murmur3"), {}, ()) == "orders"
    txn = Partitioner(8, "transaction_id", hash_function="murmur3")
    assert maxwell_string(txn, {}, ()) == "48213"
    no_xid = TxnContext(1, None, None, "binlog.000002", 4, 0, None)
    assert txn.partition_string("transaction_id", "s", "t", no_xid, {}, ()) == "null"
    assert txn.partition_string("transaction_id", "s", "t", None, {}, ()) == "null"
    column = Partitioner(8, "column", ("customer", "amount"), "table", "default")
    data = {"customer": "ann", "amount": Decimal("12.50")}
    assert maxwell_string(column, data, ("id",)) == "ann12.50"
    # A missing or NULL column is skipped; only an empty string falls back.
    assert maxwell_string(column, {"customer": None, "amount": 3}, ("id",)) == "3"
    assert maxwell_string(column, {"customer": None}, ("id",)) == "orders"
    by_pk = Partitioner(8, "column", ("customer",), "primary_key", "default")
    assert maxwell_string(by_pk, {"id": 9}, ("id",)) == "9"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        # Java's toString of the type Maxwell holds for each column type.
        (42, "42"),
        (-(2**63), "-9223372036854775808"),
        (2**64 - 1, "18446744073709551615"),
        (True, "true"),
        (Decimal("12.50"), "12.50"),
        (Decimal("0.000001"), "0.000001"),
        (Decimal("0.0000001"), "1E-7"),
        (Decimal("-0.00000012"), "-1.2E-7"),
        (1.5, "1.5"),
        (100.0, "100.0"),
        (0.001, "0.001"),
        (0.0001, "1.0E-4"),
        (1234567.0, "1234567.0"),
        (1e7, "1.0E7"),
        (1.25e10, "1.25E10"),
        (-2.5e-5, "-2.5E-5"),
        (0.0, "0.0"),
        (-0.0, "-0.0"),
        (["a", "b"], "[a, b]"),
        ("x y", "x y"),
    ],
)
def test_java_text_of_values(value: object, text: str) -> None:
    assert java_text(value) == text


def test_ddl_goes_by_database_with_maxwell_hashes() -> None:
    # Maxwell's DDL partitioner: MaxwellKafkaPartitioner(hash, "database", null, "database").
    for hash_function in ("default", "murmur3"):
        part = Partitioner(16, "primary_key", hash_function=hash_function)
        assert part.ddl_shard(b"{}", "shop", "orders", CTX) == maxwell_partition(
            "shop", 16, hash_function
        )
    assert Partitioner(16).ddl_shard(KEY, "shop", "orders", CTX) == crc(KEY, 16)


def test_crc32_stays_the_default_and_the_fast_path() -> None:
    assert Partitioner(4).hash_function == "crc32"
    assert Partitioner(4).by_message_key
    assert not Partitioner(4, hash_function="default").by_message_key
    with pytest.raises(ConfigError, match=r"cdc\.kafka_partition_hash"):
        Partitioner(4, hash_function="fnv")
