"""The CLI's way to read the cluster: the core read model (`shardctl.core.status`) with
the coordinator's placement rule for `unplaceable` plugged in."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shardctl.core.config import Settings
    from shardctl.core.etcd import EtcdClient, KeyValue
    from shardctl.core.keyspace import Keyspace
    from shardctl.core.records import ClusterConfig
    from shardctl.core.status import ClusterStatus


def unplaceable_by_coordinator(
    keys: Keyspace, workers: Mapping[str, KeyValue], config: ClusterConfig
) -> list[int]:
    """Shards whose affinity matches no eligible worker, by the coordinator's own rule."""
    from coordinator.placement import unplaceable_shards
    from coordinator.writer import members_from

    return unplaceable_shards(members_from(keys, workers), config.num_shards, config.affinity)


async def read_status(settings: Settings, client: EtcdClient | None = None) -> ClusterStatus:
    """One `ClusterStatus` of the settings' cluster, over `client` or a new connection."""
    from shardctl.core.etcd import EtcdClient
    from shardctl.core.keyspace import Keyspace
    from shardctl.core.status import read_cluster_status

    keys = Keyspace.of(settings)
    if client is not None:
        return await read_cluster_status(client, keys, settings.cluster, unplaceable_by_coordinator)
    async with EtcdClient(settings.etcd) as own:
        return await read_cluster_status(own, keys, settings.cluster, unplaceable_by_coordinator)
