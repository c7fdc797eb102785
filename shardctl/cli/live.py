"""The live cluster view of `shardctl status --watch` and `shardctl demo`.

Each refresh takes one `Snapshot`: the `status` document, the committed position of
every shard (offsets/<shard> in etcd) and, for a Kafka topic, each partition's high
watermark. Lag per shard is high watermark minus committed position. Events per
second and rebalances are differences between two snapshots, so the view needs no
metrics endpoint of the workers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from shardctl.config import Settings
from shardctl.etcd import EtcdClient
from shardctl.keyspace import Keyspace
from shardctl.records import OffsetRecord


@dataclass
class Snapshot:
    taken_at: float
    status: dict[str, Any]
    positions: dict[int, int] = field(default_factory=dict)  # shard -> committed offset
    high_watermarks: dict[int, int] | None = None  # shard -> Kafka high watermark

    def lag(self, shard: int) -> int | None:
        if self.high_watermarks is None or shard not in self.high_watermarks:
            return None
        return max(0, self.high_watermarks[shard] - self.positions.get(shard, 0))

    @property
    def total_lag(self) -> int | None:
        if self.high_watermarks is None:
            return None
        return sum(self.lag(s) or 0 for s in self.high_watermarks)

    @property
    def committed(self) -> int:
        return sum(self.positions.values())


async def committed_positions(settings: Settings, topic: str | None) -> dict[int, int]:
    """The committed Kafka offset of every shard that has one: of `topic`, or the sum
    over every topic when no topic is named."""
    keys = Keyspace.of(settings)
    async with EtcdClient(settings.etcd) as client:
        listing = await client.get_prefix(keys.offsets_prefix)
    positions: dict[int, int] = {}
    for kv in listing.items:
        record = OffsetRecord.decode(kv.key, kv.value)
        if topic is None:
            positions[keys.shard_of_offset_key(kv.key)] = sum(record.positions.values())
        elif topic in record.positions:
            positions[keys.shard_of_offset_key(kv.key)] = record.positions[topic]
    return positions


def high_watermarks(settings: Settings, topic: str, num_shards: int) -> dict[int, int]:
    """Partition -> high watermark of `topic` (partition = shard)."""
    from confluent_kafka import Consumer, TopicPartition

    conf: dict[str, str | int | float | bool] = dict(settings.kafka.client_config())
    conf.update({"group.id": "shardctl-status", "enable.auto.commit": False})
    consumer = Consumer(conf)
    try:
        marks: dict[int, int] = {}
        for shard in range(num_shards):
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, shard), timeout=10)
            marks[shard] = int(high)
        return marks
    finally:
        consumer.close()


@dataclass
class Rates:
    """What two snapshots tell: events per second and rebalances since the first."""

    events_per_s: float | None
    rebalances: int


class LiveView:
    """Keeps the first and previous snapshots and renders the current one."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.first: Snapshot | None = None
        self.previous: Snapshot | None = None
        self.events: list[str] = []  # operator-visible happenings (the demo's steps)
        self.last_rates = Rates(events_per_s=None, rebalances=0)

    def rates(self, now: Snapshot) -> Rates:
        prev, first = self.previous, self.first
        eps = None
        if prev is not None and now.taken_at > prev.taken_at:
            eps = max(0, now.committed - prev.committed) / (now.taken_at - prev.taken_at)
        gen_now = now.status.get("generation") or 0
        gen_first = (first.status.get("generation") or 0) if first is not None else gen_now
        return Rates(events_per_s=eps, rebalances=max(0, gen_now - gen_first))

    def update(self, snapshot: Snapshot) -> Group:
        self.last_rates = self.rates(snapshot)
        rendered = self.render(snapshot, self.last_rates)
        if self.first is None:
            self.first = snapshot
        self.previous = snapshot
        return rendered

    def render(self, snap: Snapshot, rates: Rates) -> Group:
        data = snap.status
        leader = data["leader"]
        head = Table.grid(padding=(0, 2))
        head.add_row("cluster", str(data["cluster"]), "leader", leader["id"] if leader else "none")
        head.add_row(
            "generation",
            str(data["generation"]),
            "rebalances seen",
            str(rates.rebalances),
        )
        eps = "-" if rates.events_per_s is None else f"{rates.events_per_s:,.0f}"
        lag = snap.total_lag
        head.add_row("events/s", eps, "total lag", "-" if lag is None else f"{lag:,}")
        head.add_row(
            "unassigned",
            shard_ranges(data["unassigned"]),
            "in handoff",
            shard_ranges(data["in_handoff"]),
        )

        workers = Table(title="workers", expand=False)
        for column in ("worker", "state", "assigned", "owned", "shards"):
            workers.add_column(column)
        for row in data["workers"]:
            style = "yellow" if row["state"] == "draining" else ""
            workers.add_row(
                row["id"],
                row["state"],
                str(len(row["assigned"])),
                str(len(row["owned"])),
                shard_ranges(row["owned"]),
                style=style,
            )

        shards = Table(title="shards", expand=False)
        for column in ("shard", "owner", "committed", "lag"):
            shards.add_column(column, justify="right" if column != "owner" else "left")
        owner_of = {s: row["id"] for row in data["workers"] for s in row["owned"]}
        for shard in range(data["num_shards"] or 0):
            lag_of = snap.lag(shard)
            shards.add_row(
                str(shard),
                owner_of.get(shard, "-"),
                str(snap.positions.get(shard, "-")),
                "-" if lag_of is None else f"{lag_of:,}",
                style="red" if shard not in owner_of else "",
            )
        parts: list[Any] = [Panel(head, title=self.title), workers, shards]
        if self.events:
            parts.append(Text("\n".join(self.events[-8:])))
        return Group(*parts)


def shard_ranges(shards: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8' ('-' when empty)."""
    if not shards:
        return "-"
    parts: list[str] = []
    start = prev = shards[0]
    for s in [*shards[1:], None]:
        if s is not None and s == prev + 1:
            prev = s
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if s is not None:
            start = prev = s
    return ",".join(parts)


async def take_snapshot(settings: Settings, topic: str | None) -> Snapshot:
    """One consistent-enough picture of the cluster (etcd reads, then Kafka watermarks)."""
    import asyncio

    from shardctl.cli.coordination import collect_status

    status = await collect_status(settings)
    positions = await committed_positions(settings, topic)
    marks = None
    if topic is not None and status.get("num_shards"):
        marks = await asyncio.to_thread(high_watermarks, settings, topic, status["num_shards"])
    return Snapshot(time.monotonic(), status, positions, marks)
