"""Entry point of the `shardctl` command. Each command group lives in its own module."""

from __future__ import annotations

import typer

from shardctl.cli import cdc, coordination, demo, dev, doctor, tail

app = typer.Typer(
    name="shardctl",
    help="Shard ownership on etcd, and a Maxwell-compatible MySQL/MariaDB CDC pipeline.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(dev.app, name="dev")
app.add_typer(cdc.app, name="cdc")
app.add_typer(coordination.coordinator_app, name="coordinator")
app.add_typer(coordination.worker_app, name="worker")
app.add_typer(coordination.shards_app, name="shards")
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
