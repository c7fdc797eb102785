"""The checkpoint key in etcd: fenced by the reader's leadership token."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cdc.checkpoint import CheckpointError, CheckpointStore
from cdc.replication.position import Checkpoint
from shardctl.core.etcd.client import EtcdClient
from shardctl.core.etcd.election import Election, Leadership, NotLeader
from shardctl.core.etcd.session import Session, SessionLost
from shardctl.core.keyspace import Keyspace

pytestmark = pytest.mark.integration


def test_deposed_reader_cannot_move_the_checkpoint(settings: Any) -> None:
    keyspace = Keyspace.of(settings)

    async def scenario() -> None:
        async with EtcdClient(settings.etcd) as client:
            store = CheckpointStore(client, keyspace, "src")
            election = Election(client, keyspace.cdc_leader("src"))
            first = await Session.open(settings.etcd, ttl=3, name="a")
            lead_a = await election.campaign(first, "a")
            await store.save(lead_a, Checkpoint("binlog.000001", 100, None, 1, 1))
            with pytest.raises(CheckpointError, match="a leads source 'src'"):
                await store.reset(None)

            # a's lease ends (as if it died or was paused past its TTL); b takes over.
            await first.close(revoke=True)
            second = await Session.open(settings.etcd, ttl=3, name="b")
            lead_b = await election.campaign(second, "b")
            await store.save(lead_b, Checkpoint("binlog.000001", 200, None, 2, 1))
            # a notices locally that its session is over ...
            with pytest.raises(SessionLost):
                await store.save(lead_a, Checkpoint("binlog.000001", 150, None, 3, 1))
            # ... and even a writer that has not noticed (its session still looks
            # alive) is refused by etcd, because a's token is void.
            zombie = Leadership(client, second, keyspace.cdc_leader("src"), "a", lead_a.token)
            with pytest.raises(NotLeader):
                await store.save(zombie, Checkpoint("binlog.000001", 150, None, 3, 1))
            found = await store.load()
            assert found is not None and found.pos == 200

            await lead_b.resign()
            await store.reset(Checkpoint("binlog.000002", 4, None, 0, 1))
            found = await store.load()
            assert found is not None and (found.file, found.pos) == ("binlog.000002", 4)
            await second.close()

    asyncio.run(scenario())
