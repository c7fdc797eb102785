"""Offsets carry the topic's incarnation (its Kafka topic id): stored positions of a
deleted and re-created topic are refused, with the recovery command."""

from __future__ import annotations

import pytest

from shardctl.core.records import OffsetRecord
from workers.offsets import TopicRecreated, check_topic_ids


def test_a_record_without_topic_ids_still_decodes_and_passes() -> None:
    old = OffsetRecord.decode("offsets/000001", b'{"positions": {"t": 4}, "token": 3}')
    assert old.topic_ids == {}
    check_topic_ids(1, old, {"t": "new-id"}, ["t"])


def test_positions_of_another_incarnation_are_refused_with_the_recovery_command() -> None:
    stored = OffsetRecord(positions={"t": 20, "u": 3}, token=3, topic_ids={"t": "A", "u": "U"})
    check_topic_ids(2, stored, {"t": "A", "u": "U"}, ["t", "u"])
    check_topic_ids(2, stored, {"u": "U"}, ["t", "u"])  # t not created yet
    check_topic_ids(2, stored, {"t": "B"}, ["u"])  # t not consumed here
    with pytest.raises(TopicRecreated) as caught:
        check_topic_ids(2, stored, {"t": "B", "u": "U"}, ["t", "u"])
    message = str(caught.value)
    for part in ("shard 2", "t@20", "topic id A", "has id B"):
        assert part in message, message
    assert "shardctl offsets reset --shard 2 --topic t --to-earliest --execute" in message


def test_a_position_round_trips_its_topic_ids_through_the_record() -> None:
    record = OffsetRecord(positions={"t": 5}, event_id="e", token=9, topic_ids={"t": "A"})
    again = OffsetRecord.decode("k", record.encode())
    assert again == record and dict(again.topic_ids) == {"t": "A"}
