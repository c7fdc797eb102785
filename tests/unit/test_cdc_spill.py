"""A transaction past its in-memory bound: the rest of its rows go to a temporary
file and come back complete, in order, with their table definitions."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from cdc.replication.transaction import RowChange, SpilledRows, TransactionAssembler
from cdc.rows import RowImage

TABLES = (SimpleNamespace(name="a"), SimpleNamespace(name="b"))


class Rows:
    """Decoding that turns each rows event's `ids` into row images of table `table`."""

    def on_table_map(self, event: Any, where: str) -> None:
        return None

    def on_rotate(self, next_file: str) -> None:
        return None

    def decode_rows(self, event: Any, where: str) -> Sequence[RowChange]:
        return [
            RowChange(
                TABLES[i % 2],
                RowImage(
                    "update",
                    {"id": i, "d": Decimal("1.50"), "t": datetime.datetime(2026, 1, 1), "b": b"x"},
                    {"id": i - 1},
                ),
            )
            for i in event.ids
        ]


def ev(end: int, size: int = 10, **fields: Any) -> Any:
    packet = SimpleNamespace(log_pos=end, event_size=size, server_id=1)
    return SimpleNamespace(packet=packet, timestamp=100, **fields)


def _assemble(batches: list[list[int]], memory_rows: int, memory_bytes: int) -> Any:
    asm = TransactionAssembler(
        Rows(), None, "binlog.000001", memory_rows=memory_rows, memory_bytes=memory_bytes
    )
    asm.query(ev(120, query="BEGIN", schema=b"db", slave_proxy_id=9))
    end = 120
    for ids in batches:
        end += 40
        asm.rows(ev(end, size=40, ids=ids))
    return asm.xid(ev(end + 30, xid=7))


def test_rows_past_the_bound_are_spilled_and_read_back_in_order() -> None:
    txn = _assemble([[1, 2, 3], [4, 5], [6, 7, 8, 9]], memory_rows=4, memory_bytes=10**9)
    assert [c.row.data["id"] for c in txn.changes] == [1, 2, 3, 4]
    assert txn.spilled is not None and txn.spilled.count == 5
    rows = list(txn.rows())
    assert [c.row.data["id"] for c in rows] == list(range(1, 10))
    assert [c.table for c in rows] == [TABLES[i % 2] for i in range(1, 10)]
    assert rows[-1].row == RowImage(
        "update",
        {"id": 9, "d": Decimal("1.50"), "t": datetime.datetime(2026, 1, 1), "b": b"x"},
        {"id": 8},
    )
    assert txn.row_count == 9
    # Read twice (a publish retried from the transaction's start reads it again).
    assert [c.row.data["id"] for c in txn.rows()] == list(range(1, 10))
    txn.close()


def test_the_bytes_bound_spills_later_rows() -> None:
    txn = _assemble([[1, 2], [3], [4, 5]], memory_rows=1000, memory_bytes=70)
    # 40 bytes after the first event, 80 after the second: the rest is spilled.
    assert [c.row.data["id"] for c in txn.changes] == [1, 2, 3]
    assert [c.row.data["id"] for c in txn.rows()] == [1, 2, 3, 4, 5]


def test_a_transaction_within_the_bound_is_not_spilled() -> None:
    txn = _assemble([[1, 2], [3]], memory_rows=3, memory_bytes=10**9)
    assert txn.spilled is None
    assert [c.row.data["id"] for c in txn.rows()] == [1, 2, 3]


@given(
    st.lists(st.lists(st.integers(0, 10**6), max_size=5), max_size=12),
    st.integers(0, 20),
)
def test_spilling_never_loses_or_reorders_a_row(batches: list[list[int]], bound: int) -> None:
    txn = _assemble(batches, memory_rows=bound, memory_bytes=10**9)
    flat = [i for ids in batches for i in ids]
    assert [c.row.data["id"] for c in txn.rows()] == flat
    if len(flat) > bound:
        assert txn.spilled is not None and len(txn.changes) == bound
    else:
        assert txn.spilled is None and len(txn.changes) == len(flat)
    assert txn.row_count == len(flat)
    txn.close()


def test_spilled_rows_keep_one_copy_of_each_table() -> None:
    spilled = SpilledRows()
    for i in range(6):
        spilled.append(RowChange(TABLES[i % 2], RowImage("insert", {"id": i})))
    assert [(c.table.name, c.row.data["id"]) for c in spilled] == [
        ("a", 0),
        ("b", 1),
        ("a", 2),
        ("b", 3),
        ("a", 4),
        ("b", 5),
    ]
    spilled.close()
