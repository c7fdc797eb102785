"""Read-only watermarks: MySQL GTID sets (documented formats), MariaDB GTID
positions, file:pos, and the two questions asked of a watermark."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc.replication.position import BinlogPosition, Checkpoint
from cdc.replication.source import MysqlGtidState
from cdc.snapshot.watermark import (
    MysqlGtidSet,
    Watermark,
    WatermarkFormatError,
    mariadb_contains,
)

UUID = "3E11FA47-71CA-11E1-9E33-C80AA9429562"
OTHER = "24da167-0c0c-11e8-8442-00059a3c7b00".replace("24da167", "24da1670")


def test_mysql_gtid_set_documented_forms() -> None:
    # MySQL 8.4 reference, "GTID Format and Storage": a single GTID, a range,
    # several intervals, several servers (newline after the comma, as
    # @@gtid_executed prints them), and tagged GTIDs.
    single = MysqlGtidSet(f"{UUID}:23")
    assert single.contains(MysqlGtidSet(f"{UUID}:23"))
    assert not single.contains(MysqlGtidSet(f"{UUID}:22"))
    intervals = MysqlGtidSet(f"{UUID}:1-3:11:47-49")
    assert intervals.contains(MysqlGtidSet(f"{UUID}:2-3:48"))
    assert not intervals.contains(MysqlGtidSet(f"{UUID}:4"))
    several = MysqlGtidSet(f"{UUID}:1-5,\n{OTHER}:1-27")
    assert several.contains(MysqlGtidSet(f"{OTHER}:27,{UUID}:5"))
    assert not several.contains(MysqlGtidSet(f"{OTHER}:28"))
    tagged = MysqlGtidSet(f"{UUID}:1-5:Domain_1:1-3:11")
    assert tagged.contains(MysqlGtidSet(f"{UUID}:domain_1:2-3"))
    assert not tagged.contains(MysqlGtidSet(f"{UUID}:Domain_1:4"))
    assert not tagged.contains(MysqlGtidSet(f"{UUID}:Domain_2:1"))
    # The uuid is compared without case or dashes; the empty set is in every set.
    assert MysqlGtidSet(UUID.lower().replace("-", "") + ":1-99").contains(single)
    assert single.contains(MysqlGtidSet(""))
    assert not MysqlGtidSet("")


@pytest.mark.parametrize(
    "text",
    [f"{UUID}", f"{UUID}:0", f"{UUID}:5-3", "not-a-uuid:1", f"{UUID}:1-2:tag", f"{UUID}:a-b"],
)
def test_mysql_gtid_set_refuses_malformed_text(text: str) -> None:
    with pytest.raises(WatermarkFormatError):
        MysqlGtidSet(text)


@given(
    st.lists(st.tuples(st.integers(1, 60), st.integers(0, 5)), max_size=8),
    st.lists(st.integers(1, 70), max_size=10),
)
def test_mysql_gtid_set_contains_is_set_inclusion(
    ranges: list[tuple[int, int]], probes: list[int]
) -> None:
    members = {n for low, width in ranges for n in range(low, low + width + 1)}
    text = ",".join(f"{UUID}:{low}-{low + width}" for low, width in ranges)
    big = MysqlGtidSet(text)
    for probe in probes:
        assert big.contains(MysqlGtidSet(f"{UUID}:{probe}")) == (probe in members)


def test_mysql_stream_state_text_reads_as_a_gtid_set() -> None:
    # The reader's MySQL GTID state (what a checkpoint holds) in the set form.
    state = MysqlGtidState(f"{UUID}:1-5")
    state.advance(f"{UUID}:6")
    assert MysqlGtidSet(str(state)).contains(MysqlGtidSet(f"{UUID}:1-6"))


def test_mariadb_positions_compare_per_domain() -> None:
    assert mariadb_contains("0-1-10,1-2-5", "0-1-10")
    assert mariadb_contains("0-1-10,1-2-5", "0-3-9,1-2-5")
    assert not mariadb_contains("0-1-10", "0-1-10,1-2-1")
    assert not mariadb_contains("0-1-9", "0-1-10")
    assert mariadb_contains("0-1-1", "")


def _end(pos: int, gtid: str | None = None, file: str = "bin.000002") -> Checkpoint:
    return Checkpoint(file, pos, gtid, 0, 1)


def test_file_pos_watermark() -> None:
    mark = Watermark("mariadb", BinlogPosition("bin.000002", 500), None)
    assert not mark.is_after(_end(500)) and mark.is_after(_end(501))
    assert mark.reached_by(_end(500)) and not mark.reached_by(_end(499))
    assert mark.reached_by(_end(4, file="bin.000003"))
    assert not mark.is_after(_end(900, file="bin.000001"))


def test_gtid_watermark_on_mariadb() -> None:
    mark = Watermark("mariadb", BinlogPosition("bin.000002", 500), "0-1-10")
    # A transaction that ends before the position in bytes but after in GTIDs
    # cannot happen on one server; the GTID decides when both sides have one.
    assert mark.is_after(_end(400, "0-1-11")) and not mark.is_after(_end(600, "0-1-10"))
    # Reached by GTID even when the binlog grew by non-transaction events.
    assert mark.reached_by(_end(450, "0-1-10"))
    assert not mark.reached_by(_end(450, "0-1-9"))


def test_gtid_watermark_on_mysql() -> None:
    mark = Watermark("mysql", BinlogPosition("binlog.000002", 500), f"{UUID}:1-10")
    assert mark.is_after(_end(400, f"{UUID}:1-11"))
    assert not mark.is_after(_end(400, f"{UUID}:1-10"))
    assert mark.reached_by(_end(450, f"{UUID}:1-10,{OTHER}:1"))
    assert not mark.reached_by(_end(450, f"{UUID}:1-9"))
