"""Coordination commands: run a coordinator or a worker, and operate the cluster.

shardctl coordinator run     one coordinator replica (one of them leads)
shardctl worker run          one worker running a handler or a built-in sink
shardctl status [--json]     workers, shards per worker, generation, leader
shardctl drain <worker>      move a worker's shards away, then it exits
shardctl undrain <worker>    cancel a drain still in progress; the worker stays
shardctl shards set N        change the shard count (see `set_shards`)
shardctl shards place        per-shard weights and label affinity (see `place_shards`)
shardctl maintenance on|off  freeze the assignment (no moves at all), or thaw it
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from shardctl.cli.common import (
    EXIT_FAILURE,
    EXIT_USAGE,
    ClusterOpt,
    ConfigOpt,
    LogJsonOpt,
    LogLevel,
    LogLevelOpt,
    MetricsPortOpt,
    Transport,
    fail,
    load,
    start_process,
)

if TYPE_CHECKING:
    from shardctl.config import Settings
    from shardctl.records import ClusterConfig

coordinator_app = typer.Typer(
    help="The coordinator: leader election and assignment.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
worker_app = typer.Typer(help="Shard workers.", no_args_is_help=True, rich_markup_mode=None)
shards_app = typer.Typer(
    help="The shard count, weights and affinity.", no_args_is_help=True, rich_markup_mode=None
)
maintenance_app = typer.Typer(
    help="Maintenance mode: freeze the assignment, even for dead workers.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def _fail(message: str, code: int = EXIT_FAILURE) -> typer.Exit:
    return fail(message, code)


def _settings(config: Path | None, cluster: str | None) -> Settings:
    return load(config, cluster)


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a command's coroutine; etcd and record errors end the command with exit 1."""
    from shardctl.etcd import EtcdError
    from shardctl.records import RecordError

    try:
        return asyncio.run(coro)
    except (EtcdError, RecordError) as exc:
        raise _fail(str(exc)) from None


def _check_name(what: str, name: str) -> str:
    from shardctl.keyspace import check_name

    try:
        return check_name(what, name)
    except ValueError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None


def _default_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


# -- coordinator run -----------------------------------------------------------


@coordinator_app.command("run")
def coordinator_run(
    coordinator_id: Annotated[
        str | None, typer.Option("--id", help="Replica id (default host-pid).")
    ] = None,
    ttl: Annotated[int, typer.Option(help="Lease TTL in seconds.", min=2)] = 10,
    stabilization: Annotated[
        float,
        typer.Option(help="Seconds the member set must be quiet before a rebalance.", min=0),
    ] = 1.0,
    max_moves: Annotated[
        int | None, typer.Option(help="Churn budget: most shards moved per generation.", min=1)
    ] = None,
    metrics_port: MetricsPortOpt = 0,
    config: ConfigOpt = None,
    cluster: ClusterOpt = None,
    log_json: LogJsonOpt = False,
    log_level: LogLevelOpt = LogLevel.INFO,
) -> None:
    """Run one coordinator replica. One replica leads and writes the assignment;
    the others stand by (both are ready on /readyz)."""
    from coordinator.service import Coordinator, CoordinatorOptions
    from shardctl import health
    from shardctl.aio import install_stop_signals

    settings = _settings(config, cluster)
    options = CoordinatorOptions(
        coordinator_id=_check_name("coordinator id", coordinator_id or _default_id()),
        ttl=ttl,
        stabilization_s=stabilization,
        max_moves=max_moves,
    )
    start_process("coordinator", log_level, log_json, metrics_port)

    async def main() -> None:
        coordinator = Coordinator(settings, options)
        task = asyncio.current_task()
        assert task is not None
        install_stop_signals(coordinator.stop_requested.set, lambda: _cancel(task))
        ticker = asyncio.ensure_future(health.run_ticker())
        try:
            await coordinator.run()
        finally:
            ticker.cancel()

    _run_forever(main())


HARD_STOP_GRACE_S = 5.0


def _cancel(task: asyncio.Task[Any]) -> None:
    """Second stop signal: cancel now, and exit regardless after a short grace period.
    Leases then end by expiry, exactly as after a crash, so nothing is left unsafe."""
    task.cancel()
    timer = threading.Timer(HARD_STOP_GRACE_S, os._exit, args=(1,))
    timer.daemon = True
    timer.start()


