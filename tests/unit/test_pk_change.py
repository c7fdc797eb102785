"""An UPDATE that changes the primary key: a delete of the old key on its shard, then an
insert of the new key on its shard (`primary_key_change=split`, the default), or
Maxwell's single update (`primary_key_change=update`)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc.filtering import Filter
from cdc.formatter import FormatterOptions, MaxwellFormatter
from cdc.options import CdcOptions
from cdc.partitioner import Partitioner
from cdc.publisher import Publisher
from cdc.replication.position import Checkpoint
from cdc.replication.transaction import RowChange, Transaction
from cdc.rows import RowImage, TxnContext, split_key_change
from cdc.schema import ColumnDef, ColumnType, TableDef
from shardctl.core.event_ids import order_key
from shardctl.core.hashing import shard_of

TABLE = TableDef(
    9,
    "shop",
    "orders",
    (
        ColumnDef("id", ColumnType.LONG),
        ColumnDef("region", ColumnType.VARCHAR, charset="utf8mb4", max_length=40),
        ColumnDef("note", ColumnType.VARCHAR, charset="utf8mb4", max_length=40),
    ),
    ("id", "region"),
)
CTX = TxnContext(
    server_id=11, thread_id=2, gtid="0-11-40", file="binlog.000004", pos=99, ts=1700000001, xid=8
)
SHARDS = 16


def _messages(option: str, *rows: RowImage) -> list[dict[str, Any]]:
    publisher = Publisher(
        MaxwellFormatter(FormatterOptions(primary_key_change=option)),  # type: ignore[arg-type]
        Partitioner(SHARDS),
        Filter(None),
    )
    txn = Transaction(
        ctx=CTX,
        end=Checkpoint("binlog.000004", 400, "0-11-40", 0, 11),
        changes=[RowChange(TABLE, row) for row in rows],
    )
    out = []
    for message in publisher.messages(txn):
        doc = json.loads(message.value)
        assert message.shard == shard_of(message.key, SHARDS)
        out.append({"shard": message.shard, "key": json.loads(message.key), **doc})
    return out


KEY_CHANGE = RowImage(
    "update", {"id": 2, "region": "us", "note": "moved"}, {"id": 1, "note": "first"}
)


def test_a_key_change_is_a_delete_of_the_old_key_then_an_insert_of_the_new() -> None:
    before = RowImage("insert", {"id": 9, "region": "eu", "note": "x"})
    after = RowImage("update", {"id": 9, "region": "eu", "note": "y"}, {"note": "x"})
    docs = _messages("split", before, KEY_CHANGE, after)
    assert [d["type"] for d in docs] == ["insert", "delete", "insert", "update"]
    delete, insert = docs[1], docs[2]
    # The delete carries the whole old row and the old key; it goes to the old key's shard.
    assert delete["data"] == {"id": 1, "region": "us", "note": "first"} and "old" not in delete
    assert delete["key"] == {"database": "shop", "table": "orders", "pk.id": 1, "pk.region": "us"}
    assert insert["data"] == KEY_CHANGE.data and "old" not in insert
    assert insert["key"]["pk.id"] == 2
    # Distinct ids, in the transaction's order; the last row commits.
    ids = [d["event_id"] for d in docs]
    assert ids == ["0-11-40#0", "0-11-40#1", "0-11-40#2", "0-11-40#3"]
    keys = [order_key(i, d["source"]) for i, d in zip(ids, docs, strict=True)]
    assert keys == sorted(keys, key=lambda k: k[1] if k else ())
    # Maxwell's commit information: xoffset on every row but the last, commit on the last.
    assert [d.get("xoffset") for d in docs] == [0, 1, 2, None]
    assert [d.get("commit") for d in docs] == [None, None, None, True]


def test_the_update_form_keeps_maxwells_single_update() -> None:
    docs = _messages("update", KEY_CHANGE)
    assert [d["type"] for d in docs] == ["update"]
    assert docs[0]["old"] == {"id": 1, "note": "first"}
    assert docs[0]["key"]["pk.id"] == 2 and docs[0]["event_id"] == "0-11-40#0"


def test_an_update_that_keeps_its_key_is_not_split() -> None:
    same = RowImage("update", {"id": 1, "region": "us", "note": "b"}, {"note": "a"})
    assert split_key_change(same, TABLE.primary_key) == (same,)
    assert [d["type"] for d in _messages("split", same)] == ["update"]
    # A table without a primary key has no key to change.
    assert split_key_change(KEY_CHANGE, ()) == (KEY_CHANGE,)


def test_nothing_splits_means_the_same_list() -> None:
    changes = [RowChange(TABLE, RowImage("insert", {"id": 1, "region": "us", "note": ""}))]
    assert MaxwellFormatter().split_key_changes(changes) is changes


values = st.one_of(st.integers(), st.text(max_size=5), st.none())


@given(
    st.dictionaries(st.sampled_from(["id", "region", "note", "x"]), values, min_size=1),
    st.dictionaries(st.sampled_from(["id", "region", "note", "x"]), values),
)
def test_split_keeps_both_images(data: dict[str, Any], old: dict[str, Any]) -> None:
    row = RowImage("update", data, old)
    parts = split_key_change(row, ("id", "region"))
    changed = any(k in old and old[k] != data.get(k) for k in ("id", "region"))
    if not changed:
        assert parts == (row,)
        return
    delete, insert = parts
    assert (delete.type, insert.type) == ("delete", "insert")
    assert insert.data == data and insert.old is None and delete.old is None
    assert list(delete.data) == list(data)  # same columns, same order
    assert delete.data == {k: old.get(k, v) for k, v in data.items()}


def test_the_option_is_checked() -> None:
    assert CdcOptions().primary_key_change == "split"
    assert CdcOptions(primary_key_change="update").formatter_options().primary_key_change == (
        "update"
    )
    with pytest.raises(ValueError, match="primary_key_change"):
        CdcOptions(primary_key_change="both")  # type: ignore[arg-type]
