"""An UPDATE that changes the primary key crosses shards. The whole pipeline on real
services (MariaDB -> reader -> Kafka -> two workers -> SQL sink): the worker that owns
the old key's shard is frozen (SIGSTOP, below its lease TTL) while the key changes.
With `primary_key_change=split` the old key's shard gets the delete after its earlier
changes, so the sink ends equal to the source."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from shardctl.core.config import Settings
from shardctl.core.etcd.client import EtcdClient
from shardctl.core.hashing import shard_of
from shardctl.core.keyspace import Keyspace
from tests.conftest import StackHandle
from tests.e2e.test_pipeline_sql_sink import NUM_SHARDS, Pipeline
from tests.integration.cdc_support import stored_checkpoint
from tests.polling import wait_for

pytestmark = pytest.mark.integration

WORKER_TTL = 15
SELECT = "SELECT id, name, amount, payload FROM items ORDER BY id"


def _owners(settings: Settings) -> dict[int, tuple[str, int]]:
    """shard -> (owner worker id, owner token) as stored in etcd."""

    async def go() -> dict[int, tuple[str, int]]:
        keys = Keyspace.of(settings)
        async with EtcdClient(settings.etcd) as client:
            found = {}
            for shard in range(NUM_SHARDS):
                kv = await client.get(keys.owner(shard))
                if kv is not None:
                    found[shard] = (kv.value.decode(), kv.create_revision)
            return found

    return asyncio.run(go())


def _key(database: str, pk: int) -> bytes:
    """The Kafka key of a row of `items`, as the reader writes it (the shard hash input)."""
    head = json.dumps({"database": database, "table": "items"}, separators=(",", ":"))
    return f'{head[:-1]},"pk.id":{pk}}}'.encode()


def _sink_caught_up(p: Pipeline) -> bool:
    """Every record of the topic is applied: the sink's stored positions are the ends."""
    consumer = Consumer({"bootstrap.servers": p.stack.kafka_bootstrap, "group.id": "pk-ends"})
    try:
        ends = {
            s: consumer.get_watermark_offsets(TopicPartition(p.topic, s), timeout=10)[1]
            for s in range(NUM_SHARDS)
        }
    finally:
        consumer.close()
    stored = dict(p.sql(p.sink_db, "SELECT shard, position FROM shardctl_offsets"))
    return all(stored.get(s, 0) >= end for s, end in ends.items())


@pytest.fixture
def pipeline(
    stack: StackHandle, settings: Settings, mysql_db: str, tmp_path: Path
) -> Iterator[Pipeline]:
    p = Pipeline(stack, settings, mysql_db, tmp_path)
    try:
        p.prepare()
        p.start_cdc()
        p.start_coordinator()
        for name in ("w1", "w2"):
            p.spawn(
                name,
                [
                    "-m",
                    "shardctl.cli.main",
                    "worker",
                    "run",
                    "--id",
                    name,
                    "--topic",
                    p.topic,
                    "--handler",
                    "sql",
                    "--ttl",
                    str(WORKER_TTL),
                    "--commit-interval",
                    "0.2",
                ],
            )
        yield p
    finally:
        p.close()


def test_a_key_change_while_the_old_keys_worker_is_frozen_ends_equal(
    pipeline: Pipeline, settings: Settings, mysql_db: str
) -> None:
    p = pipeline

    def settled() -> dict[int, tuple[str, int]] | None:
        owners = _owners(settings)
        workers = {owner for owner, _token in owners.values()}
        live = stored_checkpoint(settings, "src") is not None
        return owners if live and len(owners) == NUM_SHARDS and workers == {"w1", "w2"} else None

    owners = wait_for("both workers owning every shard, the reader live", settled, timeout=120)
    old_id = next(
        i
        for i in range(1, 10_000)
        if owners[shard_of(_key(mysql_db, i), NUM_SHARDS, "jump")][0] == "w1"
    )
    new_id = next(
        i
        for i in range(old_id + 1, 10_000)
        if owners[shard_of(_key(mysql_db, i), NUM_SHARDS, "jump")][0] == "w2"
    )
    old_shard = shard_of(_key(mysql_db, old_id), NUM_SHARDS, "jump")

    p.procs["w1"].send_signal(signal.SIGSTOP)
    try:
        p.sql(p.source_db, "INSERT INTO items VALUES (%s, 'a', 1.00, NULL)", (old_id,))
        p.sql(p.source_db, "UPDATE items SET id = %s, name = 'b' WHERE id = %s", (new_id, old_id))
        # The new key's worker applies its part while the old key's is frozen.
        wait_for(
            "the new key in the sink",
            lambda: p.sql(p.sink_db, "SELECT id FROM items WHERE id = %s", (new_id,)),
            timeout=60,
        )
    finally:
        p.procs["w1"].send_signal(signal.SIGCONT)

    wait_for("the sink applying every record", lambda: _sink_caught_up(p), timeout=120)
    assert _owners(settings)[old_shard] == owners[old_shard], (
        "the frozen worker kept its shard: it was paused below its lease TTL"
    )
    source: list[tuple[Any, ...]] = p.sql(p.source_db, SELECT)
    assert source == [(new_id, "b", 1, None)]
    assert p.sql(p.sink_db, SELECT) == source