def _run_forever(coro: Coroutine[Any, Any, None]) -> None:
    try:
        _run(coro)
    except asyncio.CancelledError:
        raise typer.Exit(EXIT_FAILURE) from None


# -- worker run ----------------------------------------------------------------


def _key_values(flag: str, items: list[str]) -> dict[str, str]:
    """`key=value` flags (--label, --handler-option) as a dict; a bad one names its flag."""
    values = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise _fail(f"{flag} {item!r}: expected key=value", EXIT_USAGE)
        values[key] = value
    return values


async def _configured_topics(settings: Settings) -> list[str]:
    from shardctl.etcd import EtcdClient
    from shardctl.keyspace import Keyspace
    from shardctl.records import ClusterConfig

    keys = Keyspace.of(settings)
    async with EtcdClient(settings.etcd) as client:
        kv = await client.get(keys.config)
    return ClusterConfig.decode(kv.key, kv.value).topics if kv else []


NOOP_HANDLER = "noop"


@worker_app.command("run")
def worker_run(
    handler: Annotated[
        str,
        typer.Option(
            help="What runs on each event: `module:callable` (a function or a class with "
            "on_event/on_events), or a built-in sink: stdout, sql, postgres, kafka. `noop` "
            "reads no transport: it counts synthetic events into offsets under the topic "
            "`noop`, to exercise ownership only (tests, benchmarks).",
            show_default=False,
        ),
    ],
    transport: Annotated[
        Transport, typer.Option(help="Where events come from: kafka (replayable, ordered) or nsq.")
    ] = Transport.kafka,
    topic: Annotated[
        list[str] | None,
        typer.Option(help="Source topic; repeatable. Default: `topics` of the cluster config."),
    ] = None,
    handler_option: Annotated[
        list[str] | None,
        typer.Option(help="key=value passed to the handler (e.g. database=app); repeatable."),
    ] = None,
    worker_id: Annotated[
        str | None,
        typer.Option("--id", help="Worker id (or SHARDCTL_WORKER_ID; default host-pid)."),
    ] = None,
    capacity: Annotated[int, typer.Option(help="Relative capacity (weight).", min=1)] = 1,
    label: Annotated[
        list[str] | None,
        typer.Option(help="key=value label; repeatable. Shard affinity matches on labels."),
    ] = None,
    zone: Annotated[
        str | None,
        typer.Option(help="The worker's zone (label zone=Z): a group's shards spread over zones."),
    ] = None,
    ttl: Annotated[int, typer.Option(help="Lease TTL in seconds.", min=2)] = 10,
    restart_grace: Annotated[
        float,
        typer.Option(
            help="If this worker dies or stops, the coordinator keeps its shards reserved "
            "this many seconds for it to come back under the same --id (SIGTERM then "
            "releases them without draining); 0 = off.",
            min=0,
        ),
    ] = 0.0,
    commit_interval: Annotated[
        float, typer.Option(help="Seconds between fenced offset commits.", min=0.05)
    ] = 1.0,
    drain_timeout: Annotated[
        float,
        typer.Option(
            help="Give up waiting for the coordinator after this many "
            "seconds of draining, release everything and exit.",
            min=0,
        ),
    ] = 60.0,
    tick: Annotated[
        float, typer.Option(help="--handler noop: seconds per synthetic event.", min=0.01)
    ] = 0.2,
    event_log: Annotated[
        Path | None,
        typer.Option(help="--handler noop: append one JSON line per handled event here."),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(help="Events handed to the handler at most per call.", min=1)
    ] = 200,
    max_in_flight: Annotated[
        int,
        typer.Option(help="Records read ahead per shard; at least the batch size.", min=1),
    ] = 1000,
    metrics_port: MetricsPortOpt = 0,
    config: ConfigOpt = None,
    cluster: ClusterOpt = None,
    log_json: LogJsonOpt = False,
    log_level: LogLevelOpt = LogLevel.INFO,
) -> None:
    """Run one worker: it registers under a lease, owns the shards the coordinator
    assigns it, and feeds their events to the handler. SIGTERM drains it (its shards
    move away with fenced handoff, then it exits); a second SIGTERM stops it at once.
    """
    from shardctl import health
    from shardctl.aio import install_stop_signals
    from shardctl.config import ConfigError
    from workers.worker import Worker, WorkerOptions

    settings = _settings(config, cluster)
    wid = _check_name("worker id", worker_id or os.environ.get(WORKER_ID_ENV) or _default_id())
    labels = _key_values("--label", label or [])
    if zone is not None:
        if not zone:
            raise _fail("--zone: expected a zone name", EXIT_USAGE)
        if labels.get("zone", zone) != zone:
            raise _fail(f"--zone {zone!r} and --label zone={labels['zone']!r} disagree", EXIT_USAGE)
        labels["zone"] = zone
    options = WorkerOptions(
        worker_id=wid,
        capacity=capacity,
        labels=labels,
        restart_grace_s=restart_grace,
        ttl=ttl,
        commit_interval_s=commit_interval,
        drain_timeout_s=drain_timeout,
        metrics_port=metrics_port,
    )
    handler_options = _key_values("--handler-option", handler_option or [])
    # The worker serves its own /metrics port (it closes it when it returns).
    start_process("worker", log_level, log_json, None)

    async def run(worker: Worker) -> None:
        task = asyncio.current_task()
        assert task is not None
        install_stop_signals(worker.stop_requested.set, lambda: _cancel(task))
        ticker = asyncio.ensure_future(health.run_ticker())
        try:
            await worker.run()
        finally:
            ticker.cancel()

    async def with_noop_handler() -> None:
        from workers.noop_handler import NoopHandler

        noop = NoopHandler(wid, tick_s=tick, event_log=event_log)
        try:
            await run(Worker(settings, options, noop))
        finally:
            noop.close()

    async def with_handler(spec: str) -> None:
        from workers.handlers import HandlerError
        from workers.pipeline import ConsumeOptions, consuming_worker

        topics = tuple(topic or await _configured_topics(settings))
        consume = ConsumeOptions(
            handler=spec,
            transport=transport.value,
            topics=topics,
            handler_options=handler_options,
            batch_size=batch_size,
            max_in_flight=max(max_in_flight, batch_size),
        )
        try:
            async with consuming_worker(settings, options, consume) as worker:
                await run(worker)
        except (ConfigError, HandlerError) as exc:
            raise _fail(str(exc), EXIT_USAGE) from None

    _run_forever(with_noop_handler() if handler == NOOP_HANDLER else with_handler(handler))


