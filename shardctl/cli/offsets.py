"""`shardctl offsets describe|reset`: look at and move the shards' stored offsets.

`describe` lists, per shard and topic, the committed offset (`offsets/<shard>` in
etcd), the partition's end offset (Kafka's high watermark), the lag between them,
and the shard's owner and owner token.

`reset` rewrites `offsets/<shard>` for one topic on one shard, a set or all of them:
to the earliest or latest offset of the shard's partition, an absolute offset, a
shift from the committed one, or the first offset at or after a time (Kafka's
offsetsForTimes), always with the topic's current id. A target outside the
partition's retained range is clamped into it, as Kafka's own tool does. Without
`--execute` it only prints what it would write. It refuses while any chosen shard is
owned (a worker's commit would overwrite it); each write is a txn guarded on
`owners/<shard>` being absent and the offsets key being unchanged since it was read.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from shardctl.cli.common import EXIT_USAGE, ClusterOpt, ConfigOpt, fail, load

if TYPE_CHECKING:
    from shardctl.core.config import Settings
    from shardctl.core.etcd import EtcdClient
    from shardctl.core.keyspace import Keyspace
    from shardctl.core.status import ClusterStatus

app = typer.Typer(help="The shards' stored offsets.", no_args_is_help=True)

WATERMARK_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class PartitionMarks:
    """The retained range of one partition: the oldest offset and the end offset
    (the offset the next record will get)."""

    earliest: int
    end: int


@dataclass(frozen=True)
class TopicMarks:
    topic_id: str
    partitions: int
    marks: dict[int, PartitionMarks]


def topic_marks(settings: Settings, topic: str, shards: list[int]) -> TopicMarks:
    """Topic id, partition count and the watermarks of partitions `shards` of `topic`
    (a shard beyond the partition count is left out)."""
    from confluent_kafka import Consumer, KafkaException, TopicCollection, TopicPartition

    from shardctl.cli.kafka_admin import KafkaUnavailable, _admin, quiet_config

    admin = _admin(settings)  # kept referenced until the answer is in
    try:
        described = admin.describe_topics(TopicCollection([topic]))[topic].result(
            timeout=WATERMARK_TIMEOUT_S
        )
    except KafkaException as exc:
        raise KafkaUnavailable(
            f"topic {topic} at {settings.kafka.bootstrap_servers}: cannot describe it: {exc}"
        ) from None
    count = len(described.partitions)
    conf: dict[str, str | int | float | bool] = {
        **quiet_config(settings),
        "group.id": "shardctl-offsets",
    }
    consumer = Consumer(conf)
    marks: dict[int, PartitionMarks] = {}
    try:
        for shard in shards:
            if shard >= count:
                continue
            try:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, shard), timeout=WATERMARK_TIMEOUT_S
                )
            except KafkaException as exc:
                raise KafkaUnavailable(
                    f"topic {topic} partition {shard}: no watermarks: {exc}"
                ) from None
            marks[shard] = PartitionMarks(int(low), int(high))
    finally:
        consumer.close()
    return TopicMarks(str(described.topic_id), count, marks)


def offsets_at(settings: Settings, topic: str, shards: list[int], when: datetime) -> dict[int, int]:
    """Per shard, the first offset of partition `shard` whose record time is at or
    after `when` (Kafka's offsetsForTimes); None from Kafka (no such record) is -1."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    from shardctl.cli.kafka_admin import KafkaUnavailable, quiet_config

    millis = int(when.timestamp() * 1000)
    conf: dict[str, str | int | float | bool] = {
        **quiet_config(settings),
        "group.id": "shardctl-offsets",
    }
    consumer = Consumer(conf)
    try:
        found = consumer.offsets_for_times(
            [TopicPartition(topic, shard, millis) for shard in shards],
            timeout=WATERMARK_TIMEOUT_S,
        )
    except KafkaException as exc:
        raise KafkaUnavailable(f"topic {topic}: offsets for {when.isoformat()}: {exc}") from None
    finally:
        consumer.close()
    return {int(part.partition): int(part.offset) for part in found}


async def _num_shards(client: EtcdClient, keys: Keyspace) -> int:
    from shardctl.core.records import ClusterConfig

    kv = await client.get(keys.config)
    if kv is None:
        raise fail(
            "the cluster has no config (num_shards): run `shardctl cluster init` first",
            EXIT_USAGE,
        )
    return ClusterConfig.decode(kv.key, kv.value).num_shards


async def _config_topics(client: EtcdClient, keys: Keyspace) -> list[str]:
    from shardctl.core.records import ClusterConfig

    kv = await client.get(keys.config)
    return [] if kv is None else ClusterConfig.decode(kv.key, kv.value).topics


async def shard_offsets(
    settings: Settings,
    client: EtcdClient,
    topics: list[str],
    shards: list[int],
    kafka_errors: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """One row per shard and topic: committed and end offsets, lag, owner and token.

    `lag` counts the records after the committed offset; with nothing committed the
    shard starts at the partition's earliest offset, so it counts from there. A
    shard with no partition in a topic gets `end` and `lag` None. With
    `kafka_errors`, a topic Kafka cannot describe gets them None too, and its error
    goes into `kafka_errors` (else KafkaUnavailable is raised)."""
    from shardctl.cli.kafka_admin import KafkaUnavailable
    from shardctl.core.keyspace import Keyspace
    from shardctl.core.records import OffsetRecord

    keys = Keyspace.of(settings)
    owners = {
        keys.shard_of_owner_key(kv.key): kv
        for kv in (await client.get_prefix(keys.owners_prefix)).items
    }
    records = {
        keys.shard_of_offset_key(kv.key): OffsetRecord.decode(kv.key, kv.value)
        for kv in (await client.get_prefix(keys.offsets_prefix)).items
    }
    marks: dict[str, TopicMarks] = {}
    for topic in topics:
        try:
            marks[topic] = await asyncio.to_thread(topic_marks, settings, topic, shards)
        except KafkaUnavailable as exc:
            if kafka_errors is None:
                raise
            kafka_errors[topic] = str(exc)
            marks[topic] = TopicMarks("", 0, {})
    rows: list[dict[str, Any]] = []
    for shard in shards:
        owner = owners.get(shard)
        record = records.get(shard)
        for topic in topics:
            committed = None if record is None else record.positions.get(topic)
            mark = marks[topic].marks.get(shard)
            lag = None
            if mark is not None:
                lag = max(0, mark.end - (mark.earliest if committed is None else committed))
            rows.append(
                {
                    "shard": shard,
                    "topic": topic,
                    "committed": committed,
                    "earliest": None if mark is None else mark.earliest,
                    "end": None if mark is None else mark.end,
                    "lag": lag,
                    "owner": None if owner is None else owner.value.decode(),
                    "token": None if owner is None else owner.create_revision,
                }
            )
    return rows


def _chosen_shards(shard: list[int] | None, all_shards: bool) -> list[int] | None:
    """The shards named by `--shard`, or None for `--all-shards` (read from the config)."""
    if all_shards and shard:
        raise fail("give either --shard or --all-shards, not both", EXIT_USAGE)
    if not all_shards and not shard:
        raise fail("name the shards: --shard S (repeatable) or --all-shards", EXIT_USAGE)
    return None if all_shards else sorted(set(shard or []))


ShardsOpt = Annotated[
    list[int] | None,
    typer.Option("--shard", help="A shard (repeat for a set).", min=0, show_default=False),
]
AllShardsOpt = Annotated[bool, typer.Option("--all-shards", help="Every shard of the cluster.")]


@app.command("describe")
def describe(
    shard: ShardsOpt = None,
    all_shards: AllShardsOpt = False,
    topic: Annotated[
        list[str] | None,
        typer.Option("--topic", help="A topic (repeatable; default: the cluster config's topics)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
    config: ConfigOpt = None,
    cluster: ClusterOpt = None,
) -> None:
    """Per shard and topic: committed offset, end offset, lag, owner and owner token.
    Without --shard, every shard."""
    from shardctl.cli.kafka_admin import KafkaUnavailable
    from shardctl.core.etcd import EtcdClient, EtcdError
    from shardctl.core.keyspace import Keyspace
    from shardctl.core.records import RecordError

    chosen = None if not shard else _chosen_shards(shard, all_shards)
    settings = load(config, cluster)
    keys = Keyspace.of(settings)

    async def main() -> list[dict[str, Any]]:
        async with EtcdClient(settings.etcd) as client:
            shards = chosen if chosen is not None else list(range(await _num_shards(client, keys)))
            topics = list(dict.fromkeys(topic or await _config_topics(client, keys)))
            if not topics:
                raise fail("the cluster config names no topic: give --topic", EXIT_USAGE)
            return await shard_offsets(settings, client, topics, shards)

    try:
        rows = asyncio.run(main())
    except (EtcdError, RecordError, KafkaUnavailable) as exc:
        raise fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return

    def cell(value: object) -> str:
        return "-" if value is None else str(value)

    typer.echo(
        f"{'SHARD':>5}  {'TOPIC':<24} {'COMMITTED':>10} {'END':>10} {'LAG':>8}  {'OWNER':<24} TOKEN"
    )
    for row in rows:
        typer.echo(
            f"{row['shard']:>5}  {row['topic']:<24} {cell(row['committed']):>10} "
            f"{cell(row['end']):>10} {cell(row['lag']):>8}  {cell(row['owner']):<24} "
            f"{cell(row['token'])}"
        )


def _parse_time(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise fail(
            f"--to-datetime {text!r}: expected ISO 8601, e.g. 2026-12-01T10:00:00Z", EXIT_USAGE
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


@app.command("reset")
def reset(
    topic: Annotated[str, typer.Option("--topic", help="The topic whose offset to reset.")],
    shard: ShardsOpt = None,
    all_shards: AllShardsOpt = False,
    to_earliest: Annotated[
        bool, typer.Option("--to-earliest", help="Start at the oldest retained record.")
    ] = False,
    to_latest: Annotated[
        bool, typer.Option("--to-latest", help="Start after the newest record (skip the rest).")
    ] = False,
    to_offset: Annotated[
        int | None, typer.Option("--to-offset", help="Start at this offset.", min=0)
    ] = None,
    shift_by: Annotated[
        int | None,
        typer.Option("--shift-by", help="Move the committed offset by N (negative: back)."),
    ] = None,
    to_datetime: Annotated[
        str | None,
        typer.Option(
            "--to-datetime",
            help="Start at the first record at or after this ISO 8601 time (UTC if no zone).",
        ),
    ] = None,
    execute: Annotated[
        bool, typer.Option("--execute", help="Write it; without it, only print the change.")
    ] = False,
    config: ConfigOpt = None,
    cluster: ClusterOpt = None,
) -> None:
    """Reset the stored offset of one topic on some shards (and record the topic's
    current id). A dry run unless --execute; refuses while a chosen shard is owned."""
    from shardctl.cli.kafka_admin import KafkaUnavailable
    from shardctl.core.etcd import Absent, EtcdClient, EtcdError, ModRevisionIs, Put
    from shardctl.core.keyspace import Keyspace
    from shardctl.core.records import OffsetRecord, RecordError

    given = [
        name
        for name, value in (
            ("--to-earliest", to_earliest),
            ("--to-latest", to_latest),
            ("--to-offset", to_offset is not None),
            ("--shift-by", shift_by is not None),
            ("--to-datetime", to_datetime is not None),
        )
        if value
    ]
    if len(given) != 1:
        raise fail(
            "give exactly one of --to-earliest, --to-latest, --to-offset, --shift-by, "
            f"--to-datetime (got {', '.join(given) or 'none'})",
            EXIT_USAGE,
        )
    when = None if to_datetime is None else _parse_time(to_datetime)
    chosen = _chosen_shards(shard, all_shards)
    settings = load(config, cluster)
    keys = Keyspace.of(settings)

    async def main() -> str:
        async with EtcdClient(settings.etcd) as client:
            shards = chosen if chosen is not None else list(range(await _num_shards(client, keys)))
            owned = {
                keys.shard_of_owner_key(kv.key): kv
                for kv in (await client.get_prefix(keys.owners_prefix)).items
            }
            busy = [
                f"shard {s} by {owned[s].value.decode()!r} (token {owned[s].create_revision})"
                for s in shards
                if s in owned
            ]
            if busy:
                raise fail(
                    f"owned: {'; '.join(busy)}: their commits would overwrite the reset. "
                    "Stop or drain those workers, or wait until the shards are released; "
                    "nothing written"
                )
            marks = await asyncio.to_thread(topic_marks, settings, topic, shards)
            missing = [s for s in shards if s not in marks.marks]
            if missing:
                raise fail(
                    f"topic {topic} has {marks.partitions} partitions: no partition for "
                    f"shard(s) {', '.join(map(str, missing))}"
                )
            at_time = (
                {}
                if when is None
                else await asyncio.to_thread(offsets_at, settings, topic, shards, when)
            )
            plan: list[tuple[int, Any, OffsetRecord | None, int]] = []
            for s in shards:
                kv = await client.get(keys.offset(s))
                old = None if kv is None else OffsetRecord.decode(kv.key, kv.value)
                committed = None if old is None else old.positions.get(topic)
                mark = marks.marks[s]
                if to_earliest:
                    wanted = mark.earliest
                elif to_latest:
                    wanted = mark.end
                elif to_offset is not None:
                    wanted = to_offset
                elif shift_by is not None:
                    if committed is None:
                        raise fail(
                            f"shard {s}: no stored offset of topic {topic} to shift; "
                            "use --to-offset, --to-earliest or --to-latest"
                        )
                    wanted = committed + shift_by
                else:  # --to-datetime; -1: no record that late, so the end
                    found = at_time.get(s, -1)
                    wanted = mark.end if found < 0 else found
                plan.append((s, kv, old, min(max(wanted, mark.earliest), mark.end)))

            lines = []
            for s, _, old, target in plan:
                before = (
                    "no stored offset"
                    if old is None or topic not in old.positions
                    else f"{topic}@{old.positions[topic]}"
                )
                old_id = None if old is None else old.topic_ids.get(topic)
                lines.append(
                    f"shard {s}: {before} -> {topic}@{target} "
                    f"(topic id {old_id or 'unknown'} -> {marks.topic_id})"
                )
            if not execute:
                lines.append("dry run: nothing written; add --execute to write it")
                return "\n".join(lines)
            written: list[int] = []
            for s, kv, old, target in plan:
                record = OffsetRecord(
                    positions={**(old.positions if old else {}), topic: target},
                    event_id=None,
                    token=old.token if old else 0,
                    topic_ids={**(old.topic_ids if old else {}), topic: marks.topic_id},
                )
                guards: list[Absent | ModRevisionIs] = [
                    Absent(keys.owner(s)),
                    Absent(keys.offset(s))
                    if kv is None
                    else ModRevisionIs(keys.offset(s), kv.mod_revision),
                ]
                ok, _ = await client.txn(guards, [Put(keys.offset(s), record.encode())])
                if not ok:
                    done = ", ".join(map(str, written)) or "none"
                    raise fail(
                        f"shard {s}: acquired or its offsets changed meanwhile; not written "
                        f"(written: {done}). Run the command again"
                    )
                written.append(s)
            lines.append(f"written: {len(written)} shard(s)")
            return "\n".join(lines)

    try:
        typer.echo(asyncio.run(main()))
    except (EtcdError, RecordError, KafkaUnavailable) as exc:
        raise fail(str(exc)) from None


def mirror_group(cluster: str) -> str:
    """The consumer group `offsets mirror` commits into by default."""
    return f"shardctl.{cluster}.offsets"


def commit_to_group(settings: Settings, group: str, offsets: dict[tuple[str, int], int]) -> None:
    """Commit `offsets` ((topic, partition) -> offset) into consumer group `group`,
    without subscribing: the group gets no member and no rebalance, only offsets."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    from shardctl.cli.kafka_admin import KafkaUnavailable, quiet_config

    if not offsets:
        return
    conf: dict[str, str | int | float | bool] = {
        **quiet_config(settings),
        "group.id": group,
        "enable.auto.commit": False,
    }
    consumer = Consumer(conf)
    try:
        parts = [TopicPartition(t, p, off) for (t, p), off in sorted(offsets.items())]
        for part in consumer.commit(offsets=parts, asynchronous=False) or []:
            if part.error is not None:
                raise KafkaUnavailable(
                    f"group {group}: {part.topic} partition {part.partition}: {part.error}"
                )
    except KafkaException as exc:
        raise KafkaUnavailable(
            f"group {group} at {settings.kafka.bootstrap_servers}: commit failed: {exc}"
        ) from None
    finally:
        consumer.close()


async def stored_offsets(client: EtcdClient, keys: Keyspace) -> dict[tuple[str, int], int]:
    """(topic, shard) -> committed offset, from every offsets/<shard> record."""
    from shardctl.core.records import OffsetRecord

    found: dict[tuple[str, int], int] = {}
    for kv in (await client.get_prefix(keys.offsets_prefix)).items:
        record = OffsetRecord.decode(kv.key, kv.value)
        shard = keys.shard_of_offset_key(kv.key)
        for topic, offset in record.positions.items():
            found[(topic, shard)] = offset
    return found


@app.command("mirror")
def mirror(
    group: Annotated[
        str | None,
        typer.Option(help="The consumer group (default: shardctl.<cluster>.offsets)."),
    ] = None,
    topic: Annotated[
        list[str] | None,
        typer.Option("--topic", help="A topic (repeatable; default: the cluster config's topics)."),
    ] = None,
    interval: Annotated[float, typer.Option(help="Seconds between two copies.", min=0.5)] = 10.0,
    once: Annotated[bool, typer.Option("--once", help="Copy once and exit.")] = False,
    config: ConfigOpt = None,
    cluster: ClusterOpt = None,
) -> None:
    """Copy the shards' committed offsets from etcd into a Kafka consumer group, so that
    standard lag tools (Burrow, kafka-lag-exporter, kminion, Kafka UIs) see the workers.

    Commit only: it never subscribes, so the group has no member and never rebalances.
    etcd stays the source of truth: the workers never read these offsets back, and a
    copy can be up to --interval old."""
    from shardctl.cli.kafka_admin import KafkaUnavailable
    from shardctl.core.etcd import EtcdClient, EtcdError
    from shardctl.core.keyspace import Keyspace
    from shardctl.core.records import RecordError

    settings = load(config, cluster)
    keys = Keyspace.of(settings)
    name = group or mirror_group(settings.cluster)

    async def read() -> dict[tuple[str, int], int]:
        async with EtcdClient(settings.etcd) as client:
            topics = set(topic or await _config_topics(client, keys))
            return {
                where: offset
                for where, offset in (await stored_offsets(client, keys)).items()
                if where[0] in topics
            }

    while True:
        try:
            offsets = asyncio.run(read())
            commit_to_group(settings, name, offsets)
        except (EtcdError, RecordError, KafkaUnavailable) as exc:
            raise fail(str(exc)) from None
        typer.echo(f"group {name}: {len(offsets)} offset(s) committed")
        if once:
            return
        try:
            time.sleep(interval)
        except KeyboardInterrupt:
            return


async def status_offsets(
    settings: Settings, status: ClusterStatus, kafka_errors: dict[str, str]
) -> list[dict[str, Any]]:
    """`status --json`'s `shards`: per shard of the cluster config, its owner and token,
    and per topic of the config the committed offset, end offset and lag (None for
    end and lag when the transport is NSQ, or Kafka does not answer about a topic:
    its error goes into `kafka_errors`)."""
    from shardctl.core.etcd import EtcdClient

    config = status.config
    if config is None:
        return []
    shards = list(range(config.num_shards))
    # NSQ keeps no offsets, and there is no Kafka to ask.
    topics = [] if config.transport == "nsq" else list(config.topics)
    async with EtcdClient(settings.etcd) as client:
        rows = await shard_offsets(settings, client, topics, shards, kafka_errors)
    by_shard: dict[int, dict[str, Any]] = {}
    for shard in shards:
        owner = status.owners.get(shard)
        by_shard[shard] = {
            "shard": shard,
            "owner": None if owner is None else owner.id,
            "token": None if owner is None else owner.token,
            "offsets": {},
        }
    for row in rows:
        by_shard[row["shard"]]["offsets"][row["topic"]] = {
            name: row[name] for name in ("committed", "earliest", "end", "lag")
        }
    return list(by_shard.values())
