"""`shardctl tail <topic> [--shard N]`: print a topic's events as they arrive.

Reads without owning anything: on Kafka it assigns the partitions directly and never
commits; on NSQ it subscribes an ephemeral channel of `<topic>.<shard>`, so the
workers' channel loses nothing. Each line is `<shard> <topic>@<offset> <json>`
(`--bare`: only the JSON).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated

import typer

from shardctl.config import ConfigError, Settings, load_settings


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(1)


def _kafka_partitions(settings: Settings, topic: str) -> int:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(dict(settings.kafka.client_config().items()))
    meta = admin.list_topics(topic, timeout=10)
    found = meta.topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        reason = found.error if found is not None and found.error else "unknown topic"
        raise ConfigError(f"topic {topic!r} at {settings.kafka.bootstrap_servers}: {reason}")
    return len(found.partitions)


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
    from workers.transports.base import Transport
    from workers.transports.kafka import KafkaTransport
    from workers.transports.nsq import NsqTransport

    printer = Stdout(HandlerContext(options={"bare": str(bare)}))
    transport: Transport
    if transport_name == "kafka":
        transport = KafkaTransport(
            settings.kafka.client_config(),
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
    transport: Annotated[str, typer.Option(help="kafka or nsq.")] = "kafka",
    from_beginning: Annotated[
        bool, typer.Option("--from-beginning", help="Kafka: start at the earliest retained record.")
    ] = False,
    limit: Annotated[int | None, typer.Option(min=1, help="Exit after this many events.")] = None,
    bare: Annotated[bool, typer.Option(help="Print only the JSON of each event.")] = False,
    config: Annotated[Path | None, typer.Option("--config", help="TOML config file.")] = None,
    cluster: Annotated[str | None, typer.Option("--cluster", help="Cluster name.")] = None,
) -> None:
    """Print a topic's events as they arrive, without owning any shard."""
    if transport not in ("kafka", "nsq"):
        raise _fail(f"--transport: {transport!r} is not kafka or nsq")
    try:
        settings = load_settings(path=config, cluster=cluster)
        if transport == "kafka":
            shards = (
                [shard] if shard is not None else list(range(_kafka_partitions(settings, topic)))
            )
        else:
            if shard is None:
                raise ConfigError(
                    "--shard: required with --transport nsq (each shard is its own NSQ topic)"
                )
            shards = [shard]
        asyncio.run(_tail(settings, topic, shards, transport, from_beginning, limit, bare))
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
