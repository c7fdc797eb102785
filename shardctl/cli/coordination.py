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
import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from shardctl.cli.common import (
    EXIT_FAILURE,
    EXIT_USAGE,
    ClusterOpt,
    ConfigOpt,
    LivenessWindowOpt,
    LogJsonOpt,
    LogLevel,
    LogLevelOpt,
    MetricsPortOpt,
    Transport,
    fail,
    load,
    start_process,
)
from shardctl.core.health import DEFAULT_LIVENESS_WINDOW_S
from shardctl.core.runtime import WORKER_YOUNG_EVERY, collect_garbage_less_often

if TYPE_CHECKING:
    from shardctl.core.config import Settings
    from shardctl.core.records import ClusterConfig

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
    from shardctl.core.etcd import EtcdError
    from shardctl.core.records import RecordError

    try:
        return asyncio.run(coro)
    except (EtcdError, RecordError) as exc:
        raise _fail(str(exc)) from None


def _check_name(what: str, name: str) -> str:
    from shardctl.core.keyspace import check_name

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
    liveness_window: LivenessWindowOpt = DEFAULT_LIVENESS_WINDOW_S,
    config: ConfigOpt = None,
    cluster: ClusterOpt = None,
    log_json: LogJsonOpt = False,
    log_level: LogLevelOpt = LogLevel.INFO,
) -> None:
    """Run one coordinator replica. One replica leads and writes the assignment;
    the others stand by (both are ready on /readyz)."""
    from coordinator.service import Coordinator, CoordinatorOptions
    from shardctl.core import health
    from shardctl.core.aio import install_stop_signals

    settings = _settings(config, cluster)
    options = CoordinatorOptions(
        coordinator_id=_check_name("coordinator id", coordinator_id or _default_id()),
        ttl=ttl,
        stabilization_s=stabilization,
        max_moves=max_moves,
    )
    start_process("coordinator", log_level, log_json, metrics_port, liveness_window)

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
    from shardctl.core.etcd import EtcdClient
    from shardctl.core.keyspace import Keyspace
    from shardctl.core.records import ClusterConfig

    keys = Keyspace.of(settings)
    async with EtcdClient(settings.etcd) as client:
        kv = await client.get(keys.config)
    return ClusterConfig.decode(kv.key, kv.value).topics if kv else []


NOOP_HANDLER = "noop"


