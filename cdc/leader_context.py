"""What the bootstrap and snapshot work of one leader term shares, as one record."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cdc.filtering import Filter
from cdc.options import CdcOptions
from cdc.publisher import Publisher
from shardctl.core.etcd.client import EtcdClient
from shardctl.core.etcd.election import Leadership
from shardctl.core.etcd.loop_thread import LoopThread
from shardctl.core.keyspace import Keyspace


@dataclass(frozen=True, slots=True)
class LeaderContext:
    loop: LoopThread  # runs the etcd calls
    client: EtcdClient
    keyspace: Keyspace
    options: CdcOptions
    connect: dict[str, Any]  # PyMySQL's connect arguments for the source
    publisher: Publisher  # makes the messages of snapshot rows
    row_filter: Filter
    leadership: Leadership  # the term's; its writes are fenced by it
