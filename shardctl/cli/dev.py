"""`shardctl dev`: the local stack of real services (code in deploy/local/devstack.py).

These commands run from a source checkout: the stack's install recipes (a Maven
pom, a Go module) live beside its code, not in the installed package.
"""

from __future__ import annotations

import enum
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Annotated

import typer

app = typer.Typer(
    help="Run real etcd, MariaDB, Kafka, NSQ (and PostgreSQL) on 127.0.0.1 for development.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

SERVICE_HELP = (
    "Services to act on; default: etcd, mariadb, kafka, nsqlookupd, nsqd. "
    "Optional ones start only when named: mariadb2 (a second source MariaDB), "
    "mariadb_sink (a MariaDB of its own for sinks), postgres (PostgreSQL for its sink)."
)


class Service(enum.StrEnum):
    """The services of the local stack (deploy/local/devstack.py: ALL_SERVICES)."""

    etcd = "etcd"
    mariadb = "mariadb"
    kafka = "kafka"
    nsqlookupd = "nsqlookupd"
    nsqd = "nsqd"
    mariadb2 = "mariadb2"
    mariadb_sink = "mariadb_sink"
    postgres = "postgres"


def load_devstack() -> ModuleType:
    """Import deploy/local/devstack.py from the checkout this package was installed from."""
    candidates = [Path(__file__).resolve().parents[2], Path.cwd()]
    for root in candidates:
        path = root / "deploy" / "local" / "devstack.py"
        if path.exists():
            spec = importlib.util.spec_from_file_location("shardctl_devstack", path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
            return module
    raise typer.BadParameter(
        "deploy/local/devstack.py not found: run `shardctl dev` from a shardctl source checkout"
    )


def _stack() -> object:
    return load_devstack().Stack()


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


@app.command()
def up(
    services: Annotated[list[Service] | None, typer.Argument(help=SERVICE_HELP)] = None,
) -> None:
    """Install what is missing, start every service, wait until each answers a real request.

    A second `up` changes nothing. State lives in .shardctl/ (SHARDCTL_DEV_STATE);
    downloads are cached in ~/.cache/shardctl (SHARDCTL_DEV_CACHE). Ports move with
    SHARDCTL_DEV_<NAME>_PORT, e.g. SHARDCTL_DEV_KAFKA_PORT=29092.
    """
    mod = load_devstack()
    stack = mod.Stack()
    try:
        stack.up([s.value for s in services] if services else None)
    except mod.StackError as exc:
        _fail(exc)
    status()


@app.command()
def down() -> None:
    """Stop the processes `up` started (found by their pid files, never by name)."""
    load_devstack().Stack().down()


@app.command()
def status() -> None:
    """Show each service: pid, health (a real request), endpoint."""
    stack = load_devstack().Stack()
    unhealthy = 0
    for name, pid, healthy, endpoint in stack.status():
        state = "healthy" if healthy else ("running, not answering" if pid else "stopped")
        unhealthy += not healthy
        colour = typer.colors.GREEN if healthy else typer.colors.RED
        typer.echo(f"{name:<11} {typer.style(state, fg=colour):<24} pid={pid or '-':<8} {endpoint}")
    if unhealthy:
        raise typer.Exit(1)


@app.command()
def env() -> None:
    """Print `export SHARDCTL_...=` lines for the stack: eval "$(shardctl dev env)"."""
    for key, value in load_devstack().Stack().env().items():
        typer.echo(f"export {key}={value}")


@app.command()
def restart(service: Annotated[Service, typer.Argument(help="the service to restart")]) -> None:
    """Stop one service and start it again (its data is kept)."""
    mod = load_devstack()
    try:
        mod.Stack().restart(service.value)
    except (mod.StackError, KeyError) as exc:
        _fail(exc)


@app.command()
def logs(
    service: Annotated[Service, typer.Argument(help="the service")],
    lines: Annotated[int, typer.Option(help="how many lines")] = 40,
) -> None:
    """Show the last lines of a service's log."""
    typer.echo(load_devstack().Stack().log_tail(service.value, lines))
