"""A topic the reader creates is written only once every partition has a leader.

Right after CreateTopics a broker can answer metadata with a partition that has no
leader yet (-1); the reader waits until each one is led, so its producer's first
look at the topic finds every partition led. A stand-in admin client answers the
way the broker does in that moment."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import pytest

from cdc.producers.kafka import TopicManager, TopicPartitionsMismatch


@dataclass
class PartitionMetadata:
    id: int
    leader: int


@dataclass
class TopicMetadata:
    partitions: dict[int, PartitionMetadata]
    error: Any = None


@dataclass
class ClusterMetadata:
    topics: dict[str, TopicMetadata] = field(default_factory=dict)


class AdminOfANewTopic:
    """No topic until it is created; then `leaderless_answers` metadata answers in
    which partition 2 has no leader, and every answer after that with all led."""

    def __init__(self, partitions: int, leaderless_answers: int) -> None:
        self.partitions = partitions
        self.created = False
        self.leaderless_answers = leaderless_answers

    def poll(self, timeout: float) -> int:
        return 0

    def create_topics(self, topics: list[Any], **_: Any) -> dict[str, Future[None]]:
        self.created = True
        done: Future[None] = Future()
        done.set_result(None)
        return {t.topic: done for t in topics}

    def list_topics(self, topic: str, timeout: float) -> ClusterMetadata:
        if not self.created:
            return ClusterMetadata()
        leaderless = self.leaderless_answers > 0
        self.leaderless_answers -= 1
        return ClusterMetadata(
            {
                topic: TopicMetadata(
                    {
                        p: PartitionMetadata(p, -1 if leaderless and p == 2 else 1)
                        for p in range(self.partitions)
                    }
                )
            }
        )


def test_a_created_topic_is_ready_only_once_every_partition_has_a_leader() -> None:
    admin = AdminOfANewTopic(partitions=3, leaderless_answers=4)
    TopicManager(admin, num_shards=3).ensure("shop")
    assert admin.created
    assert admin.leaderless_answers < 0, "ensure returned while partition 2 had no leader"


def test_an_existing_topic_with_another_partition_count_is_refused() -> None:
    admin = AdminOfANewTopic(partitions=2, leaderless_answers=0)
    admin.created = True
    with pytest.raises(TopicPartitionsMismatch, match="shop has 2 partitions but num_shards is 3"):
        TopicManager(admin, num_shards=3).ensure("shop")
