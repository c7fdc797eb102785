"""`shardctl cluster init|show`: set up a cluster once, then look at it.

`init` writes the cluster's `config` key (num_shards, topics, transport) and, on
Kafka, creates the topics with one partition per shard. Running it again with the
same values changes nothing (exit 0), so deployments run it before every start.
A different value is refused (exit 2) and nothing changes: the shard count moves
only with `shardctl shards set`, which checks the topics first.
"""

from __future__ import annotations

import asyncio
import enum
import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from shardctl.cli.common import EXIT_FAILURE, EXIT_USAGE, ClusterOpt, ConfigOpt, fail, load

if TYPE_CHECKING:
    from shardctl.cli.kafka_admin import TopicState
    from shardctl.core.config import Settings
    from shardctl.core.records import ClusterConfig

app = typer.Typer(
    help="Initialise a cluster, or show its configuration.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


class ClusterTransport(enum.StrEnum):
    """Where the events travel: `both` publishes to Kafka and NSQ."""

    kafka = "kafka"
    nsq = "nsq"
    both = "both"


async def _read_config(settings: Settings) -> tuple[ClusterConfig | None, int, str]:
    from shardctl.core.etcd import EtcdClient
    from shardctl.core.keyspace import Keyspace
    from shardctl.core.records import ClusterConfig

    key = Keyspace.of(settings).config
    async with EtcdClient(settings.etcd) as client:
        kv = await client.get(key)
    if kv is None:
        return None, 0, key
    return ClusterConfig.decode(kv.key, kv.value), kv.mod_revision, key


def _run(coro: Any) -> Any:
    from shardctl.core.etcd import EtcdError
    from shardctl.core.records import RecordError

    try:
        return asyncio.run(coro)
    except (EtcdError, RecordError) as exc:
        raise fail(str(exc), EXIT_FAILURE) from None


def config_conflicts(current: ClusterConfig, wanted: ClusterConfig) -> list[str]:
    """What differs between the stored and the requested config, one phrase each."""
    found = []
    if current.num_shards != wanted.num_shards:
        found.append(
            f"num_shards is {current.num_shards}, asked for {wanted.num_shards} "
            f"(change it with `shardctl shards set {wanted.num_shards}`)"
        )
    if sorted(current.topics) != sorted(wanted.topics):
        found.append(f"topics are {current.topics}, asked for {wanted.topics}")
    if current.transport != wanted.transport:
        found.append(f"transport is {current.transport}, asked for {wanted.transport}")
    return found


def topic_conflicts(
    states: dict[str, TopicState | None],
    partitions: int,
    replication_factor: int | None,
    min_insync_replicas: int | None,
) -> list[str]:
    """What an existing topic has that the request contradicts, one phrase each."""
    found = []
    for topic, state in sorted(states.items()):
        if state is None:
            continue
        if state.partitions != partitions:
            found.append(
                f"topic {topic} has {state.partitions} partitions, not {partitions} "
                "(partition = shard)"
            )
        if replication_factor is not None and state.replication_factor != replication_factor:
            found.append(
                f"topic {topic} has replication factor {state.replication_factor}, "
                f"not {replication_factor}"
            )
        if min_insync_replicas is not None and state.min_insync_replicas != min_insync_replicas:
            found.append(
                f"topic {topic} has min.insync.replicas={state.min_insync_replicas}, "
                f"not {min_insync_replicas}"
            )
    return found


@app.command("init")
def init(
    shards: Annotated[
        int, typer.Option("--shards", help="Number of shards (= Kafka partitions).", min=1)
    ],
    topic: Annotated[
        list[str] | None,
        typer.Option("--topic", help="A topic the workers consume; repeatable."),
    ] = None,
    transport: Annotated[
        ClusterTransport, typer.Option(help="Where the events travel.")
    ] = ClusterTransport.kafka,
    replication_factor: Annotated[
        int | None,
        typer.Option(help="Kafka: replicas of each new topic (default: the broker's).", min=1),
    ] = None,
    min_insync_replicas: Annotated[
        int | None,
        typer.Option(help="Kafka: min.insync.replicas of each new topic.", min=1),
    ] = None,
    config: ConfigOpt = None,
    cluster: ClusterOpt = None,
) -> None:
    """Set num_shards, topics and transport, and create the Kafka topics with one
    partition per shard. Idempotent; a conflicting change is refused (exit 2)."""
    from shardctl.cli.kafka_admin import KafkaUnavailable, create_topics, topic_states
    from shardctl.core.etcd import EtcdClient, ModRevisionIs, Put
    from shardctl.core.records import ClusterConfig

    settings = load(config, cluster)
    topics = list(dict.fromkeys(topic or []))
    if (
        replication_factor is not None
        and min_insync_replicas is not None
        and min_insync_replicas > replication_factor
    ):
        raise fail(
            f"--min-insync-replicas {min_insync_replicas} is more than --replication-factor "
            f"{replication_factor}: no write could ever succeed",
            EXIT_USAGE,
        )
    wanted = ClusterConfig(
        num_shards=shards, topics=topics, transport=transport.value, shard_hash="jump"
    )
    current, mod_revision, key = _run(_read_config(settings))
    if current is not None:
        conflicts = config_conflicts(current, wanted)
        if conflicts:
            raise fail(
                f"cluster {settings.cluster!r} is already initialised ({key}) and differs: "
                + "; ".join(conflicts)
                + ". Nothing changed.",
                EXIT_USAGE,
            )
    if transport != ClusterTransport.nsq and topics:
        try:
            states = topic_states(settings, topics)
            conflicts = topic_conflicts(states, shards, replication_factor, min_insync_replicas)
            if conflicts:
                raise fail(
                    "; ".join(conflicts) + f". Nothing changed in cluster {settings.cluster!r}.",
                    EXIT_USAGE,
                )
            missing = [t for t, state in states.items() if state is None]
            create_topics(settings, missing, shards, replication_factor, min_insync_replicas)
        except KafkaUnavailable as exc:
            raise fail(f"{exc}; cluster {settings.cluster!r} not initialised") from None
        for name in missing:
            typer.echo(f"topic {name}: created with {shards} partitions")
        for name in sorted(set(topics) - set(missing)):
            typer.echo(f"topic {name}: exists with {shards} partitions")
    if current is not None:
        typer.echo(f"cluster {settings.cluster!r}: already initialised; nothing to change")
        return

    async def write() -> bool:
        async with EtcdClient(settings.etcd) as client:
            ok, _ = await client.txn(
                [ModRevisionIs(key, mod_revision)], [Put(key, wanted.encode())]
            )
            return bool(ok)

    if not _run(write()):
        raise fail(f"{key} was written by someone else meanwhile; run the command again")
    typer.echo(
        f"cluster {settings.cluster!r}: initialised with num_shards={shards}, "
        f"topics={topics}, transport={transport.value}"
    )


@app.command("show")
def show(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    config: ConfigOpt = None,
    cluster: ClusterOpt = None,
) -> None:
    """The cluster's config (num_shards, topics, transport) and, on Kafka, each
    topic's partitions, replication factor and min.insync.replicas."""
    from shardctl.cli.kafka_admin import KafkaUnavailable, topic_states

    settings = load(config, cluster)
    current, _, key = _run(_read_config(settings))
    if current is None:
        raise fail(
            f"cluster {settings.cluster!r} is not initialised ({key} is absent): "
            "run `shardctl cluster init --shards N --topic T`"
        )
    topics: dict[str, Any] = {}
    kafka_error = None
    if current.transport in ("kafka", "both") and current.topics:
        try:
            for name, state in topic_states(settings, current.topics).items():
                topics[name] = (
                    None
                    if state is None
                    else {
                        "partitions": state.partitions,
                        "replication_factor": state.replication_factor,
                        "min_insync_replicas": state.min_insync_replicas,
                    }
                )
        except KafkaUnavailable as exc:
            kafka_error = str(exc)
    data = {
        "cluster": settings.cluster,
        "config": current.model_dump(),
        "kafka_topics": topics,
        "kafka_error": kafka_error,
    }
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        typer.echo(f"cluster     {settings.cluster}")
        typer.echo(f"num_shards  {current.num_shards}")
        typer.echo(f"transport   {current.transport}")
        typer.echo(f"shard hash  {current.shard_hash}")
        typer.echo(f"topics      {', '.join(current.topics) or 'none'}")
        for name, state in topics.items():
            what = (
                "missing"
                if state is None
                else f"{state['partitions']} partitions, replication factor "
                f"{state['replication_factor']}, min.insync.replicas "
                f"{state['min_insync_replicas']}"
            )
            typer.echo(f"  {name}: {what}")
        if kafka_error:
            typer.echo(f"kafka       {kafka_error}")
    if kafka_error:
        raise typer.Exit(EXIT_FAILURE)
