"""Per-shard weights and affinity in the cluster config, and the flags that set them."""

from __future__ import annotations

import pytest

from shardctl.cli.coordination import apply_placement, parse_shard_range
from shardctl.core.records import ClusterConfig, RecordError


def test_weights_and_affinity_round_trip_with_shard_numbers_as_keys() -> None:
    config = ClusterConfig(num_shards=8, weights={3: 5}, affinity={0: {"disk": "ssd"}})
    decoded = ClusterConfig.decode("config", config.encode())
    assert decoded == config
    assert decoded.weights == {3: 5} and decoded.affinity == {0: {"disk": "ssd"}}


def test_a_config_without_placement_fields_decodes_with_none() -> None:
    decoded = ClusterConfig.decode("config", b'{"num_shards": 4, "topics": ["t"]}')
    assert decoded.weights == {} and decoded.affinity == {}


@pytest.mark.parametrize(
    "document",
    [b'{"num_shards": 4, "weights": {"1": 0}}', b'{"num_shards": 4, "weights": {"x": 2}}'],
)
def test_a_stored_weight_below_one_or_a_bad_shard_is_refused(document: bytes) -> None:
    with pytest.raises(RecordError, match="config: not a valid ClusterConfig: weights"):
        ClusterConfig.decode("config", document)


def test_flags_set_weights_and_affinity_over_ranges() -> None:
    current = ClusterConfig(num_shards=8, weights={7: 3})
    updated = apply_placement(current, ["0-2=4", "7=1"], ["4-5:disk=ssd", "5:zone=a"], reset=False)
    assert updated.weights == {0: 4, 1: 4, 2: 4}  # weight 1 is the default: dropped
    assert updated.affinity == {4: {"disk": "ssd"}, 5: {"disk": "ssd", "zone": "a"}}
    cleared = apply_placement(updated, [], ["5:"], reset=False)
    assert cleared.affinity == {4: {"disk": "ssd"}}
    assert apply_placement(updated, [], [], reset=True).weights == {}
    assert current.weights == {7: 3}  # the input is not modified


@pytest.mark.parametrize(
    ("weights", "affinity", "message"),
    [
        (["0-2"], [], "--weight '0-2': expected SHARDS=WEIGHT"),
        (["0-2=x"], [], "weight 'x' is not a whole number"),
        (["0-2=0"], [], "weight must be >= 1, got 0"),
        (["3-1=2"], [], "'3-1' is not a shard or a range like 0-15"),
        (["a=2"], [], "'a' is not a shard or a range like 0-15"),
        (["8=2"], [], "shard 8 does not exist \\(num_shards is 8\\)"),
        ([], ["0-2"], "--affinity '0-2': expected SHARDS:key=value"),
        ([], ["0-2:disk"], "--affinity '0-2:disk': expected SHARDS:key=value"),
        ([], ["0-2:=ssd"], "expected SHARDS:key=value"),
        ([], ["0-9:disk=ssd"], "shard 9 does not exist"),
    ],
)
def test_malformed_flags_are_refused_naming_the_flag(
    weights: list[str], affinity: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        apply_placement(ClusterConfig(num_shards=8), weights, affinity, reset=False)


def test_a_single_shard_is_a_range_of_one() -> None:
    assert parse_shard_range("--weight", "5", 8) == range(5, 6)
