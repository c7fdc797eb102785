"""doctor's lag and dead-letter samples against the real etcd and Kafka: records
produced between two samples show up as a growing lag and as new dead letters."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from shardctl.cli.doctor import flow_findings, take_flow_sample
from shardctl.core.config import Settings
from shardctl.core.records import ClusterConfig
from tests.conftest import StackHandle
from tests.integration.workers_support import create_topic, delete_cluster, delete_topics, produce

pytestmark = pytest.mark.integration


@pytest.fixture
def topics(stack: StackHandle, settings: Settings, unique: str) -> Iterator[tuple[str, str]]:
    source, dead = f"{unique}-orders", f"{unique}-orders.dlq"
    create_topic(stack.kafka_bootstrap, source, 2)
    create_topic(stack.kafka_bootstrap, dead, 1)
    yield source, dead
    delete_topics(stack.kafka_bootstrap, [source, dead])
    asyncio.run(delete_cluster(settings))


def test_a_growing_lag_and_new_dead_letters_between_two_samples(
    stack: StackHandle, settings: Settings, topics: tuple[str, str]
) -> None:
    source, dead = topics
    config = ClusterConfig(num_shards=2, topics=[source])
    produce(stack.kafka_bootstrap, source, [(0, None, b"{}")] * 3)
    produce(stack.kafka_bootstrap, dead, [(0, None, b"{}")] * 2)

    first = take_flow_sample(settings, config)
    assert (first.lag, first.dead_letters) == ({source: 3}, {dead: 2})
    steady = flow_findings(first, take_flow_sample(settings, config), 1.0)
    assert [(f.check, f.level) for f in steady] == [("lag", "ok"), ("dead letters", "warning")]

    produce(stack.kafka_bootstrap, source, [(1, None, b"{}")] * 4)
    produce(stack.kafka_bootstrap, dead, [(0, None, b"{}")])
    second = take_flow_sample(settings, config)
    assert (second.lag, second.dead_letters) == ({source: 7}, {dead: 3})
    found = flow_findings(first, second, 1.0)
    assert [(f.check, f.level) for f in found] == [("lag", "warning"), ("dead letters", "problem")]
    assert found[1].what.startswith(f"{dead}: 1 dead letter(s) in 1 s (3 in all)")


def test_a_dead_letter_topic_that_does_not_exist_counts_none(
    stack: StackHandle, settings: Settings, unique: str
) -> None:
    source = f"{unique}-quiet"
    create_topic(stack.kafka_bootstrap, source, 1)
    try:
        sample = take_flow_sample(settings, ClusterConfig(num_shards=1, topics=[source]))
        assert sample.dead_letters == {f"{source}.dlq": 0}
        assert sample.lag == {source: 0}
    finally:
        delete_topics(stack.kafka_bootstrap, [source])
