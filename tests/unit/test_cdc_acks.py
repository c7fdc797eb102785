"""The checkpoint only advances over a fully acknowledged prefix of transactions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc.acks import AckTracker


def test_safe_point_waits_for_earlier_transactions() -> None:
    tracker: AckTracker[str] = AckTracker()
    first = tracker.open("end-1", 2)
    second = tracker.open("end-2", 1)
    tracker.ack(second)
    assert tracker.safe() is None  # end-2 is delivered, end-1 is not
    tracker.ack(first)
    assert tracker.safe() is None
    tracker.ack(first)
    assert tracker.safe() == "end-2"
    assert tracker.in_flight == 0


def test_empty_transaction_is_safe_once_predecessors_are() -> None:
    tracker: AckTracker[str] = AckTracker()
    first = tracker.open("a", 1)
    tracker.open("b", 0)
    assert tracker.safe() is None
    tracker.ack(first)
    assert tracker.safe() == "b"


def test_over_acknowledgement_is_an_error() -> None:
    tracker: AckTracker[str] = AckTracker()
    seq = tracker.open("a", 1)
    tracker.open("b", 1)
    tracker.ack(seq)
    with pytest.raises(ValueError, match="unknown or finished"):
        tracker.ack(seq)


@given(
    sizes=st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=30),
    data=st.data(),
)
def test_safe_is_the_longest_fully_acknowledged_prefix(
    sizes: list[int], data: st.DataObject
) -> None:
    tracker: AckTracker[int] = AckTracker()
    seqs = [tracker.open(i, n) for i, n in enumerate(sizes)]
    pending = [seq for seq, n in zip(seqs, sizes, strict=True) for _ in range(n)]
    order = data.draw(st.permutations(pending))
    remaining = list(sizes)
    for seq in order:
        tracker.ack(seq)
        remaining[seq] -= 1
        prefix = 0
        while prefix < len(remaining) and remaining[prefix] == 0:
            prefix += 1
        assert tracker.safe() == (prefix - 1 if prefix else None)
    assert tracker.safe() == len(sizes) - 1
    assert tracker.in_flight == 0