# -- worker forget-stream ----------------------------------------------------------


@worker_app.command("forget-stream")
def forget_stream(
    shard: Annotated[int, typer.Option(help="The shard the SQL sink stopped.", min=0)],
    topic: Annotated[str, typer.Option(help="The topic named in the error.")],
    stream: Annotated[str, typer.Option(help="The stream named in the error.")],
    handler: Annotated[
        str, typer.Option(help="The sink that stopped the shard: sql or postgres.")
    ] = "sql",
    handler_option: Annotated[
        list[str] | None,
        typer.Option(help="The SQL sink's key=value options, as given to `worker run`."),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    config: ConfigOpt = None,
    cluster: ClusterOpt = None,
) -> None:
    """Make a SQL sink forget what it applied of one source stream of a shard's topic.

    For a shard the sink stopped because the source's position went backwards (RESET
    MASTER, a restore, binlog renumbering): once the source is checked, the shard
    applies the stream's changes from its next batch on, whatever their position.
    """
    from shardctl.config import ConfigError
    from workers.handlers import HandlerContext
    from workers.sinks.postgres import PostgresSink
    from workers.sinks.sql import SqlSink

    sinks: dict[str, type[SqlSink]] = {"sql": SqlSink, "postgres": PostgresSink}
    if handler not in sinks:
        raise _fail(f"--handler {handler!r}: expected sql or postgres", EXIT_USAGE)
    settings = _settings(config, cluster)
    options = _key_values("--handler-option", handler_option or [])
    try:
        sink = sinks[handler](HandlerContext(settings=settings, options=options))
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    what = f"{handler} sink {sink.scope}: shard {shard} topic {topic} stream {stream}"
    if not yes and not typer.confirm(
        f"{what}: forget the applied record? Changes of the stream at or below its "
        "stored position are then applied again",
        default=False,
    ):
        raise _fail("nothing changed")
    try:
        deleted = sink.forget_stream(shard, topic, stream)
    except sink.dialect.driver_errors as exc:
        raise _fail(f"{what}: {type(exc).__name__}: {exc}") from None
    finally:
        sink.on_close()
    typer.echo(f"{what}: forgot {deleted} record(s)")


# -- status --------------------------------------------------------------------


async def collect_status(settings: Settings) -> dict[str, Any]:
    """Everything `status` shows, as plain data (this is the --json document)."""
    from shardctl.etcd import EtcdClient
    from shardctl.keyspace import Keyspace
    from shardctl.records import Assignment, ClusterConfig, Maintenance, WorkerRecord

    keys = Keyspace.of(settings)
    async with EtcdClient(settings.etcd) as client:
        workers = await client.get_prefix(keys.workers_prefix)
        owners = await client.get_prefix(keys.owners_prefix)
        leader = await client.get(keys.coordinator_leader)
        assignment_kv = await client.get(keys.assignment)
        config_kv = await client.get(keys.config)
        maintenance_kv = await client.get(keys.maintenance)
    maintenance = (
        Maintenance.decode(maintenance_kv.key, maintenance_kv.value) if maintenance_kv else None
    )
    assignment = (
        Assignment.decode(assignment_kv.key, assignment_kv.value) if assignment_kv else None
    )
    config = ClusterConfig.decode(config_kv.key, config_kv.value) if config_kv else None
    owned: dict[str, list[int]] = {}
    owner_of: dict[int, str] = {}
    for kv in owners.items:
        shard = keys.shard_of_owner_key(kv.key)
        owner_of[shard] = kv.value.decode()
        owned.setdefault(kv.value.decode(), []).append(shard)
    rows = []
    for kv in workers.items:
        wid = keys.worker_id_of(kv.key)
        record = WorkerRecord.decode(kv.key, kv.value)
        rows.append(
            {
                "id": wid,
                "state": record.state,
                "capacity": record.capacity,
                "labels": record.labels,
                "restart_grace": record.restart_grace,
                "host": record.host,
                "pid": record.pid,
                "assigned": sorted(assignment.shards_of(wid)) if assignment else [],
                "owned": sorted(owned.get(wid, [])),
            }
        )
    from coordinator.placement import unplaceable_shards
    from coordinator.writer import members_from

    unplaceable = (
        unplaceable_shards(
            members_from(keys, {kv.key: kv for kv in workers.items}),
            config.num_shards,
            config.affinity,
        )
        if config is not None and config.affinity
        else []
    )
    registered = {keys.worker_id_of(kv.key) for kv in workers.items}
    absent: dict[str, list[int]] = {}
    if assignment is not None:
        for shard, target in enumerate(assignment.owners):
            if target is not None and target not in registered:
                absent.setdefault(target, []).append(shard)
    in_handoff = []
    unassigned = []
    if assignment is not None:
        for shard, target in enumerate(assignment.owners):
            if target is None:
                unassigned.append(shard)
            elif owner_of.get(shard) != target:
                in_handoff.append(shard)
    return {
        "cluster": settings.cluster,
        "leader": None
        if leader is None
        else {
            "id": leader.value.decode(),
            "token": leader.create_revision,
        },
        "generation": assignment.generation if assignment else None,
        "num_shards": assignment.num_shards if assignment else None,
        "config": None if config is None else config.model_dump(),
        "maintenance": None if maintenance is None else maintenance.model_dump(),
        "workers": rows,
        "unassigned": unassigned,
        "unplaceable": unplaceable,
        "absent_owners": absent,
        "in_handoff": in_handoff,
    }


def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    watch: Annotated[
        bool, typer.Option("--watch", help="A live view, refreshed until Ctrl-C.")
    ] = False,
    interval: Annotated[
        float, typer.Option(help="Seconds between refreshes with --watch.", min=0.2)
    ] = 1.0,
    topic: Annotated[
        str | None,
        typer.Option(
            help="Kafka topic for lag per shard with --watch (default: the only topic "
            "of the cluster config, if there is exactly one)."
        ),
    ] = None,
    config: ConfigOpt = None,
    cluster: ClusterOpt = None,
) -> None:
    """Workers, shards per worker, generation and leader; --watch for a live view
    with lag per shard, events/s and rebalances."""
    from shardctl.cli.live import shard_ranges

    settings = _settings(config, cluster)
    if watch:
        _run(watch_status(settings, topic, interval))
        return
    data = _run(collect_status(settings))
    if as_json:
        from shardctl.cli.offsets import status_offsets

        kafka_errors: dict[str, str] = {}
        data["shards"] = _run(status_offsets(settings, data, kafka_errors))
        data["kafka_errors"] = kafka_errors
        for error in kafka_errors.values():
            typer.secho(f"warning: offsets and lag: {error}", fg=typer.colors.YELLOW, err=True)
        typer.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    leader = data["leader"]
    if data["maintenance"] is not None:
        typer.secho(maintenance_banner(data["maintenance"]), fg=typer.colors.RED, bold=True)
    typer.echo(f"cluster     {data['cluster']}")
    leader_text = f"{leader['id']} (token {leader['token']})" if leader else "none"
    typer.echo(f"leader      {leader_text}")
    typer.echo(f"generation  {data['generation'] if data['generation'] is not None else 'none'}")
    cfg = data["config"]
    typer.echo(
        f"shards      {data['num_shards']} assigned"
        f" / {cfg['num_shards'] if cfg else 'no config'} configured"
    )
    typer.echo(f"unassigned  {shard_ranges(data['unassigned'])}")
    if data["unplaceable"]:
        typer.secho(
            f"unplaceable {shard_ranges(data['unplaceable'])}: their affinity matches no "
            "active worker's labels (`shardctl shards place` without flags shows it)",
            fg=typer.colors.RED,
        )
    typer.echo(f"in handoff  {shard_ranges(data['in_handoff'])}")
    for wid, shards in sorted(data["absent_owners"].items()):
        typer.echo(
            f"absent      {wid} is not registered but assigned {shard_ranges(shards)} "
            "(restart grace, maintenance, or about to move)"
        )
    typer.echo("")
    typer.echo(
        f"{'WORKER':<28} {'STATE':<9} {'CAP':>3} {'ZONE':<8} {'GRACE':>6} "
        f"{'ASSIGNED':>8} {'OWNED':>5}  SHARDS"
    )
    for row in data["workers"]:
        grace = f"{row['restart_grace']:g}s" if row["restart_grace"] else "off"
        typer.echo(
            f"{row['id']:<28} {row['state']:<9} {row['capacity']:>3} "
            f"{row['labels'].get('zone', '-'):<8} "
            f"{grace:>6} "
            f"{len(row['assigned']):>8} {len(row['owned']):>5}  "
            f"{shard_ranges(row['owned'])}"
        )


