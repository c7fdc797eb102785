"""Entry point of the `shardctl` command. Each command group lives in its own module."""

from __future__ import annotations

import typer

from shardctl.cli import dev

app = typer.Typer(
    name="shardctl",
    help="Shard ownership on etcd, and a Maxwell-compatible MySQL/MariaDB CDC pipeline.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(dev.app, name="dev")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
