"""Event ids: one format shared by the reader and the sinks, and its commit order."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cdc.rows import TxnContext, event_id
from shardctl.core.event_ids import describe_key, format_event_id, format_source, order_key


def test_the_three_forms() -> None:
    assert format_event_id("0-1-153704", "binlog.000002", 4, 3) == "0-1-153704#3"
    assert format_event_id(None, "binlog.000002", 4, 3) == "binlog.000002:4#3"
    assert order_key("0-1-153704#3") == ("gtid:0", (153704, 3))
    uuid = "3E11FA47-71CA-11E1-9E33-C80AA9429562"
    assert order_key(f"{uuid}:23#0") == (f"gtid:{uuid.lower()}", (23, 0))
    assert order_key("binlog.000002:4#3") == ("binlog:binlog", (2, 4, 3))
    assert order_key("bootstrap:r1#5") is None
    assert order_key("no-row-index") is None


def test_the_reader_uses_the_shared_format() -> None:
    ctx = TxnContext(
        server_id=1, thread_id=2, gtid=None, file="mysql-bin.000007", pos=120, ts=0, xid=9
    )
    assert event_id(ctx, 4) == "mysql-bin.000007:120#4"


gtids = st.tuples(
    st.integers(0, 9), st.integers(1, 2**32), st.integers(1, 2**40), st.integers(0, 10**6)
)


@given(gtids, gtids)
def test_gtid_order_within_a_domain_is_commit_order(
    a: tuple[int, int, int, int], b: tuple[int, int, int, int]
) -> None:
    key_a = order_key(format_event_id(f"{a[0]}-{a[1]}-{a[2]}", "f.1", 4, a[3]))
    key_b = order_key(format_event_id(f"{a[0]}-{b[1]}-{b[2]}", "f.1", 4, b[3]))
    assert key_a is not None and key_b is not None and key_a[0] == key_b[0]
    assert (key_a[1] < key_b[1]) == ((a[2], a[3]) < (b[2], b[3]))


positions = st.tuples(st.integers(1, 999999), st.integers(4, 2**40), st.integers(0, 10**6))


@given(positions, positions)
def test_binlog_position_order_is_file_then_pos_then_row(
    a: tuple[int, int, int], b: tuple[int, int, int]
) -> None:
    key_a = order_key(format_event_id(None, f"binlog.{a[0]:06d}", a[1], a[2]))
    key_b = order_key(format_event_id(None, f"binlog.{b[0]:06d}", b[1], b[2]))
    assert key_a is not None and key_b is not None
    assert (key_a[1] < key_b[1]) == (a < b)


def test_the_source_identity_separates_streams() -> None:
    first = format_source("shop", 1)
    second = format_source("shop-eu", 1)
    assert first == "shop/1"
    assert order_key("0-1-57#0", first) == ("shop/1|gtid:0", (57, 0))
    assert order_key("0-1-57#0", second) == ("shop-eu/1|gtid:0", (57, 0))
    assert order_key("binlog.000002:4#3", format_source("shop", 7)) == (
        "shop/7|binlog:binlog",
        (2, 4, 3),
    )
    # A message without a source (written before it existed) keeps the id's own stream.
    assert order_key("0-1-57#0", None) == ("gtid:0", (57, 0))


@given(st.from_regex(r"[A-Za-z0-9_.:@-]{1,40}", fullmatch=True), st.integers(1, 2**32 - 1))
def test_a_source_identity_reads_back(name: str, server_id: int) -> None:
    identity = format_source(name, server_id)
    assert identity.rpartition("/") == (name, "/", str(server_id))


def test_positions_read_as_positions() -> None:
    assert describe_key((57, 3)) == "seq 57 row 3"
    assert describe_key((2, 4, 0)) == "file 2 pos 4 row 0"