async def watch_status(settings: Settings, topic: str | None, interval: float) -> None:
    """Redraw the live view every `interval` seconds until Ctrl-C."""
    from rich.live import Live

    from shardctl.cli.live import LiveView, take_snapshot
    from shardctl.etcd import EtcdClient
    from shardctl.keyspace import Keyspace
    from shardctl.records import ClusterConfig

    if topic is None:
        keys = Keyspace.of(settings)
        async with EtcdClient(settings.etcd) as client:
            kv = await client.get(keys.config)
        topics = ClusterConfig.decode(kv.key, kv.value).topics if kv else []
        topic = topics[0] if len(topics) == 1 else None
    view = LiveView(f"shardctl status --watch ({settings.cluster})")
    try:
        with Live(view.update(await take_snapshot(settings, topic)), auto_refresh=False) as live:
            while True:
                await asyncio.sleep(interval)
                live.update(view.update(await take_snapshot(settings, topic)), refresh=True)
    except (KeyboardInterrupt, asyncio.CancelledError):
        return


# -- maintenance -----------------------------------------------------------------


def maintenance_banner(record: dict[str, Any]) -> str:
    """The loud line `status` and `doctor` show while maintenance mode is on."""
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(record["since"]))
    reason = f" ({record['reason']})" if record.get("reason") else ""
    return (
        f"MAINTENANCE MODE ON since {since}{reason}: the assignment is frozen, no shard "
        "moves, not even away from dead workers. `shardctl maintenance off` to resume"
    )


