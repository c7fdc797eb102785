"""`shardctl cdc`: run the binlog reader, run bootstraps, inspect or reset checkpoints.

Exit codes (the policy of every command, `shardctl.cli.common`): 0 after a clean
stop (SIGTERM/SIGINT), 2 for bad usage, configuration or server settings (the
message names the setting), 3 when the checkpoint points into purged binlogs (the
message gives the recovery commands), 1 for any other failure (decode or delivery
error, with the binlog position).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from shardctl.cli.common import (
    ClusterOpt,
    ConfigOpt,
    LivenessWindowOpt,
    LogJsonOpt,
    LogLevel,
    LogLevelOpt,
    MetricsPortOpt,
    start_process,
)
from shardctl.core.health import DEFAULT_LIVENESS_WINDOW_S

if TYPE_CHECKING:
    from cdc.bootstrap import Control
    from shardctl.core.config import Settings

app = typer.Typer(
    help="The Maxwell-compatible binlog reader.", no_args_is_help=True, rich_markup_mode=None
)
checkpoint_app = typer.Typer(
    help="Show or reset a source's checkpoint.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(checkpoint_app, name="checkpoint")

log = logging.getLogger(__name__)

SourceOpt = Annotated[str | None, typer.Option("--source", help="source name (cdc.source)")]


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _mysql_error() -> type[Exception]:
    import pymysql

    return pymysql.err.MySQLError


def _load(
    config: Path | None, cluster: str | None, overrides: dict[str, Any]
) -> tuple[Settings, Any]:
    from cdc.options import load_cdc_options
    from shardctl.core.config import ConfigError, load_settings

    try:
        return load_settings(config, cluster=cluster), load_cdc_options(config, overrides)
    except ConfigError as exc:
        raise _fail(str(exc), 2) from None


PRODUCERS = ("kafka", "nsq", "stdout")


def _producers(value: str | None) -> str | None:
    """--producer: checked when the command line is parsed (a bad one exits 2)."""
    if value is not None:
        bad = [p for p in value.split(",") if p.strip() not in PRODUCERS]
        if bad or not value:
            raise typer.BadParameter(f"{bad[0] if bad else value!r}: use kafka, nsq, stdout")
    return value


@app.command("run")
def run(
    config: ConfigOpt = None,
    cluster: ClusterOpt = None,
    source: SourceOpt = None,
    reader_id: Annotated[str | None, typer.Option(help="this reader's id (cdc.reader_id)")] = None,
    producer: Annotated[
        str | None,
        typer.Option(
            help="kafka, nsq, stdout or a comma list of them",
            callback=_producers,
            autocompletion=lambda: list(PRODUCERS),
        ),
    ] = None,
    num_shards: Annotated[int | None, typer.Option(help="cdc.num_shards")] = None,
    filter_rules: Annotated[str | None, typer.Option("--filter", help="Maxwell filter")] = None,
    start_position: Annotated[
        str | None, typer.Option(help="without a checkpoint: current, file:pos or gtid:<state>")
    ] = None,
    log_level: LogLevelOpt = LogLevel.INFO,
    log_json: LogJsonOpt = False,
    metrics_port: MetricsPortOpt = 0,
    liveness_window: LivenessWindowOpt = DEFAULT_LIVENESS_WINDOW_S,
) -> None:
    """Follow the source as a replica and publish every committed row change."""
    from cdc.decoding import DecodeError
    from cdc.producers.base import DeliveryError
    from cdc.reader import Reader
    from cdc.replication.errors import PurgedBinlogError, SourceError
    from shardctl.core.config import ConfigError
    from shardctl.core.etcd.client import EtcdError

    settings, options = _load(
        config,
        cluster,
        {
            "source": source,
            "reader_id": reader_id,
            "producer": producer,
            "num_shards": num_shards,
            "filter": filter_rules,
            "start_position": start_position,
        },
    )
    start_process("cdc", log_level, log_json, metrics_port, liveness_window)
    reader = Reader(settings, options)
    signals = {"count": 0}

    def on_signal(signum: int, _frame: Any) -> None:
        signals["count"] += 1
        if signals["count"] > 1:
            # Second signal: leave at once; the checkpoint is at a boundary anyway.
            raise SystemExit(130)
        reader.stop(f"signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        reader.run()
    except ConfigError as exc:
        raise _fail(str(exc), 2) from None
    except PurgedBinlogError as exc:
        raise _fail(str(exc), 3) from None
    except (SourceError, DecodeError, DeliveryError, EtcdError) as exc:
        raise _fail(str(exc), 1) from None
    except _mysql_error() as exc:
        where = f"{settings.mysql.host}:{settings.mysql.port}"
        raise _fail(f"source {options.source!r}: MySQL at {where}: {exc}", 1) from None


class _BootstrapGroup(TyperGroup):
    """`shardctl cdc bootstrap [options] db.table` stays the way to start one: a
    first word that is not a subcommand (or --help) begins `bootstrap start`."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] != "--help":
            args = ["start", *args]
        parsed: list[str] = super().parse_args(ctx, args)
        return parsed


