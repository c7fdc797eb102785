"""The read stage's hand-off: what crosses the pipe between the reader's processes
comes out as it went in (its spec, messages, and errors with their file:pos, table,
column), and the publisher is built from the spec alone."""

from __future__ import annotations

import json
import pickle
from typing import Any

import pytest

from cdc.decoding.errors import DecodeError
from cdc.filtering import Filter
from cdc.options import CdcOptions
from cdc.partitioner import Partitioner
from cdc.producers.base import Outgoing
from cdc.replication.errors import PurgedBinlogError, SessionSettingError, SourceError
from cdc.replication.position import Checkpoint
from cdc.replication.transaction import Statement, Transaction
from cdc.rows import TxnContext
from cdc.stage import StageSpec, _exception_state, _rebuilt, build_publisher
from shardctl.core.config import load_settings


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


def _spec(**options: Any) -> StageSpec:
    return StageSpec(
        load_settings(),
        CdcOptions(**options),
        Checkpoint("binlog.000003", 4567, None, 0, 1),
        num_shards=7,
        shard_hash="jump",
        server_charset="latin1",
    )


def test_the_spec_crosses_the_pipe_whole() -> None:
    spec = _spec(kafka_partition_hash="murmur3", output_commit_info="every_row")
    assert pickle.loads(pickle.dumps(spec)) == spec


def test_the_publisher_takes_every_partition_and_form_fact_from_the_spec() -> None:
    spec = _spec(
        kafka_partition_hash="murmur3",
        producer_partition_by="column",
        producer_partition_columns=["customer"],
        producer_partition_by_fallback="table",
        output_xoffset=False,
        output_event_id=False,
        output_ddl=True,
    )
    publisher = build_publisher(spec, Filter(None), None)
    assert publisher.partitioner == Partitioner(
        7, "column", ("customer",), "table", hash_function="murmur3", shard_hash="jump"
    )
    assert publisher.formatter.options == spec.options.formatter_options()
    # A CREATE DATABASE that names no charset gets the server's, from the spec.
    create = Transaction(
        ctx=TxnContext(server_id=1, thread_id=4, gtid=None, file="b.1", pos=100, ts=7, xid=None),
        end=Checkpoint("b.1", 300, None, 7, 1),
        changes=[],
        statement=Statement("shop", "CREATE DATABASE shop"),
    )
    [ddl] = publisher.messages(create)
    assert json.loads(ddl.value)["charset"] == "latin1"
