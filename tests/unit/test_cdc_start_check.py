"""The reader verifies that the server streams from the position it asked for."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from cdc.replication.errors import StartPositionMismatch
from cdc.replication.position import Checkpoint, MariadbGtidState
from cdc.replication.source import BinlogSource, SourceOptions


class NoDecoding:
    def on_table_map(self, event: object, where: str) -> None: ...

    def on_rotate(self, next_file: str) -> None: ...

    def decode_rows(self, event: object, where: str) -> list[object]:
        return []


START = Checkpoint("binlog.000003", 1234, "0-1-50", 0, 1)


def source() -> BinlogSource:
    return BinlogSource(SourceOptions("s", {}, 99), NoDecoding(), START)  # type: ignore[arg-type]


def test_file_pos_start_must_be_the_one_requested() -> None:
    source()._verify_start(
        SimpleNamespace(next_binlog="binlog.000003", position=1234), START, use_gtid=False
    )
    with pytest.raises(
        StartPositionMismatch,
        match=r"asked the server for binlog\.000003:1234 "
        r"but it streams from binlog\.000001:4",
    ):
        source()._verify_start(
            SimpleNamespace(next_binlog="binlog.000001", position=4), START, use_gtid=False
        )


def test_gtid_start_must_come_after_the_requested_state() -> None:
    state = MariadbGtidState("0-1-50,1-2-7")
    source()._verify_gtid("0-1-51", 0, 51, state)
    source()._verify_gtid("2-1-1", 2, 1, state)  # a domain the state does not know
    with pytest.raises(StartPositionMismatch, match="0-1-12"):
        source()._verify_gtid("0-1-12", 0, 12, state)
