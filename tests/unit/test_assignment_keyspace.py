"""Key names and stored documents of the coordination keyspace."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardctl.core.keyspace import Keyspace
from shardctl.core.records import Assignment, ClusterConfig, RecordError, WorkerRecord

KEYS = Keyspace("/shardctl/prod/")


def test_every_key_of_the_design_lives_under_the_cluster_root() -> None:
    assert KEYS.worker("w-1") == "/shardctl/prod/workers/w-1"
    assert KEYS.coordinator_leader == "/shardctl/prod/coordinator/leader"
    assert KEYS.assignment == "/shardctl/prod/assignment"
    assert KEYS.owner(7) == "/shardctl/prod/owners/000007"
    assert KEYS.offset(7) == "/shardctl/prod/offsets/000007"
    assert KEYS.cdc_leader("orders") == "/shardctl/prod/cdc/orders/leader"
    assert KEYS.cdc_checkpoint("orders") == "/shardctl/prod/cdc/orders/checkpoint"
    assert KEYS.config == "/shardctl/prod/config"


@given(st.integers(min_value=0, max_value=999_999))
def test_shard_keys_round_trip_and_sort_in_shard_order(shard: int) -> None:
    assert KEYS.shard_of_owner_key(KEYS.owner(shard)) == shard
    assert KEYS.shard_of_offset_key(KEYS.offset(shard)) == shard
    if shard:
        assert KEYS.owner(shard - 1) < KEYS.owner(shard)


@pytest.mark.parametrize("bad", ["", "a/b", "a b", "ü"])
def test_names_that_would_break_a_key_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="it becomes part of a key"):
        KEYS.worker(bad)


def test_a_root_without_trailing_slash_is_refused() -> None:
    with pytest.raises(ValueError, match="must end with '/'"):
        Keyspace("/shardctl/prod")


def test_documents_round_trip() -> None:
    record = WorkerRecord(host="h", pid=3, capacity=2, labels={"zone": "a"}, state="draining")
    assert WorkerRecord.decode("k", record.encode()) == record
    assignment = Assignment(generation=4, num_shards=3, owners=["a", None, "b"])
    assert Assignment.decode("k", assignment.encode()) == assignment
    assert assignment.shards_of("a") == {0}
    config = ClusterConfig(num_shards=8, topics=["t"])
    assert ClusterConfig.decode("k", config.encode()) == config


def test_a_malformed_document_names_its_key_and_field() -> None:
    with pytest.raises(RecordError, match=r"/x/config: not a valid ClusterConfig: num_shards"):
        ClusterConfig.decode("/x/config", b'{"num_shards": 0}')
    with pytest.raises(RecordError, match="/x/assignment"):
        Assignment.decode("/x/assignment", b"not json")