@maintenance_app.command("on")
def maintenance_on(
    reason: Annotated[str, typer.Option(help="Shown in `status` and `doctor`.")] = "",
    config: ConfigOpt = None,
    cluster: ClusterOpt = None,
) -> None:
    """Freeze the assignment: the coordinator writes no new generation until `off`.
    Shards of a worker that dies stay assigned to it (unprocessed); new workers get
    nothing; a drain does not complete. Once this returns, no generation lands."""
    from shardctl.etcd import EtcdClient
    from shardctl.keyspace import Keyspace
    from shardctl.records import Assignment, Maintenance

    settings = _settings(config, cluster)
    keys = Keyspace.of(settings)
    record = Maintenance(since=time.time(), reason=reason)

    async def main() -> tuple[bool, int | None]:
        async with EtcdClient(settings.etcd) as client:
            created = await client.create_if_absent(keys.maintenance, record.encode())
            kv = await client.get(keys.assignment)
        generation = Assignment.decode(kv.key, kv.value).generation if kv else None
        return created.created, generation

    created, generation = _run(main())
    frozen_at = f"generation {generation}" if generation is not None else "no assignment yet"
    typer.echo(
        f"maintenance mode {'on' if created else 'was already on'}: assignment frozen "
        f"at {frozen_at}"
    )


