"""Checkpoint documents and GTID state."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc.replication.position import (
    BinlogPosition,
    Checkpoint,
    CheckpointFormatError,
    MariadbGtidState,
)


def test_gtid_state_keeps_the_last_gtid_per_domain() -> None:
    state = MariadbGtidState("0-1-5,2-7-9")
    state.advance("0-1-6")
    state.advance("1-3-1")
    assert str(state) == "0-1-6,1-3-1,2-7-9"
    assert state.seq_of(2) == 9
    assert state.seq_of(5) is None
    with pytest.raises(ValueError, match="domain-server-seq"):
        state.advance("uuid:5")


def test_position_parse_and_order() -> None:
    assert BinlogPosition.parse("binlog.000012:1234") == BinlogPosition("binlog.000012", 1234)
    assert BinlogPosition("b.000999", 9).sort_key() < BinlogPosition("b.1000000", 4).sort_key()
    with pytest.raises(ValueError, match="file:pos"):
        BinlogPosition.parse("binlog.000012")


@given(
    file=st.from_regex(r"\Abinlog\.[0-9]{6}\Z"),
    pos=st.integers(min_value=4, max_value=2**32),
    gtid=st.none() | st.from_regex(r"\A[0-9]-[0-9]-[0-9]{1,5}\Z"),
)
def test_checkpoint_round_trips(file: str, pos: int, gtid: str | None) -> None:
    cp = Checkpoint(file, pos, gtid, ts=17, server_id=1, event_id="x#1")
    assert Checkpoint.from_json(cp.to_json()) == cp


def test_bad_checkpoint_document_is_an_error() -> None:
    with pytest.raises(CheckpointFormatError):
        Checkpoint.from_json(b'{"file": 3}')
    with pytest.raises(CheckpointFormatError):
        Checkpoint.from_json(b"not json")