bootstrap_app = typer.Typer(
    cls=_BootstrapGroup,
    help="Publish a table's rows (bootstrap); list, pause, resume or cancel snapshots.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(bootstrap_app, name="bootstrap")
SnapshotIdArg = Annotated[str, typer.Argument(help="request id (shown by `bootstrap list`)")]


@bootstrap_app.command("start")
def bootstrap(
    table: Annotated[str, typer.Argument(help="database.table")],
    where: Annotated[str | None, typer.Option(help="SQL condition on the rows to publish")] = None,
    blocking: Annotated[
        bool,
        typer.Option(
            "--blocking",
            help="one consistent-snapshot read, published while the stream waits "
            "(MariaDB; tables without a primary key)",
        ),
    ] = False,
    rows_per_s: Annotated[
        float | None,
        typer.Option("--rows-per-s", min=1, help="incremental: at most this many rows a second"),
    ] = None,
    config: ConfigOpt = None,
    cluster: ClusterOpt = None,
    source: SourceOpt = None,
    wait: Annotated[bool, typer.Option(help="wait until the reader has published it")] = True,
    timeout: Annotated[float, typer.Option(help="seconds to wait")] = 600.0,
) -> None:
    """Ask the leading reader to publish the table's rows (bootstrap-start/insert/complete).

    By default an incremental snapshot: chunks in primary-key order while the stream
    flows. `shardctl cdc bootstrap db.table` is the same as `bootstrap start db.table`."""
    from cdc.bootstrap import submit_request
    from cdc.snapshot.control import snapshot_status
    from shardctl.core.etcd.client import EtcdClient, EtcdError, EtcdUnavailable
    from shardctl.core.keyspace import Keyspace

    database, dot, name = table.partition(".")
    if not dot or not database or not name:
        raise _fail(f"bootstrap: {table!r} is not database.table", 2)
    if blocking and rows_per_s is not None:
        raise _fail("bootstrap: --rows-per-s applies to incremental snapshots, not --blocking", 2)
    settings, options = _load(config, cluster, {"source": source})
    keyspace = Keyspace.of(settings)

    async def go() -> str | None:
        async with EtcdClient(settings.etcd) as client:
            request = await submit_request(
                client,
                keyspace,
                options.source,
                database,
                name,
                where,
                blocking=blocking,
                rows_per_s=rows_per_s,
            )
            typer.echo(f"bootstrap {request.id} of {table} requested for source {options.source}")
            if not wait:
                return None
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    status = await snapshot_status(client, keyspace, options.source, request.id)
                except EtcdUnavailable:
                    await asyncio.sleep(0.5)  # etcd restarting: keep waiting
                    continue
                state = "done" if status is None else status.state
                if state == "done":
                    return None
                if state in ("failed", "cancelled"):
                    assert status is not None
                    return status.line()
                await asyncio.sleep(0.5)
            return f"not done after {timeout:.0f}s (is a reader of {options.source} running?)"

    try:
        error = asyncio.run(go())
    except EtcdError as exc:
        raise _fail(f"bootstrap of {table}: {exc}", 1) from None
    if error is not None:
        raise _fail(f"bootstrap of {table}: {error}", 1)
    if wait:
        typer.echo(f"bootstrap of {table} published")


@bootstrap_app.command("list")
def bootstrap_list(
    config: ConfigOpt = None, cluster: ClusterOpt = None, source: SourceOpt = None
) -> None:
    """One line per bootstrap: id, table, mode, state, rows done / estimated total."""
    from cdc.snapshot.control import list_snapshots
    from shardctl.core.etcd.client import EtcdClient, EtcdError
    from shardctl.core.keyspace import Keyspace

    settings, options = _load(config, cluster, {"source": source})

    async def go() -> list[str]:
        async with EtcdClient(settings.etcd) as client:
            found = await list_snapshots(client, Keyspace.of(settings), options.source)
            return [s.line() for s in found]

    try:
        lines = asyncio.run(go())
    except EtcdError as exc:
        raise _fail(f"bootstrap list: {exc}", 1) from None
    for line in lines:
        typer.echo(line)


@bootstrap_app.command("status")
def bootstrap_status(
    snapshot_id: SnapshotIdArg,
    config: ConfigOpt = None,
    cluster: ClusterOpt = None,
    source: SourceOpt = None,
) -> None:
    """The state and progress of one bootstrap, as JSON."""
    from cdc.snapshot.control import snapshot_status
    from shardctl.core.etcd.client import EtcdClient, EtcdError
    from shardctl.core.keyspace import Keyspace

    settings, options = _load(config, cluster, {"source": source})

    async def go() -> dict[str, Any] | None:
        async with EtcdClient(settings.etcd) as client:
            status = await snapshot_status(
                client, Keyspace.of(settings), options.source, snapshot_id
            )
        if status is None:
            return None
        progress = status.progress
        return {
            "id": status.id,
            "table": status.table,
            "mode": status.mode,
            "state": status.state,
            "where": status.request.where if status.request is not None else None,
            "rows_done": progress.rows_done if progress is not None else None,
            "rows_estimated": progress.rows_estimated if progress is not None else None,
            "chunks": progress.chunks if progress is not None else None,
            "last_key": progress.last_key if progress is not None else None,
            "error": (status.request.error if status.request is not None else None)
            or (progress.error if progress is not None else None),
        }

    try:
        doc = asyncio.run(go())
    except EtcdError as exc:
        raise _fail(f"bootstrap status: {exc}", 1) from None
    if doc is None:
        raise _fail(f"bootstrap {snapshot_id} of source {options.source!r}: not found", 1)
    typer.echo(json.dumps(doc))


def _control(
    snapshot_id: str,
    control: Control,
    config: Path | None,
    cluster: str | None,
    source: str | None,
) -> None:
    from cdc.snapshot.control import ControlError, set_control
    from shardctl.core.etcd.client import EtcdClient, EtcdError
    from shardctl.core.keyspace import Keyspace

    settings, options = _load(config, cluster, {"source": source})

    async def go() -> None:
        async with EtcdClient(settings.etcd) as client:
            await set_control(client, Keyspace.of(settings), options.source, snapshot_id, control)

    try:
        asyncio.run(go())
    except (ControlError, EtcdError) as exc:
        raise _fail(f"bootstrap {control}: {exc}", 1) from None
    typer.echo(f"bootstrap {snapshot_id}: {control} requested")


@bootstrap_app.command("pause")
def bootstrap_pause(
    snapshot_id: SnapshotIdArg,
    config: ConfigOpt = None,
    cluster: ClusterOpt = None,
    source: SourceOpt = None,
) -> None:
    """Pause an incremental snapshot after its current chunk."""
    _control(snapshot_id, "pause", config, cluster, source)


@bootstrap_app.command("resume")
def bootstrap_resume(
    snapshot_id: SnapshotIdArg,
    config: ConfigOpt = None,
    cluster: ClusterOpt = None,
    source: SourceOpt = None,
) -> None:
    """Resume a paused incremental snapshot at its next chunk."""
    _control(snapshot_id, "run", config, cluster, source)


@bootstrap_app.command("cancel")
def bootstrap_cancel(
    snapshot_id: SnapshotIdArg,
    config: ConfigOpt = None,
    cluster: ClusterOpt = None,
    source: SourceOpt = None,
) -> None:
    """Stop a snapshot; consumers keep the rows already published (no bootstrap-complete)."""
    _control(snapshot_id, "cancel", config, cluster, source)


@checkpoint_app.command("show")
def checkpoint_show(
    config: ConfigOpt = None, cluster: ClusterOpt = None, source: SourceOpt = None
) -> None:
    """Print the stored checkpoint as JSON (null when there is none)."""
    from cdc.checkpoint import CheckpointError, CheckpointStore
    from shardctl.core.etcd.client import EtcdClient, EtcdError
    from shardctl.core.keyspace import Keyspace

    settings, options = _load(config, cluster, {"source": source})

    async def go() -> bytes | None:
        async with EtcdClient(settings.etcd) as client:
            found = await CheckpointStore(client, Keyspace.of(settings), options.source).load()
            return None if found is None else found.to_json()

    try:
        raw = asyncio.run(go())
    except (EtcdError, CheckpointError) as exc:
        raise _fail(str(exc), 1) from None
    typer.echo("null" if raw is None else json.dumps(json.loads(raw), indent=2))


@checkpoint_app.command("reset")
def checkpoint_reset(
    to: Annotated[str, typer.Option(help="current, file:pos, gtid:<state>, or none (delete it)")],
    config: ConfigOpt = None,
    cluster: ClusterOpt = None,
    source: SourceOpt = None,
) -> None:
    """Move the checkpoint (only while no reader of the source runs)."""
    from cdc.checkpoint import CheckpointError, CheckpointStore
    from cdc.reader import resolve_start
    from cdc.replication.position import Checkpoint
    from shardctl.core.config import ConfigError
    from shardctl.core.etcd.client import EtcdClient, EtcdError
    from shardctl.core.keyspace import Keyspace

    settings, options = _load(config, cluster, {"source": source})
    target: Checkpoint | None = None
    if to != "none":
        spec = to
        if spec.startswith("gtid:"):
            options = options.model_copy(update={"mode": "gtid"})
        elif spec != "current":
            options = options.model_copy(update={"mode": "file_pos"})
        try:
            target = resolve_start(
                options.model_copy(update={"start_position": spec}),
                settings.mysql.connect_kwargs(),
            )
        except ConfigError as exc:
            raise _fail(str(exc), 2) from None

    async def go() -> None:
        async with EtcdClient(settings.etcd) as client:
            await CheckpointStore(client, Keyspace.of(settings), options.source).reset(target)

    try:
        asyncio.run(go())
    except (CheckpointError, EtcdError) as exc:
        raise _fail(str(exc), 1) from None
    typer.echo(
        f"checkpoint of {options.source}: "
        + ("deleted" if target is None else f"set to {target.describe()}")
    )
    sys.stdout.flush()


@checkpoint_app.command("skip")
def checkpoint_skip(
    position: Annotated[
        str,
        typer.Option(help="the transaction the checkpoint sits at: its file:pos or its GTID"),
    ],
    config: ConfigOpt = None,
    cluster: ClusterOpt = None,
    source: SourceOpt = None,
) -> None:
    """Move the checkpoint past the one transaction it sits at (only while no reader
    runs), and print the tables that transaction changed, to re-copy with bootstrap."""
    import pymysql

    from cdc.checkpoint import CheckpointError, CheckpointStore, transaction_at_checkpoint
    from cdc.decoding.json_columns import UnknownDdl
    from cdc.replication.errors import SourceError
    from shardctl.core.config import ConfigError
    from shardctl.core.etcd.client import EtcdClient, EtcdError
    from shardctl.core.keyspace import Keyspace

    settings, options = _load(config, cluster, {"source": source})
    keyspace = Keyspace.of(settings)

    async def stored() -> Any:
        async with EtcdClient(settings.etcd) as client:
            leader = await client.get(keyspace.cdc_leader(options.source))
            if leader is not None:
                raise CheckpointError(
                    f"{leader.value.decode()} leads source {options.source!r}; stop every "
                    "reader of the source before skipping a transaction"
                )
            return await CheckpointStore(client, keyspace, options.source).load()

    try:
        checkpoint = asyncio.run(stored())
        if checkpoint is None:
            raise CheckpointError(f"source {options.source!r} has no checkpoint")
        skipped = transaction_at_checkpoint(
            options.source,
            settings.mysql.connect_kwargs(),
            options.server_id,
            options.mode,
            checkpoint,
            position,
        )
    except (CheckpointError, EtcdError, SourceError) as exc:
        raise _fail(f"checkpoint skip: {exc}", 1) from None
    except ConfigError as exc:
        raise _fail(f"checkpoint skip: {exc}", 2) from None
    except pymysql.err.MySQLError as exc:
        where = f"{settings.mysql.host}:{settings.mysql.port}"
        raise _fail(f"checkpoint skip: MySQL at {where}: {exc}", 1) from None

    try:
        target = skipped.next_checkpoint(checkpoint)
    except UnknownDdl as exc:
        raise _fail(f"checkpoint skip: {exc}", 1) from None

    async def move() -> None:
        async with EtcdClient(settings.etcd) as client:
            await CheckpointStore(client, keyspace, options.source).reset(target)

    try:
        asyncio.run(move())
    except (CheckpointError, EtcdError) as exc:
        raise _fail(f"checkpoint skip: {exc}", 1) from None
    txn = skipped.transaction
    gtid = f" (gtid {txn.ctx.gtid})" if txn.ctx.gtid else ""
    typer.echo(
        f"skipped the transaction at {skipped.start}{gtid} of source {options.source}; "
        f"checkpoint now at {target.describe()}"
    )
    for finding in skipped.findings:
        typer.echo(f"  why the reader stopped: {str(finding).splitlines()[0]}")
    if txn.statement is not None:
        typer.echo(f"it was the statement: {txn.statement.sql}")
    if skipped.tables:
        typer.echo("tables it changed (re-copy each with the command shown):")
        for table in skipped.tables:
            typer.echo(f"  {table}    shardctl cdc bootstrap {table} --source {options.source}")
    else:
        typer.echo("it changed no table rows")
    sys.stdout.flush()


def collect_cdc_status(settings: Settings, source: str) -> dict[str, Any]:
    """Leader, checkpoint, the server's binlog end and the lag between them.

    The lag is measured from the stored checkpoint, so it includes up to
    `checkpoint_interval_s` of changes the reader has already published. Lag in
    seconds is the age of the checkpointed transaction when the server has written
    past it, else 0.
    """
    from cdc.checkpoint import CheckpointStore
    from cdc.replication.server_check import (
        binlog_lag_bytes,
        check_server,
        current_position,
    )
    from shardctl.core.etcd.client import EtcdClient
    from shardctl.core.keyspace import Keyspace

    keyspace = Keyspace.of(settings)

    async def from_etcd() -> tuple[Any, str | None]:
        async with EtcdClient(settings.etcd) as client:
            store = CheckpointStore(client, keyspace, source)
            leader = await client.get(keyspace.cdc_leader(source))
            return await store.load(), None if leader is None else leader.value.decode()

    import pymysql

    checkpoint, leader = asyncio.run(from_etcd())
    connection = pymysql.connect(**settings.mysql.connect_kwargs())
    try:
        # server_id 0 never equals the server's own id: only the binlog settings are checked.
        info = check_server(connection, 0)
        end, gtid = current_position(connection, info)
        behind = None if checkpoint is None else binlog_lag_bytes(connection, checkpoint.position)
    finally:
        connection.close()
    lag_seconds: float | None = None
    if checkpoint is not None and behind is not None:
        lag_seconds = 0.0 if behind == 0 else max(0.0, time.time() - checkpoint.ts)
    return {
        "source": source,
        "leader": leader,
        "checkpoint": None if checkpoint is None else json.loads(checkpoint.to_json()),
        "server": {"file": end.file, "pos": end.pos, "gtid": gtid, "version": info.version},
        "lag_bytes": behind,
        "lag_seconds": lag_seconds,
        "checkpoint_purged": checkpoint is not None and behind is None,
    }


@app.command("status")
def status(
    config: ConfigOpt = None,
    cluster: ClusterOpt = None,
    source: SourceOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON document")] = False,
) -> None:
    """Leader, checkpoint position, the server's binlog end, and the lag (bytes, seconds)."""
    from cdc.checkpoint import CheckpointError
    from cdc.replication.errors import ServerSettingError
    from shardctl.core.etcd.client import EtcdError

    settings, options = _load(config, cluster, {"source": source})
    try:
        data = collect_cdc_status(settings, options.source)
    except (EtcdError, CheckpointError) as exc:
        raise _fail(f"cdc status of {options.source}: {exc}", 1) from None
    except ServerSettingError as exc:
        raise _fail(f"cdc status of {options.source}: {exc}", 2) from None
    except _mysql_error() as exc:
        where = f"{settings.mysql.host}:{settings.mysql.port}"
        raise _fail(f"cdc status of {options.source}: MySQL at {where}: {exc}", 1) from None
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    cp = data["checkpoint"]
    server = data["server"]
    typer.echo(f"source       {data['source']}")
    typer.echo(f"leader       {data['leader'] or 'none (no reader running)'}")
    if cp is None:
        typer.echo("checkpoint   none (the first reader starts at cdc.start_position)")
    else:
        gtid = f" gtid {cp['gtid']}" if cp["gtid"] else ""
        typer.echo(f"checkpoint   {cp['file']}:{cp['pos']}{gtid} (last event {cp['event_id']})")
    gtid = f" gtid {server['gtid']}" if server["gtid"] else ""
    typer.echo(f"server end   {server['file']}:{server['pos']}{gtid}")
    if data["checkpoint_purged"]:
        typer.echo(
            f"lag          unknown: the server no longer has {cp['file']}; see "
            "`shardctl cdc checkpoint reset` (docs/operations.md: Recovering from a purged binlog)"
        )
    elif data["lag_bytes"] is not None:
        typer.echo(f"lag          {data['lag_bytes']:,} bytes, {data['lag_seconds']:.1f} s")