@maintenance_app.command("off")
def maintenance_off(config: ConfigOpt = None, cluster: ClusterOpt = None) -> None:
    """Resume assigning: the coordinator computes the next generation from the
    members of this moment (dead workers' shards move then)."""
    from shardctl.etcd import EtcdClient
    from shardctl.keyspace import Keyspace

    settings = _settings(config, cluster)
    keys = Keyspace.of(settings)

    async def main() -> bool:
        async with EtcdClient(settings.etcd) as client:
            if await client.get(keys.maintenance) is None:
                return False
            await client.delete(keys.maintenance)
            return True

    deleted = _run(main())
    typer.echo("maintenance mode off" if deleted else "maintenance mode was not on")


# -- drain ---------------------------------------------------------------------


WORKER_ID_ENV = "SHARDCTL_WORKER_ID"


def drain(
    worker: Annotated[
        str | None,
        typer.Argument(help="Worker id, as in `shardctl status` (or --self).", show_default=False),
    ] = None,
    self_: Annotated[
        bool,
        typer.Option(
            "--self",
            help=f"Drain the worker whose id is in ${WORKER_ID_ENV} (a pod's preStop hook).",
        ),
    ] = False,
    wait: Annotated[bool, typer.Option(help="Wait until the worker has left.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.", min=0)] = 120.0,
    config: ConfigOpt = None,
    cluster: ClusterOpt = None,
) -> None:
    """Mark a worker draining: the coordinator moves its shards away, then it exits."""
    from shardctl.etcd import EtcdClient, EtcdError
    from shardctl.keyspace import Keyspace
    from workers.membership import request_drain

    if self_ == (worker is not None):
        raise _fail("give a worker id or --self (one of them)", EXIT_USAGE)
    if self_:
        worker = os.environ.get(WORKER_ID_ENV, "")
        if not worker:
            raise _fail(f"--self: {WORKER_ID_ENV} is not set", EXIT_USAGE)
    assert worker is not None
    settings = _settings(config, cluster)
    keys = Keyspace.of(settings)
    key = keys.worker(_check_name("worker id", worker))

    async def main() -> bool:
        async with EtcdClient(settings.etcd) as client:
            changed = await request_drain(client, keys, worker)
            if wait:
                deadline = asyncio.get_running_loop().time() + timeout
                while await client.get(key) is not None:
                    if asyncio.get_running_loop().time() > deadline:
                        raise EtcdError(
                            f"drain {worker}: still registered at {key} after {timeout}s"
                        )
                    await asyncio.sleep(0.2)
            return changed

    changed = _run(main())
    typer.echo(
        f"{worker}: {'draining' if changed else 'already draining'}"
        f"{'; it has left' if wait else ''}"
    )


def undrain(
    worker: Annotated[str, typer.Argument(help="Worker id, as in `shardctl status`.")],
    config: ConfigOpt = None,
    cluster: ClusterOpt = None,
) -> None:
    """Cancel a drain still in progress: the worker becomes active again and keeps (or
    gets back) shards. A drained worker has already exited; a worker stopping on
    SIGTERM keeps stopping."""
    from shardctl.etcd import EtcdClient
    from shardctl.keyspace import Keyspace
    from workers.membership import request_undrain

    settings = _settings(config, cluster)
    keys = Keyspace.of(settings)
    try:
        keys.worker(worker)
    except ValueError as exc:
        raise _fail(str(exc)) from None

    async def main() -> bool:
        async with EtcdClient(settings.etcd) as client:
            return await request_undrain(client, keys, worker)

    changed = _run(main())
    typer.echo(f"{worker}: {'active again' if changed else 'was not draining'}")


async def _read_cluster_config(settings: Settings) -> tuple[ClusterConfig | None, int]:
    """The cluster's config record and its mod_revision (None, 0 when there is none)."""
    from shardctl.etcd import EtcdClient
    from shardctl.keyspace import Keyspace
    from shardctl.records import ClusterConfig

    key = Keyspace.of(settings).config
    async with EtcdClient(settings.etcd) as client:
        kv = await client.get(key)
    if kv is None:
        return None, 0
    return ClusterConfig.decode(kv.key, kv.value), kv.mod_revision


