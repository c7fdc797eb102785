"""Entry point of the `shardctl` command. Each command group lives in its own module.

The command modules import only typer and the standard library at the top; what a
command needs (etcd, Kafka, pydantic) is imported when it runs, so `--help` is quick.
Exit codes follow one policy for every command (see `shardctl.cli.common`).
"""

from __future__ import annotations

from typing import Annotated

import typer

from shardctl import __version__
from shardctl.cli import cdc, cluster, coordination, demo, dev, doctor, maxwell, offsets, tail

app = typer.Typer(
    name="shardctl",
    help="Shard ownership on etcd, and a Maxwell-compatible MySQL/MariaDB CDC pipeline.\n\n"
    "Exit codes: 0 ok, 1 runtime failure, 2 bad usage or setting, 3 purged binlog.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"shardctl {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", is_eager=True, callback=_version
        ),
    ] = False,
) -> None:
    """The options of `shardctl` itself; the commands are registered below."""


app.add_typer(dev.app, name="dev")
# The Maxwell migration commands belong to `cdc` (and use its helpers).
maxwell.register(cdc.app)
app.add_typer(cdc.app, name="cdc")
app.add_typer(cluster.app, name="cluster")
app.add_typer(coordination.coordinator_app, name="coordinator")
app.add_typer(coordination.worker_app, name="worker")
app.add_typer(coordination.shards_app, name="shards")
app.add_typer(offsets.app, name="offsets")
app.add_typer(coordination.maintenance_app, name="maintenance")
app.command("status")(coordination.status)
app.command("drain")(coordination.drain)
app.command("undrain")(coordination.undrain)
app.command("tail")(tail.tail)
app.command("doctor")(doctor.doctor)
app.command("demo")(demo.demo)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
