"""`shardctl offsets reset`: choose where a shard starts in one topic again.

The recovery after a topic was deleted and re-created: the shard's stored offsets
belong to the old topic (its topic id), and the worker refuses them. This command
rewrites `offsets/<shard>` for one topic to the earliest or the latest offset of the
shard's partition, with the topic's current id. Without `--execute` it only prints
what it would write. It refuses while the shard is owned (a worker's commit would
overwrite it); the write is a txn guarded on `owners/<shard>` being absent and the
offsets key being unchanged since it was read.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from shardctl.config import Settings

app = typer.Typer(help="The shards' stored offsets.", no_args_is_help=True)


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(1)


def _partition_now(settings: Settings, topic: str, shard: int) -> tuple[int, int, str]:
    """(earliest offset, latest offset, topic id) of partition `shard` of `topic`."""
    from confluent_kafka import Consumer, KafkaException, TopicCollection, TopicPartition
    from confluent_kafka.admin import AdminClient

    conf: dict[str, str | int | float | bool] = dict(settings.kafka.client_config())
    admin = AdminClient(conf)  # kept referenced until the answer is in
    try:
        described = admin.describe_topics(TopicCollection([topic]))[topic].result(timeout=15)
    except KafkaException as exc:
        raise _fail(f"topic {topic}: cannot describe it: {exc}") from None
    if shard >= len(described.partitions):
        raise _fail(
            f"topic {topic} has {len(described.partitions)} partitions: no partition {shard}"
        )
    consumer = Consumer({**conf, "group.id": "shardctl-offsets-reset"})
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, shard), timeout=15)
    except KafkaException as exc:
        raise _fail(f"topic {topic} partition {shard}: no watermarks: {exc}") from None
    finally:
        consumer.close()
    return int(low), int(high), str(described.topic_id)


@app.command("reset")
def reset(
    shard: Annotated[int, typer.Option("--shard", help="The shard.", min=0)],
    topic: Annotated[str, typer.Option("--topic", help="The topic whose offset to reset.")],
    to_earliest: Annotated[
        bool, typer.Option("--to-earliest", help="Start at the oldest retained record.")
    ] = False,
    to_latest: Annotated[
        bool, typer.Option("--to-latest", help="Start after the newest record (skip the rest).")
    ] = False,
    execute: Annotated[
        bool, typer.Option("--execute", help="Write it; without it, only print the change.")
    ] = False,
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML config file (or SHARDCTL_CONFIG).")
    ] = None,
    cluster: Annotated[
        str | None, typer.Option("--cluster", help="Cluster name (or SHARDCTL_CLUSTER).")
    ] = None,
) -> None:
    """Reset a shard's stored offset of one topic to its earliest or latest offset (and
    record the topic's current id). Refuses while the shard is owned."""
    from shardctl.config import ConfigError, load_settings
    from shardctl.etcd import Absent, EtcdClient, EtcdError, ModRevisionIs, Put
    from shardctl.keyspace import Keyspace
    from shardctl.records import OffsetRecord, RecordError

    if to_earliest == to_latest:
        raise _fail("give exactly one of --to-earliest and --to-latest")
    try:
        settings = load_settings(path=config, cluster=cluster)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    keys = Keyspace.of(settings)

    async def main() -> str:
        async with EtcdClient(settings.etcd) as client:
            owner = await client.get(keys.owner(shard))
            if owner is not None:
                raise _fail(
                    f"shard {shard} is owned by {owner.value.decode()!r} (token "
                    f"{owner.create_revision}): its commits would overwrite the reset. "
                    "Stop or drain that worker, or wait until the shard is released"
                )
            low, high, topic_id = await asyncio.to_thread(_partition_now, settings, topic, shard)
            target = low if to_earliest else high
            kv = await client.get(keys.offset(shard))
            old = None if kv is None else OffsetRecord.decode(kv.key, kv.value)
            before = "no stored offset" if old is None else f"{topic}@{old.positions.get(topic)}"
            old_id = None if old is None else old.topic_ids.get(topic)
            change = (
                f"shard {shard}: {before} -> {topic}@{target} "
                f"(topic id {old_id or 'unknown'} -> {topic_id})"
            )
            if not execute:
                return f"{change}\ndry run: nothing written; add --execute to write it"
            record = OffsetRecord(
                positions={**(old.positions if old else {}), topic: target},
                event_id=None,
                token=old.token if old else 0,
                topic_ids={**(old.topic_ids if old else {}), topic: topic_id},
            )
            guards: list[Absent | ModRevisionIs] = [Absent(keys.owner(shard))]
            guards.append(
                Absent(keys.offset(shard))
                if kv is None
                else ModRevisionIs(keys.offset(shard), kv.mod_revision)
            )
            ok, _ = await client.txn(guards, [Put(keys.offset(shard), record.encode())])
            if not ok:
                raise _fail(
                    f"shard {shard}: acquired or its offsets changed meanwhile; nothing "
                    "written. Run the command again"
                )
            return f"{change}\nwritten"

    try:
        typer.echo(asyncio.run(main()))
    except (EtcdError, RecordError) as exc:
        raise _fail(str(exc)) from None