# -- shards set ------------------------------------------------------------------


def kafka_partition_counts(settings: Settings, topics: list[str]) -> dict[str, int | None]:
    """Partitions per topic (None: the topic does not exist); KafkaUnavailable names
    the brokers when they do not answer."""
    from shardctl.cli.kafka_admin import partition_counts

    return partition_counts(settings, topics)


@shards_app.command("set")
def set_shards(
    num_shards: Annotated[int, typer.Argument(help="The new shard count.", min=1)],
    config: ConfigOpt = None,
    cluster: ClusterOpt = None,
) -> None:
    """Change the shard count in the cluster's `config` key.

    What happens: if the transport is Kafka, every configured topic that exists must
    already have exactly N partitions (partition = shard), or the command refuses and
    changes nothing. Then `config.num_shards` becomes N, in a txn guarded against a
    concurrent edit. N is at most 294864, the most shards one assignment (one etcd
    value) holds. The leading coordinator writes a new generation for N shards:
    shards below min(old, new) keep their owners, new shards are assigned to the
    least-loaded workers, and owners of removed shards release them. A message's
    shard is crc32(key) % N, so keys change shards: stop producers and let workers
    drain first if per-key order must hold across the change.
    """
    from shardctl.cli.kafka_admin import KafkaUnavailable
    from shardctl.etcd import EtcdClient, ModRevisionIs, Put
    from shardctl.keyspace import Keyspace
    from shardctl.records import (
        ASSIGNMENT_MAX_BYTES,
        ASSIGNMENT_WORKER_TABLE_BYTES,
        MAX_SHARDS,
        ClusterConfig,
    )

    if num_shards > MAX_SHARDS:
        raise _fail(
            f"cannot set num_shards to {num_shards}: the assignment holds at most "
            f"{MAX_SHARDS} shards (one etcd value of at most {ASSIGNMENT_MAX_BYTES} bytes, "
            f"{ASSIGNMENT_WORKER_TABLE_BYTES} of them kept for worker ids); "
            "shard count unchanged",
            EXIT_USAGE,
        )
    settings = _settings(config, cluster)
    keys = Keyspace.of(settings)

    current, mod_revision = _run(_read_cluster_config(settings))
    if current is not None and current.num_shards == num_shards:
        typer.echo(f"num_shards is already {num_shards}; nothing to do")
        return
    topics = current.topics if current else []
    transport = current.transport if current else "kafka"
    if not topics:
        typer.echo(f"no topics configured in {keys.config}: no Kafka partitions to check")
    elif transport in ("kafka", "both"):
        try:
            counts = kafka_partition_counts(settings, topics)
        except KafkaUnavailable as exc:
            raise _fail(f"{exc}; shard count unchanged") from None
        wrong = {t: n for t, n in counts.items() if n is not None and n != num_shards}
        if wrong:
            detail = ", ".join(f"{t} has {n}" for t, n in sorted(wrong.items()))
            raise _fail(
                f"cannot set num_shards to {num_shards}: Kafka partition = shard, and {detail} "
                f"partition(s). Partitions can only grow (kafka-topics --alter "
                f"--partitions {num_shards}); shard count unchanged"
            )
        for topic in sorted(t for t, n in counts.items() if n is None):
            typer.echo(f"topic {topic} does not exist yet: create it with {num_shards} partitions")

    updated = (current or ClusterConfig(num_shards=num_shards)).model_copy(
        update={"num_shards": num_shards}
    )

    async def write() -> bool:
        async with EtcdClient(settings.etcd) as client:
            ok, _ = await client.txn(
                [ModRevisionIs(keys.config, mod_revision)],
                [Put(keys.config, updated.encode())],
            )
            return ok

    if not _run(write()):
        raise _fail(f"{keys.config} changed while checking; run the command again")
    old = current.num_shards if current else "unset"
    typer.echo(f"num_shards: {old} -> {num_shards}; the coordinator writes the new assignment")


# -- shards place ------------------------------------------------------------------


def parse_shard_range(flag: str, text: str, num_shards: int) -> range:
    """`7` or `0-15` as a range of shards below `num_shards`; ValueError names the flag."""
    first, sep, last = text.partition("-")
    try:
        low = int(first)
        high = int(last) if sep else low
    except ValueError:
        raise ValueError(f"{flag}: {text!r} is not a shard or a range like 0-15") from None
    if low < 0 or high < low:
        raise ValueError(f"{flag}: {text!r} is not a shard or a range like 0-15")
    if high >= num_shards:
        raise ValueError(f"{flag}: shard {high} does not exist (num_shards is {num_shards})")
    return range(low, high + 1)


