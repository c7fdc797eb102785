"""`shardctl tail <topic> [--shard N]`: print a topic's events as they arrive.

Reads without owning anything: on Kafka it assigns the partitions directly and never
commits; on NSQ it subscribes an ephemeral channel of `<topic>.<shard>`, so the
workers' channel loses nothing. Each line is `<shard> <topic>@<offset> <json>`
(`--bare`: only the JSON).
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Annotated

import typer

from shardctl.cli.common import EXIT_FAILURE, EXIT_USAGE, ClusterOpt, ConfigOpt, Transport, fail

if TYPE_CHECKING:
    from shardctl.core.config import Settings


def _kafka_partitions(settings: Settings, topic: str) -> int:
    from shardctl.cli.kafka_admin import partition_counts

    count = partition_counts(settings, [topic])[topic]
    if not count:
        raise fail(f"topic {topic!r} does not exist at {settings.kafka.bootstrap_servers}")
    return count


async def _tail(
    settings: Settings,
    topic: str,
    shards: list[int],
    transport_name: str,
    from_beginning: bool,
    limit: int | None,
    bare: bool,
) -> None:
    from workers.handlers import HandlerContext
    from workers.sinks.stdout import Stdout
    from workers.transports.base import Transport as EventSource
    from workers.transports.kafka import KafkaTransport
    from workers.transports.nsq import NsqTransport

    printer = Stdout(HandlerContext(options={"bare": str(bare)}))
    transport: EventSource
    if transport_name == "kafka":
        from shardctl.cli.kafka_admin import quiet_config

        transport = KafkaTransport(
            quiet_config(settings),
            [topic],
            group_id=f"shardctl.{settings.cluster}.tail",
            start_at="earliest" if from_beginning else "latest",
        )
    else:
        addresses = [a.strip() for a in settings.nsq.nsqd_tcp_addresses.split(",") if a.strip()]
        transport = NsqTransport(
            addresses,
            [topic],
            f"shardctl-tail-{os.getpid()}#ephemeral",
            max_in_flight=100,
            grace_s=0.0,
            stop_timeout_s=1.0,
        )
    await transport.start()
    printed = 0
    try:
        for shard in shards:
            await transport.start_shard(shard, {})
        while limit is None or printed < limit:
            records = await transport.poll(100, 0.5)
            if limit is not None:
                records, extra = records[: limit - printed], records[limit - printed :]
                await transport.abandon(extra)
            for record in records:
                typer.echo(printer.line(record.shard, record.topic, record.position, record.value))
            printed += len(records)
            await transport.settle(records)
    finally:
        await transport.close()


def tail(
    topic: Annotated[str, typer.Argument(help="Topic (on NSQ, without the .<shard> suffix).")],
    shard: Annotated[
        int | None, typer.Option("--shard", min=0, help="Only this shard (required on NSQ).")
    ] = None,
    transport: Annotated[Transport, typer.Option(help="Where the topic lives.")] = Transport.kafka,
    from_beginning: Annotated[
        bool, typer.Option("--from-beginning", help="Kafka: start at the earliest retained record.")
    ] = False,
    limit: Annotated[int | None, typer.Option(min=1, help="Exit after this many events.")] = None,
    bare: Annotated[bool, typer.Option(help="Print only the JSON of each event.")] = False,
    config: ConfigOpt = None,
    cluster: ClusterOpt = None,
) -> None:
    """Print a topic's events as they arrive, without owning any shard."""
    from shardctl.cli.common import load
    from shardctl.cli.kafka_admin import KafkaUnavailable
    from shardctl.core.config import ConfigError

    if transport == Transport.nsq and shard is None:
        raise fail("--shard: required with --transport nsq (each shard is its own NSQ topic)", 2)
    settings = load(config, cluster)
    try:
        if transport == Transport.kafka:
            # Also checks that the brokers answer before a consumer starts retrying.
            partitions = _kafka_partitions(settings, topic)
            if shard is not None and shard >= partitions:
                raise fail(f"--shard {shard}: topic {topic!r} has {partitions} partitions")
            shards = [shard] if shard is not None else list(range(partitions))
        else:
            assert shard is not None
            shards = [shard]
        asyncio.run(_tail(settings, topic, shards, transport.value, from_beginning, limit, bare))
    except KafkaUnavailable as exc:
        raise fail(str(exc), EXIT_FAILURE) from None
    except ConfigError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
