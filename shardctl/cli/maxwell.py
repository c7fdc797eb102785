"""Moving from Maxwell: `shardctl cdc import-maxwell` and `shardctl cdc config from-maxwell`.

`import-maxwell` exit codes: 0 done; 2 bad configuration; 3 Maxwell's position
is purged; 1 anything else (no position, a checkpoint already there, a reader
running, etcd or MySQL errors).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from shardctl.cli.cdc import SourceOpt, _fail, _load
from shardctl.cli.common import ClusterOpt, ConfigOpt

config_app = typer.Typer(help="Translate other tools' configuration.", no_args_is_help=True)


def import_maxwell(
    client_id: Annotated[str, typer.Option("--client-id", help="Maxwell's client_id")],
    schema_database: Annotated[
        str, typer.Option("--schema-database", help="Maxwell's schema_database")
    ] = "maxwell",
    force: Annotated[
        bool, typer.Option("--force", help="replace a checkpoint the source already has")
    ] = False,
    config: ConfigOpt = None,
    cluster: ClusterOpt = None,
    source: SourceOpt = None,
) -> None:
    """Make Maxwell's stored position this source's checkpoint (no reader may run)."""
    import pymysql

    from cdc.checkpoint import CheckpointError, CheckpointStore
    from cdc.maxwell_import import (
        MaxwellImportError,
        MaxwellPositionPurged,
        checkpoint_from_maxwell,
        read_maxwell_position,
        store_imported_checkpoint,
    )
    from cdc.replication.server_check import check_server
    from shardctl.core.config import ConfigError
    from shardctl.core.etcd.client import EtcdClient, EtcdError
    from shardctl.core.keyspace import Keyspace

    settings, options = _load(config, cluster, {"source": source})
    try:
        connection = pymysql.connect(**settings.mysql.connect_kwargs())
        try:
            # server_id 0 never equals the server's own id: only the binlog settings are checked.
            info = check_server(connection, 0)
            position = read_maxwell_position(connection, schema_database, client_id, info.server_id)
            checkpoint = checkpoint_from_maxwell(connection, info, position)
        finally:
            connection.close()
    except ConfigError as exc:
        raise _fail(str(exc), 2) from None
    except MaxwellPositionPurged as exc:
        raise _fail(str(exc), 3) from None
    except MaxwellImportError as exc:
        raise _fail(str(exc), 1) from None
    except pymysql.err.MySQLError as exc:
        where = f"{settings.mysql.host}:{settings.mysql.port}"
        raise _fail(f"import-maxwell: MySQL at {where}: {exc}", 1) from None

    async def go() -> None:
        async with EtcdClient(settings.etcd) as client:
            store = CheckpointStore(client, Keyspace.of(settings), options.source)
            await store_imported_checkpoint(store, checkpoint, force=force)

    try:
        asyncio.run(go())
    except (CheckpointError, EtcdError) as exc:
        raise _fail(str(exc), 1) from None
    typer.echo(
        f"checkpoint of {options.source}: set to {checkpoint.describe()} "
        f"(Maxwell client_id {client_id!r}, server_id {position.server_id})"
    )


@config_app.command("from-maxwell")
def config_from_maxwell(
    properties: Annotated[Path, typer.Argument(help="Maxwell's config.properties")],
) -> None:
    """Print shardctl TOML for Maxwell's settings; list those that cannot carry over."""
    from cdc.maxwell_config import parse_properties, to_toml, translate
    from cdc.options import CdcOptions

    try:
        text = properties.read_text(encoding="utf-8")
    except OSError as exc:
        raise _fail(f"{properties}: {exc.strerror or exc}", 2) from None
    translation = translate(parse_properties(text), frozenset(CdcOptions.model_fields))
    typer.echo(to_toml(translation, properties.name), nl=False)
    if translation.not_carried:
        typer.echo(
            f"{len(translation.not_carried)} setting(s) not carried over: "
            + ", ".join(name for name, _ in translation.not_carried)
            + " (reasons at the top of the output)",
            err=True,
        )


def register(app: typer.Typer) -> None:
    """Add the Maxwell commands to the `cdc` command group."""
    app.command("import-maxwell")(import_maxwell)
    app.add_typer(config_app, name="config")
