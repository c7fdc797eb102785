"""The read stage's hand-off: what crosses the pipe between the reader's processes
comes out as it went in (messages, and errors with their file:pos, table, column)."""

from __future__ import annotations

import pickle

import pytest

from cdc.decoding.errors import DecodeError
from cdc.producers.base import Outgoing
from cdc.replication.errors import PurgedBinlogError, SessionSettingError, SourceError
from cdc.stage import _exception_state, _rebuilt


def _across_the_pipe(exc: BaseException) -> BaseException:
    # The pipe pickles what the child sends; the reader rebuilds the exception.
    return _rebuilt(*pickle.loads(pickle.dumps(_exception_state(exc))))


@pytest.mark.parametrize(
    "exc",
    [
        DecodeError(
            "ENUM index 9 past 3 members", position="b.000003:4567", table="s.t", column="e"
        ),
        PurgedBinlogError("main", "b.000001:4", "gone", "shardctl cdc checkpoint reset ..."),
        SessionSettingError(
            "main", "binlog_row_image", "FULL", "b.000002:99", "0-1-5", "s.t", "MINIMAL images"
        ),
        SourceError("plain"),
    ],
    ids=["decode", "purged", "session", "source"],
)
def test_errors_keep_type_message_and_fields(exc: BaseException) -> None:
    got = _across_the_pipe(exc)
    assert type(got) is type(exc)
    assert str(got) == str(exc)
    assert vars(got) == vars(exc)


def test_decode_error_still_names_position_table_and_column() -> None:
    got = _across_the_pipe(DecodeError("bad", position="b.000003:4567", table="s.t", column="c"))
    assert isinstance(got, DecodeError)
    assert (got.position, got.table, got.column) == ("b.000003:4567", "s.t", "c")
    assert "binlog b.000003:4567, table s.t, column 'c'" in str(got)


def test_outgoing_pickles_as_its_fields() -> None:
    messages = [
        Outgoing(b'{"k":1}', b'{"v":1}', 3, "0-1-2#0", "db", "t"),
        Outgoing(b"{}", b'{"type":"table-create"}', 0, "0-1-3#0", "db", "", topic="ddl"),
    ]
    assert pickle.loads(pickle.dumps(messages)) == messages
