"""offsets/<shard> documents: one position per topic, decoded strictly."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardctl.core.records import OffsetRecord, RecordError

topics = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-/", min_size=1, max_size=40)


@given(
    positions=st.dictionaries(topics, st.integers(min_value=0, max_value=2**62), max_size=8),
    event_id=st.none() | st.text(max_size=30),
    token=st.integers(min_value=1, max_value=2**62),
)
def test_an_offset_record_round_trips_every_topic_position(
    positions: dict[str, int], event_id: str | None, token: int
) -> None:
    record = OffsetRecord(positions=positions, event_id=event_id, token=token)
    decoded = OffsetRecord.decode("/c/offsets/3", record.encode())
    assert decoded == record
    assert decoded.same_place(record.model_copy(update={"token": token + 1}))


def test_a_single_position_without_its_topic_is_refused_not_read_as_empty() -> None:
    raw = json.dumps({"position": 4, "event_id": "e", "token": 7}).encode()
    with pytest.raises(RecordError, match=r"/c/offsets/3: .*single `position` without its topic"):
        OffsetRecord.decode("/c/offsets/3", raw)


@pytest.mark.parametrize(
    "doc",
    [
        {"positions": {"t": -1}, "token": 1},
        {"positions": {"t": "x"}, "token": 1},
        {"positions": [4], "token": 1},
        {"positions": {"t": 4}},
    ],
)
def test_malformed_positions_name_the_key(doc: dict[str, object]) -> None:
    with pytest.raises(RecordError, match="/c/offsets/9: not a valid OffsetRecord"):
        OffsetRecord.decode("/c/offsets/9", json.dumps(doc).encode())


def test_an_offset_record_describes_each_topic_for_error_messages() -> None:
    at = OffsetRecord(positions={"shop.users": 3, "shop.orders": 10}, event_id="gtid:1", token=2)
    assert at.describe() == "shop.orders@10, shop.users@3 (event gtid:1)"
    assert OffsetRecord(token=2).describe() == "no position"


@given(
    positions=st.dictionaries(topics, st.integers(min_value=0, max_value=9), max_size=3),
    other=st.dictionaries(topics, st.integers(min_value=0, max_value=9), max_size=3),
    token=st.integers(min_value=1, max_value=5),
    other_token=st.integers(min_value=1, max_value=5),
)
def test_same_place_ignores_only_the_token(
    positions: dict[str, int], other: dict[str, int], token: int, other_token: int
) -> None:
    a = OffsetRecord(positions=positions, token=token)
    b = OffsetRecord(positions=other, token=other_token)
    assert a.same_place(b) == (positions == other)
    assert not a.same_place(None)
