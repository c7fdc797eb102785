"""The live cluster view of `shardctl status --watch` and `shardctl demo`.

Each refresh takes one `Snapshot`: the cluster's `ClusterStatus`, the committed
offset of every shard (offsets/<shard> in etcd) and, for a Kafka topic, each
partition's end offset. Lag per shard is end offset minus committed offset. Events
per second and rebalances are differences between two snapshots, so the view needs
no metrics endpoint of the workers.

One etcd connection and one Kafka admin client serve every refresh. When the shards
do not fit the screen (a cluster of 1000 shards), the shard table becomes a summary:
the unowned shards, then the shards with the most lag, as many as fit.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from shardctl.core.status import ClusterStatus, shard_ranges

if TYPE_CHECKING:
    from collections.abc import Sequence

    from rich.console import Console

    from shardctl.cli.kafka_admin import EndOffsets
    from shardctl.core.config import Settings
    from shardctl.core.etcd import EtcdClient

EVENT_LINES = 8  # the demo's last steps shown under the tables
MIN_SHARD_ROWS = 5


@dataclass
class Snapshot:
    taken_at: float
    status: ClusterStatus
    positions: dict[int, int] = field(default_factory=dict)  # shard -> committed offset
    end_offsets: dict[int, int] | None = None  # shard -> Kafka end offset (high watermark)
    kafka_error: str | None = None  # why there are no end offsets this time

    def lag(self, shard: int) -> int | None:
        if self.end_offsets is None or shard not in self.end_offsets:
            return None
        return max(0, self.end_offsets[shard] - self.positions.get(shard, 0))

    @property
    def total_lag(self) -> int | None:
        if self.end_offsets is None:
            return None
        return sum(self.lag(s) or 0 for s in self.end_offsets)

    @property
    def committed(self) -> int:
        return sum(self.positions.values())


class SnapshotSource:
    """Takes snapshots of one cluster and topic over one etcd connection and one Kafka
    admin client, both kept open until `close`."""

    def __init__(self, settings: Settings, topic: str | None) -> None:
        self.settings = settings
        self.topic = topic
        self._client: EtcdClient | None = None
        self._kafka: EndOffsets | None = None
        self.kafka_clients_opened = 0  # over the source's life; a live view wants 1

    async def take(self) -> Snapshot:
        from shardctl.cli.kafka_admin import KafkaUnavailable, UnknownTopic
        from shardctl.cli.read_model import read_status
        from shardctl.core.etcd import EtcdClient
        from shardctl.core.keyspace import Keyspace
        from shardctl.core.status import committed_offsets

        if self._client is None:
            self._client = await EtcdClient(self.settings.etcd).connect()
        status = await read_status(self.settings, self._client)
        positions = await committed_offsets(self._client, Keyspace.of(self.settings), self.topic)
        marks = None
        error = None
        if self.topic is not None and status.shard_count:
            try:
                kafka = self._end_offsets()
                partitions = await asyncio.to_thread(kafka.partitions, self.topic)
                marks = await asyncio.to_thread(
                    kafka.end_offsets, self.topic, min(partitions, status.shard_count)
                )
            except (KafkaUnavailable, UnknownTopic) as exc:
                error = str(exc)
        return Snapshot(time.monotonic(), status, positions, marks, error)

    def _end_offsets(self) -> EndOffsets:
        from shardctl.cli.kafka_admin import EndOffsets

        if self._kafka is None:
            self._kafka = EndOffsets(self.settings)
            self.kafka_clients_opened += 1
        return self._kafka

    def check_topic(self) -> None:
        """UnknownTopic when the topic does not exist (KafkaUnavailable passes: the
        view shows it and asks again at the next refresh)."""
        from shardctl.cli.kafka_admin import KafkaUnavailable

        if self.topic is None:
            return
        # Not fatal: every snapshot asks again and the view shows the error.
        with contextlib.suppress(KafkaUnavailable):
            self._end_offsets().partitions(self.topic)

    async def close(self) -> None:
        client, self._client = self._client, None
        self._kafka = None
        if client is not None:
            await client.close()


@dataclass
class Rates:
    """What two snapshots tell: events per second and rebalances since the first."""

    events_per_s: float | None
    rebalances: int


class LiveView:
    """Keeps the first and previous snapshots and renders the current one in at most
    `height` lines (None: every shard gets a row)."""

    def __init__(self, title: str, height: int | None = None) -> None:
        self.title = title
        self.height = height
        self.first: Snapshot | None = None
        self.previous: Snapshot | None = None
        self.events: list[str] = []  # operator-visible happenings (the demo's steps)
        self.last_rates = Rates(events_per_s=None, rebalances=0)

    def rates(self, now: Snapshot) -> Rates:
        prev, first = self.previous, self.first
        eps = None
        if prev is not None and now.taken_at > prev.taken_at:
            eps = max(0, now.committed - prev.committed) / (now.taken_at - prev.taken_at)
        gen_now = now.status.generation or 0
        gen_first = (first.status.generation or 0) if first is not None else gen_now
        return Rates(events_per_s=eps, rebalances=max(0, gen_now - gen_first))

    def update(self, snapshot: Snapshot) -> Group:
        self.last_rates = self.rates(snapshot)
        rendered = self.render(snapshot, self.last_rates)
        if self.first is None:
            self.first = snapshot
        self.previous = snapshot
        return rendered

    def render(self, snap: Snapshot, rates: Rates) -> Group:
        state = snap.status
        leader = state.leader
        owner_of = state.owner_of
        # One line per row whatever the width: long shard lists end in an ellipsis.
        head = Table.grid(padding=(0, 2))
        for _ in range(4):
            head.add_column(no_wrap=True, overflow="ellipsis")
        head.add_row("cluster", state.cluster, "leader", leader.id if leader else "none")
        head.add_row("generation", str(state.generation), "rebalances seen", str(rates.rebalances))
        eps = "-" if rates.events_per_s is None else f"{rates.events_per_s:,.0f}"
        lag = snap.total_lag
        head.add_row("events/s", eps, "total lag", "-" if lag is None else f"{lag:,}")
        head.add_row(
            "shards",
            f"{len(owner_of):,} of {state.shard_count:,} owned",
            "unowned",
            shard_ranges(state.unowned),
        )
        head.add_row(
            "unassigned",
            shard_ranges(state.unassigned),
            "in handoff",
            shard_ranges(state.in_handoff),
        )
        if snap.kafka_error is not None:
            head.add_row("kafka", Text(snap.kafka_error, style="red"), "", "")

        events = self.events[-EVENT_LINES:]
        worker_rows, shard_rows = self._rows(state, len(events))
        workers = Table(title="workers", expand=False)
        for column in ("worker", "state", "assigned", "owned", "lag", "shards"):
            workers.add_column(column, no_wrap=True, overflow="ellipsis")
        shown_workers = state.workers
        if worker_rows is not None and len(state.workers) > worker_rows:
            shown_workers = state.workers[: worker_rows - 1]
        for row in shown_workers:
            lags = [snap.lag(s) for s in row.owned]
            worker_lag = "-" if snap.end_offsets is None else f"{sum(x or 0 for x in lags):,}"
            workers.add_row(
                row.id,
                row.record.state,
                str(len(row.assigned)),
                str(len(row.owned)),
                worker_lag,
                shard_ranges(row.owned),
                style="yellow" if row.record.state == "draining" else "",
            )
        if len(shown_workers) < len(state.workers):
            workers.add_row(f"... {len(state.workers) - len(shown_workers)} more", "", "", "")
        shards: Sequence[int] = range(state.shard_count)
        title = "shards"
        if shard_rows is not None and state.shard_count > shard_rows:
            shards = self.most_in_need(snap, shard_rows)
            title = (
                f"shards: {len(shards)} of {state.shard_count:,} shown "
                "(unowned first, then the most lag)"
            )
        # The title as a line of its own: a table's title wraps to the table's width.
        table = Table(expand=False)
        for column in ("shard", "owner", "committed", "lag"):
            table.add_column(
                column,
                justify="right" if column != "owner" else "left",
                no_wrap=True,
                overflow="ellipsis",
            )
        for shard in shards:
            lag_of = snap.lag(shard)
            table.add_row(
                str(shard),
                owner_of.get(shard, "-"),
                str(snap.positions.get(shard, "-")),
                "-" if lag_of is None else f"{lag_of:,}",
                style="red" if shard not in owner_of else "",
            )
        parts: list[Any] = [
            Panel(head, title=self.title),
            workers,
            Text(title, style="italic", no_wrap=True, overflow="ellipsis"),
            table,
        ]
        if events:
            parts.append(Text("\n".join(events), no_wrap=True, overflow="ellipsis"))
        return Group(*parts)

    def _rows(self, state: ClusterStatus, event_lines: int) -> tuple[int | None, int | None]:
        """Rows for the worker table and for the shard table, so that the view fits in
        `height` lines (None: no limit). The shard table keeps at least MIN_SHARD_ROWS."""
        if self.height is None:
            return None, None
        head = 2 + 6  # the panel's borders and rows (a Kafka error line included)
        chrome = 5 + 5  # each table: title, top rule, header, header rule, bottom rule
        rows = self.height - head - chrome - event_lines
        workers = min(len(state.workers), max(1, rows - MIN_SHARD_ROWS))
        return workers, max(MIN_SHARD_ROWS, rows - workers)

    @staticmethod
    def most_in_need(snap: Snapshot, rows: int) -> list[int]:
        """The `rows` shards that need a look: unowned ones in shard order, then the
        rest by lag, largest first (shard order among equal lags)."""
        state = snap.status
        unowned = state.unowned
        owned = [s for s in range(state.shard_count) if s in state.owners]
        owned.sort(key=lambda s: (-(snap.lag(s) or 0), s))
        return [*unowned, *owned][:rows]


async def watch_status(
    settings: Settings,
    topic: str | None,
    interval: float,
    console: Console | None = None,
    refreshes: int | None = None,
) -> SnapshotSource:
    """Redraw the live view every `interval` seconds until Ctrl-C (or `refreshes`
    snapshots). A `topic` that does not exist ends it at once with exit 2."""
    from rich.console import Console
    from rich.live import Live

    from shardctl.cli.common import EXIT_USAGE, fail
    from shardctl.cli.kafka_admin import UnknownTopic

    named = topic is not None
    if topic is None:
        topic = await _default_topic(settings)
    source = SnapshotSource(settings, topic)
    if named:
        try:
            await asyncio.to_thread(source.check_topic)
        except UnknownTopic as exc:
            raise fail(
                f"--topic: {exc}; `shardctl cluster show` lists the cluster's topics",
                EXIT_USAGE,
            ) from None
    console = console or Console()
    view = LiveView(f"shardctl status --watch ({settings.cluster})", console.size.height)
    taken = 0
    try:
        first = await source.take()
        taken += 1
        with Live(view.update(first), console=console, auto_refresh=False) as live:
            while refreshes is None or taken < refreshes:
                await asyncio.sleep(interval)
                live.update(view.update(await source.take()), refresh=True)
                taken += 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
    finally:
        await source.close()
    return source


async def _default_topic(settings: Settings) -> str | None:
    """The cluster config's topic when it lists exactly one and travels on Kafka (a
    topic that is missing then shows as an error in the view, not as a usage error)."""
    from shardctl.core.etcd import EtcdClient
    from shardctl.core.keyspace import Keyspace
    from shardctl.core.records import ClusterConfig

    keys = Keyspace.of(settings)
    async with EtcdClient(settings.etcd) as client:
        kv = await client.get(keys.config)
    if kv is None:
        return None
    config = ClusterConfig.decode(kv.key, kv.value)
    if config.transport == "nsq" or len(config.topics) != 1:
        return None
    return config.topics[0]