def _worker_help(text: str, name: str, default: object) -> str:
    """A `worker run` tuning flag's help: where else it is set, and its default (the
    config model's, which a unit test compares: importing the model here would make
    every `shardctl --help` pay for pydantic)."""
    return f"{text} (or [worker] {name} / SHARDCTL_WORKER_{name.upper()}; default {default})."


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
    label: Annotated[
        list[str] | None,
        typer.Option(help="key=value label; repeatable. Shard affinity matches on labels."),
    ] = None,
    zone: Annotated[
        str | None,
        typer.Option(help="The worker's zone (label zone=Z): a group's shards spread over zones."),
    ] = None,
    capacity: Annotated[
        int | None,
        typer.Option(help=_worker_help("Relative capacity (weight)", "capacity", 1), min=1),
    ] = None,
    ttl: Annotated[
        int | None, typer.Option(help=_worker_help("Lease TTL in seconds", "ttl", 10), min=2)
    ] = None,
    restart_grace: Annotated[
        float | None,
        typer.Option(
            help=_worker_help(
                "If this worker dies or stops, the coordinator keeps its shards reserved "
                "this many seconds for it to come back under the same --id (SIGTERM then "
                "releases them without draining); 0 = off",
                "restart_grace_s",
                0.0,
            ),
            min=0,
        ),
    ] = None,
    commit_interval: Annotated[
        float | None,
        typer.Option(
            help=_worker_help("Seconds between fenced offset commits", "commit_interval_s", 1.0),
            min=0.05,
        ),
    ] = None,
    drain_timeout: Annotated[
        float | None,
        typer.Option(
            help=_worker_help(
                "Give up waiting for the coordinator after this many seconds of draining, "
                "release everything and exit",
                "drain_timeout_s",
                60.0,
            ),
            min=0,
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(help=_worker_help("Most events per handler call", "batch_size", 200), min=1),
    ] = None,
    max_in_flight: Annotated[
        int | None,
        typer.Option(
            help=_worker_help(
                "Most events read ahead of the handler, per shard", "max_in_flight", 1000
            ),
            min=1,
        ),
    ] = None,
    retry_attempts: Annotated[
        int | None,
        typer.Option(
            help=_worker_help(
                "Tries of a failing event before it is dead-lettered", "retry_attempts", 5
            ),
            min=1,
        ),
    ] = None,
    retry_initial_delay: Annotated[
        float | None,
        typer.Option(
            help=_worker_help(
                "Seconds before the first retry; doubles per retry", "retry_initial_delay_s", 0.2
            ),
            min=0,
        ),
    ] = None,
    retry_max_delay: Annotated[
        float | None,
        typer.Option(
            help=_worker_help("Longest wait between tries, in seconds", "retry_max_delay_s", 10.0),
            min=0,
        ),
    ] = None,
    handler_threads: Annotated[
        int | None,
        typer.Option(
            help=_worker_help("Threads for blocking handlers and sinks", "handler_threads", 8),
            min=1,
        ),
    ] = None,
    dead_letter_template: Annotated[
        str | None,
        typer.Option(
            help=_worker_help(
                "Dead-letter topic of a source topic; only {topic} may appear",
                "dead_letter_template",
                "{topic}.dlq",
            )
        ),
    ] = None,
    create_dead_letter_topics: Annotated[
        bool | None,
        typer.Option(
            "--create-dead-letter-topics/--no-create-dead-letter-topics",
            help=_worker_help(
                "Create missing Kafka dead-letter topics at start",
                "create_dead_letter_topics",
                True,
            ),
            show_default=False,
        ),
    ] = None,
    nsq_channel: Annotated[
        str | None,
        typer.Option(
            help=_worker_help("NSQ channel; none means shardctl.<cluster>", "nsq_channel", None)
        ),
    ] = None,
    tick: Annotated[
        float, typer.Option(help="--handler noop: seconds per synthetic event.", min=0.01)
    ] = 0.2,
    event_log: Annotated[
        Path | None,
        typer.Option(help="--handler noop: append one JSON line per handled event here."),
    ] = None,
    metrics_port: MetricsPortOpt = 0,
    liveness_window: LivenessWindowOpt = DEFAULT_LIVENESS_WINDOW_S,
    config: ConfigOpt = None,
    cluster: ClusterOpt = None,
    log_json: LogJsonOpt = False,
    log_level: LogLevelOpt = LogLevel.INFO,
) -> None:
    """Run one worker: it registers under a lease, owns the shards the coordinator
    assigns it, and feeds their events to the handler. SIGTERM drains it (its shards
    move away with fenced handoff, then it exits); a second SIGTERM stops it at once.
    Its tuning lives in the [worker] section; these flags override it.
    """
    from shardctl.core import health
    from shardctl.core.aio import install_stop_signals
    from shardctl.core.config import ConfigError
    from workers.deadletters import dead_letter_topic
    from workers.worker import Worker, WorkerOptions

    flags: dict[str, Any] = {
        "capacity": capacity,
        "ttl": ttl,
        "restart_grace_s": restart_grace,
        "commit_interval_s": commit_interval,
        "drain_timeout_s": drain_timeout,
        "batch_size": batch_size,
        "max_in_flight": max_in_flight,
        "retry_attempts": retry_attempts,
        "retry_initial_delay_s": retry_initial_delay,
        "retry_max_delay_s": retry_max_delay,
        "handler_threads": handler_threads,
        "dead_letter_template": dead_letter_template,
        "create_dead_letter_topics": create_dead_letter_topics,
        "nsq_channel": nsq_channel,
    }
    settings = load(config, cluster, {"worker": flags})
    tuning = settings.worker
    try:
        dead_letter_topic(tuning.dead_letter_template, "topic")
    except ValueError as exc:
        raise _fail(f"worker.dead_letter_template: {exc}", EXIT_USAGE) from None
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
        capacity=tuning.capacity,
        labels=labels,
        restart_grace_s=tuning.restart_grace_s,
        ttl=tuning.ttl,
        commit_interval_s=tuning.commit_interval_s,
        drain_timeout_s=tuning.drain_timeout_s,
        metrics_port=metrics_port,
    )
    handler_options = _key_values("--handler-option", handler_option or [])
    # The worker serves its own /metrics port (it closes it when it returns).
    start_process("worker", log_level, log_json, None, liveness_window)

    async def run(worker: Worker) -> None:
        task = asyncio.current_task()
        assert task is not None
        install_stop_signals(worker.stop_requested.set, lambda: _cancel(task))
        await worker.run()

    @contextlib.asynccontextmanager
    async def ticking() -> AsyncIterator[None]:
        # From before the consumer is built: liveness holds while it waits for Kafka.
        ticker = asyncio.ensure_future(health.run_ticker())
        try:
            yield
        finally:
            ticker.cancel()

    async def with_noop_handler() -> None:
        from workers.noop_handler import NoopHandler

        noop = NoopHandler(wid, tick_s=tick, event_log=event_log)
        try:
            async with ticking():
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
            nsq_channel=tuning.nsq_channel,
            dead_letter_template=tuning.dead_letter_template,
            create_dead_letter_topics=tuning.create_dead_letter_topics,
            batch_size=tuning.batch_size,
            # A shard reads ahead at least one batch.
            max_in_flight=max(tuning.max_in_flight, tuning.batch_size),
            retry_attempts=tuning.retry_attempts,
            retry_initial_delay_s=tuning.retry_initial_delay_s,
            retry_max_delay_s=tuning.retry_max_delay_s,
            handler_threads=tuning.handler_threads,
        )
        try:
            async with ticking(), consuming_worker(settings, options, consume) as worker:
                await run(worker)
        except (ConfigError, HandlerError) as exc:
            raise _fail(str(exc), EXIT_USAGE) from None

    collect_garbage_less_often(WORKER_YOUNG_EVERY)  # see shardctl.core.runtime
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
    from shardctl.core.config import ConfigError
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
    with lag per shard, events/s and rebalances (a summary of the shards that need a
    look when they do not fit the screen)."""
    from shardctl.cli.read_model import read_status
    from shardctl.core.status import maintenance_banner, reshard_line, shard_ranges

    settings = _settings(config, cluster)
    if watch:
        from shardctl.cli.common import raise_on_interrupt
        from shardctl.cli.live import watch_status

        raise_on_interrupt()
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a watch ends
            _run(watch_status(settings, topic, interval))
        return
    state = _run(read_status(settings))
    if as_json:
        from shardctl.cli.offsets import status_offsets

        kafka_errors: dict[str, str] = {}
        data = state.to_json()
        data["shards"] = _run(status_offsets(settings, state, kafka_errors))
        data["kafka_errors"] = kafka_errors
        for error in kafka_errors.values():
            typer.secho(f"warning: offsets and lag: {error}", fg=typer.colors.YELLOW, err=True)
        typer.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    leader = state.leader
    if state.maintenance is not None:
        typer.secho(maintenance_banner(state.maintenance), fg=typer.colors.RED, bold=True)
    if state.resharding is not None:
        typer.secho(reshard_line(state.resharding), fg=typer.colors.YELLOW, bold=True)
    typer.echo(f"cluster     {state.cluster}")
    leader_text = f"{leader.id} (token {leader.token})" if leader else "none"
    typer.echo(f"leader      {leader_text}")
    typer.echo(f"generation  {state.generation if state.generation is not None else 'none'}")
    typer.echo(
        f"shards      {state.num_shards} assigned"
        f" / {state.config.num_shards if state.config else 'no config'} configured"
    )
    typer.echo(f"unassigned  {shard_ranges(state.unassigned)}")
    if state.unplaceable:
        typer.secho(
            f"unplaceable {shard_ranges(state.unplaceable)}: their affinity matches no "
            "active worker's labels (`shardctl shards place` without flags shows it)",
            fg=typer.colors.RED,
        )
    typer.echo(f"in handoff  {shard_ranges(state.in_handoff)}")
    for wid, shards in sorted(state.absent_owners.items()):
        typer.echo(
            f"absent      {wid} is not registered but assigned {shard_ranges(shards)} "
            "(restart grace, maintenance, or about to move)"
        )
    typer.echo("")
    typer.echo(
        f"{'WORKER':<28} {'STATE':<9} {'CAP':>3} {'ZONE':<8} {'GRACE':>6} "
        f"{'ASSIGNED':>8} {'OWNED':>5}  SHARDS"
    )
    for row in state.workers:
        record = row.record
        grace = f"{record.restart_grace:g}s" if record.restart_grace else "off"
        typer.echo(
            f"{row.id:<28} {record.state:<9} {record.capacity:>3} "
            f"{record.labels.get('zone', '-'):<8} "
            f"{grace:>6} "
            f"{len(row.assigned):>8} {len(row.owned):>5}  "
            f"{shard_ranges(row.owned)}"
        )


# -- maintenance -----------------------------------------------------------------


@maintenance_app.command("on")
def maintenance_on(
    reason: Annotated[str, typer.Option(help="Shown in `status` and `doctor`.")] = "",
    config: ConfigOpt = None,
    cluster: ClusterOpt = None,
) -> None:
    """Freeze the assignment: the coordinator writes no new generation until `off`.
    Shards of a worker that dies stay assigned to it (unprocessed); new workers get
    nothing; a drain does not complete. Once this returns, no generation lands."""
    from shardctl.core.etcd import EtcdClient
    from shardctl.core.keyspace import Keyspace
    from shardctl.core.records import Assignment, Maintenance

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
    from shardctl.core.etcd import EtcdClient
    from shardctl.core.keyspace import Keyspace

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
    from shardctl.core.etcd import EtcdClient, EtcdError
    from shardctl.core.keyspace import Keyspace
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
    from shardctl.core.etcd import EtcdClient
    from shardctl.core.keyspace import Keyspace
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
    from shardctl.core.etcd import EtcdClient
    from shardctl.core.keyspace import Keyspace
    from shardctl.core.records import ClusterConfig

    key = Keyspace.of(settings).config
    async with EtcdClient(settings.etcd) as client:
        kv = await client.get(key)
    if kv is None:
        return None, 0
    return ClusterConfig.decode(kv.key, kv.value), kv.mod_revision


# -- shards set ------------------------------------------------------------------


def partition_plan(
    counts: dict[str, int | None], old: int, new: int
) -> tuple[dict[str, int], list[str]]:
    """Topics to grow to `new` partitions, and the problems that refuse the change.

    Partition = shard, so a topic must end with exactly `new` partitions. One with
    `new` already is fine; one with the current count `old` below `new` grows;
    anything else (more partitions than `new`, or a count that is neither) is refused.
    """
    grow: dict[str, int] = {}
    problems: list[str] = []
    for topic, count in sorted(counts.items()):
        if count is None or count == new:
            continue
        if count == old and old < new:
            grow[topic] = count
        else:
            problems.append(f"{topic} has {count} partition(s)")
    return grow, problems


def _grow_kafka_partitions(
    settings: Settings, topics: list[str], old: int | None, num_shards: int
) -> None:
    """Bring every topic to `num_shards` partitions (partition = shard), or refuse with
    the topics whose count is neither the old nor the new one."""
    from shardctl.cli.kafka_admin import KafkaUnavailable, grow_partitions, partition_counts

    try:
        counts = partition_counts(settings, topics)
    except KafkaUnavailable as exc:
        raise _fail(f"{exc}; shard count unchanged") from None
    grow, problems = partition_plan(counts, old or num_shards, num_shards)
    if problems:
        raise _fail(
            f"cannot set num_shards to {num_shards}: Kafka partition = shard, and "
            f"{', '.join(problems)}, neither {old} (the current count) nor "
            f"{num_shards}; shard count unchanged"
        )
    for topic in sorted(t for t, n in counts.items() if n is None):
        typer.echo(f"topic {topic} does not exist yet: create it with {num_shards} partitions")
    if not grow:
        return
    try:
        grow_partitions(settings, list(grow), num_shards)
    except KafkaUnavailable as exc:
        raise _fail(f"{exc}; shard count unchanged") from None
    for topic, count in sorted(grow.items()):
        typer.echo(f"topic {topic}: {count} -> {num_shards} partitions")


@shards_app.command("set")
def set_shards(
    num_shards: Annotated[int, typer.Argument(help="The new shard count.", min=1)],
    config: ConfigOpt = None,
    cluster: ClusterOpt = None,
) -> None:
    """Change the shard count of a running cluster, keeping per-key order.

    On Kafka the configured topics grow to N partitions (partition = shard); Kafka
    partitions cannot shrink, so a smaller N is refused there (allowed on NSQ). N is
    at most 294864, the most shards one assignment (one etcd value) holds. Once a
    reader has published (the cluster has a CDC checkpoint), the change is online:
    the reader switches to N at a transaction boundary and records it in etcd, and a
    shard that gains keys handles them only after every old shard has passed that
    point; `config.num_shards` is max(old, N) until then. Without a checkpoint the
    count changes at once. A change still in progress is not replaced.
    """
    import time as clock

    from shardctl.core.etcd import EtcdClient, ModRevisionIs, Put
    from shardctl.core.keyspace import Keyspace
    from shardctl.core.records import (
        ASSIGNMENT_MAX_BYTES,
        ASSIGNMENT_WORKER_TABLE_BYTES,
        MAX_SHARDS,
        ClusterConfig,
        Reshard,
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

    async def read() -> tuple[ClusterConfig | None, int, Reshard | None, int, bool]:
        async with EtcdClient(settings.etcd) as client:
            cfg_kv = await client.get(keys.config)
            reshard_kv = await client.get(keys.reshard)
            sources = await client.get_prefix(f"{keys.root}cdc/")
        published = any(kv.key.endswith("/checkpoint") for kv in sources.items)
        cfg = None if cfg_kv is None else ClusterConfig.decode(cfg_kv.key, cfg_kv.value)
        pending = None if reshard_kv is None else Reshard.decode(reshard_kv.key, reshard_kv.value)
        return (
            cfg,
            0 if cfg_kv is None else cfg_kv.mod_revision,
            pending,
            0 if reshard_kv is None else reshard_kv.mod_revision,
            published,
        )

    current, mod_revision, pending, reshard_revision, published = _run(read())
    if pending is not None and pending.in_progress:
        raise _fail(
            f"a change of the shard count from {pending.from_shards} to {pending.to_shards} "
            f"is in progress ({keys.reshard} is {pending.state}); run this again once it is "
            "complete. Shard count unchanged"
        )
    if current is not None and current.num_shards == num_shards:
        typer.echo(f"num_shards is already {num_shards}; nothing to do")
        return
    old = current.num_shards if current else None
    topics = current.topics if current else []
    transport = current.transport if current else "kafka"
    if transport in ("kafka", "both") and old is not None and num_shards < old:
        raise _fail(
            f"cannot shrink from {old} to {num_shards} shards: transport {transport} uses "
            "Kafka, whose partitions (one per shard) can only grow; shard count unchanged"
        )
    if not topics:
        typer.echo(f"no topics configured in {keys.config}: no Kafka partitions to check")
    elif transport in ("kafka", "both"):
        _grow_kafka_partitions(settings, topics, old, num_shards)

    online = current is not None and old is not None and published
    if online and transport in ("kafka", "both") and not topics:
        raise _fail(
            f"cannot change the shard count online without topics in {keys.config}: the "
            "switch records each topic's offsets per shard, and the workers wait on them. "
            "Set them with `shardctl cluster init`; shard count unchanged"
        )
    if current is None:
        updated = ClusterConfig(num_shards=num_shards, shard_hash="jump")
    else:
        count = max(current.num_shards, num_shards) if online else num_shards
        updated = current.model_copy(update={"num_shards": count})
    ops = [Put(keys.config, updated.encode())]
    if online and current is not None and old is not None:
        request = Reshard(
            from_shards=old,
            to_shards=num_shards,
            shard_hash=current.shard_hash,
            requested_at=clock.time(),
        )
        ops.append(Put(keys.reshard, request.encode()))

    async def write() -> bool:
        async with EtcdClient(settings.etcd) as client:
            ok, _ = await client.txn(
                [
                    ModRevisionIs(keys.config, mod_revision),
                    ModRevisionIs(keys.reshard, reshard_revision),
                ],
                ops,
            )
            return ok

    if not _run(write()):
        raise _fail(f"{keys.config} changed while checking; run the command again")
    if online:
        typer.echo(
            f"num_shards: {old} -> {num_shards} requested; the reader switches at its next "
            f"transaction boundary, and shards that gain keys wait until every old shard "
            f"has passed it ({keys.reshard})"
        )
    else:
        typer.echo(
            f"num_shards: {old or 'unset'} -> {num_shards}; the coordinator writes the new "
            "assignment"
        )


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
    from shardctl.core.etcd import EtcdClient, ModRevisionIs, Put
    from shardctl.core.keyspace import Keyspace

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