def apply_placement(
    current: ClusterConfig,
    weight_flags: list[str],
    affinity_flags: list[str],
    reset: bool,
) -> ClusterConfig:
    """`current` with the --weight RANGE=W and --affinity RANGE:key=value flags applied
    (after clearing both maps with `reset`); ValueError says which flag is malformed."""
    n = current.num_shards
    weights = {} if reset else dict(current.weights)
    affinity = {} if reset else {s: dict(labels) for s, labels in current.affinity.items()}
    for flag in weight_flags:
        where, sep, value = flag.partition("=")
        if not sep:
            raise ValueError(f"--weight {flag!r}: expected SHARDS=WEIGHT, e.g. 0-3=5")
        shards = parse_shard_range(f"--weight {flag!r}", where, n)
        try:
            weight = int(value)
        except ValueError:
            raise ValueError(f"--weight {flag!r}: weight {value!r} is not a whole number") from None
        if weight < 1:
            raise ValueError(f"--weight {flag!r}: weight must be >= 1, got {weight}")
        for shard in shards:
            if weight == 1:
                weights.pop(shard, None)  # 1 is the default
            else:
                weights[shard] = weight
    for flag in affinity_flags:
        where, sep, label = flag.partition(":")
        if not sep:
            raise ValueError(f"--affinity {flag!r}: expected SHARDS:key=value, e.g. 0-3:disk=ssd")
        shards = parse_shard_range(f"--affinity {flag!r}", where, n)
        if label == "":
            for shard in shards:  # `0-3:` clears the shards' affinity
                affinity.pop(shard, None)
            continue
        key, sep, value = label.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"--affinity {flag!r}: expected SHARDS:key=value, e.g. 0-3:disk=ssd")
        for shard in shards:
            affinity.setdefault(shard, {})[key] = value
    return current.model_copy(update={"weights": weights, "affinity": affinity})


@shards_app.command("place")
def place_shards(
    weight: Annotated[
        list[str] | None,
        typer.Option(help="SHARDS=WEIGHT, e.g. 0-3=5 (default weight 1); repeatable."),
    ] = None,
    affinity: Annotated[
        list[str] | None,
        typer.Option(
            help="SHARDS:key=value: only workers with that label may own them, e.g. "
            "0-3:disk=ssd; SHARDS: (nothing after the colon) clears it; repeatable."
        ),
    ] = None,
    reset: Annotated[
        bool, typer.Option("--reset", help="Clear all weights and affinity first.")
    ] = False,
    config: ConfigOpt = None,
    cluster: ClusterOpt = None,
) -> None:
    """Set per-shard weights and label affinity in the cluster's `config` key.

    The coordinator balances shards by weight and gives a shard only to a worker that
    carries every label of its affinity (`worker run --label k=v`, `--zone Z`). A shard
    no worker may own stays unassigned; `status` lists it. Malformed flags change
    nothing. With no flag, prints the current weights and affinity.
    """
    from shardctl.etcd import EtcdClient, ModRevisionIs, Put
    from shardctl.keyspace import Keyspace

    settings = _settings(config, cluster)
    keys = Keyspace.of(settings)

    current, mod_revision = _run(_read_cluster_config(settings))
    if current is None:
        raise _fail(f"no {keys.config} yet: run `shardctl shards set N` first")
    if not weight and not affinity and not reset:
        typer.echo(json.dumps({"weights": current.weights, "affinity": current.affinity}))
        return
    try:
        updated = apply_placement(current, weight or [], affinity or [], reset)
    except ValueError as exc:
        raise _fail(f"{exc}; nothing changed", EXIT_USAGE) from None

    async def write() -> bool:
        async with EtcdClient(settings.etcd) as client:
            ok, _ = await client.txn(
                [ModRevisionIs(keys.config, mod_revision)],
                [Put(keys.config, updated.encode())],
            )
            return ok

    if not _run(write()):
        raise _fail(f"{keys.config} changed while editing; run the command again")
    typer.echo(
        f"{len(updated.weights)} shard(s) with a weight other than 1, "
        f"{len(updated.affinity)} with an affinity; the coordinator places them"
    )
