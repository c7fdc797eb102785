"""MariaDB -> 2 CDC readers -> Kafka -> 2 workers -> Kafka sink, with the CDC leader
killed (kill -9) under load.

The new leader resumes from the stored checkpoint and publishes the tail again: the
same changes, with the same event ids, at new offsets of the source topic. The Kafka
sink skips them, so its output topic, read with read_committed, holds each source
change exactly once by event id.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from shardctl.core.config import Settings
from tests.conftest import StackHandle
from tests.e2e.test_pipeline_sql_sink import NUM_SHARDS, TABLE, TTL, Pipeline, random_writes
from tests.integration.cdc_support import Record, TopicReader, leader_of, stored_checkpoint
from tests.integration.workers_support import create_topic, delete_topics
from tests.polling import wait_for

pytestmark = pytest.mark.e2e

READERS = ("r1", "r2")


class KafkaSinkPipeline(Pipeline):
    handler = "kafka"

    def __init__(self, stack: StackHandle, settings: Settings, source_db: str, workdir: Path):
        super().__init__(stack, settings, source_db, workdir)
        self.output = f"{self.topic}-out"
        self.group = f"shardctl.{settings.cluster}.sink.{self.output}"
        # A checkpoint every 4 s: a kill leaves seconds of changes to publish again.
        self.env["SHARDCTL_CDC_CHECKPOINT_INTERVAL_S"] = "4"

    def prepare(self) -> None:
        self.sql(self.source_db, TABLE)
        create_topic(self.stack.kafka_bootstrap, self.topic, NUM_SHARDS)
        create_topic(self.stack.kafka_bootstrap, self.output, NUM_SHARDS)
        done = self.shardctl("shards", "set", str(NUM_SHARDS))
        assert done.returncode == 0, done.stderr

    def start_reader(self, name: str) -> None:
        args = ["cdc", "run", "--reader-id", name, "--num-shards", str(NUM_SHARDS)]
        self.spawn(name, ["-m", "shardctl.cli.main", *args])

    def start_worker(self, name: str) -> None:
        args = ["worker", "run", "--id", name, "--topic", self.topic, "--handler", "kafka"]
        args += ["--handler-option", f"topic={self.output}", "--ttl", str(TTL)]
        self.spawn(name, ["-m", "shardctl.cli.main", *args])

    def close(self) -> None:
        super().close()
        delete_topics(self.stack.kafka_bootstrap, [self.output, f"{self.group}.applied"])

    def consumed_everything(self) -> bool:
        """The sink's committed source offsets are at the end of every partition: every
        record of the source topic, the tail published again among them, was handled."""
        consumer = Consumer(
            {
                "bootstrap.servers": self.stack.kafka_bootstrap,
                "group.id": self.group,
                "enable.auto.commit": False,
            }
        )
        try:
            parts = [TopicPartition(self.topic, p) for p in range(NUM_SHARDS)]
            committed = consumer.committed(parts, timeout=10)
            ends = [consumer.get_watermark_offsets(p, timeout=10)[1] for p in parts]
        finally:
            consumer.close()
        return all(c.offset == end for c, end in zip(committed, ends, strict=True))


@pytest.fixture
def pipeline(
    stack: StackHandle, settings: Settings, mysql_db: str, tmp_path: Path
) -> Iterator[KafkaSinkPipeline]:
    p = KafkaSinkPipeline(stack, settings, mysql_db, tmp_path)
    try:
        p.prepare()
        p.start_coordinator()
        for reader in READERS:
            p.start_reader(reader)
        yield p
    finally:
        p.close()


def _event_ids(records: list[Record]) -> Counter[str]:
    return Counter(str(r.value["event_id"]) for r in records)


def read_to_end(bootstrap: str, topic: str) -> Counter[str]:
    """The event ids of every committed record of `topic`, read to the end of each
    partition (read_committed; no transaction is open once the sink is idle)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"read-{topic}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    ids: Counter[str] = Counter()
    ended: set[int] = set()
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(NUM_SHARDS)])

        def at_the_end() -> bool:
            for message in consumer.consume(500, 0.5):
                err = message.error()
                if err is None:
                    ids[str(json.loads(message.value())["event_id"])] += 1
                elif err.code() == KafkaError._PARTITION_EOF:
                    ended.add(message.partition())
                else:
                    raise AssertionError(f"reading {topic}: {err}")
            return len(ended) == NUM_SHARDS

        wait_for(f"the end of every partition of {topic}", at_the_end, 60)
    finally:
        consumer.close()
    return ids


def test_the_tail_a_new_cdc_leader_publishes_again_is_forwarded_once(
    pipeline: KafkaSinkPipeline,
) -> None:
    p = pipeline
    for name in ("w1", "w2"):
        p.start_worker(name)
    wait_for("a CDC leader", lambda: leader_of(p.settings, "src"), 60)
    wait_for("the first checkpoint", lambda: stored_checkpoint(p.settings, "src"), 60)
    killed: list[str] = []

    def kill_the_leader(txn: int) -> None:
        if txn == 120:
            leader = leader_of(p.settings, "src")
            assert leader in READERS, f"leader {leader!r}"
            p.procs[leader].kill()  # kill -9
            p.procs[leader].wait(10)
            killed.append(leader)

    changes = random_writes(p, 900, seed=3, between=kill_the_leader)
    assert killed, "the load ended before the leader was killed"
    survivor = next(r for r in READERS if r not in killed)
    wait_for("the other reader to lead", lambda: leader_of(p.settings, "src") == survivor, 60)

    source = TopicReader(p.stack.kafka_bootstrap, p.topic, NUM_SHARDS)
    try:
        published = _event_ids(source.read_until(lambda rs: len(_event_ids(rs)) >= changes))
    finally:
        source.close()
    assert len(published) == changes, f"{len(published)} event ids for {changes} changes"
    again = {eid for eid, n in published.items() if n > 1}
    assert again, "the new leader published nothing again: the test saw no replay"

    wait_for("the sink to handle every source record", p.consumed_everything, 120)
    forwarded = read_to_end(p.stack.kafka_bootstrap, p.output)
    twice = {eid: n for eid, n in forwarded.items() if n > 1}
    assert twice == {}, f"forwarded more than once: {sorted(twice)[:20]}"
    assert forwarded.keys() == published.keys()
    print(f"{changes} changes; {len(again)} published again by the new leader, forwarded once")
