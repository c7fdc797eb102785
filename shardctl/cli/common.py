"""What every command shares: the common options, choices, the exit-code policy and
the one way to fail.

Exit codes (the same for every command):
    0  ok
    1  runtime failure: a service failed or a check found a problem
    2  bad usage or setting: an unknown option or choice, an invalid value in flags,
       environment or TOML (the message names the setting)
    3  the CDC checkpoint points into purged binlogs (`cdc run`)

This module imports only typer and the standard library: `shardctl --help` must not
pay for etcd, gRPC or pydantic. Commands import what they need when they run.
"""

from __future__ import annotations

import asyncio
import enum
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from shardctl.core.config import Settings

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_PURGED_BINLOG = 3


class LogLevel(enum.StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


class Transport(enum.StrEnum):
    """Where a worker or `tail` reads events from."""

    kafka = "kafka"
    nsq = "nsq"


ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="TOML config file (or SHARDCTL_CONFIG); sections [etcd], [kafka], [mysql], "
        "[nsq], [cdc], [worker].",
        show_default=False,
    ),
]
ClusterOpt = Annotated[
    str | None,
    typer.Option("--cluster", help="Cluster name, the etcd prefix (or SHARDCTL_CLUSTER)."),
]
LogLevelOpt = Annotated[
    LogLevel, typer.Option("--log-level", help="Log level.", case_sensitive=False)
]
LogJsonOpt = Annotated[bool, typer.Option("--log-json", help="Log JSON lines.")]
MetricsPortOpt = Annotated[
    int,
    typer.Option(
        "--metrics-port",
        envvar="SHARDCTL_METRICS_PORT",
        help="Serve /metrics, /healthz and /readyz on this port; 0 = off.",
        min=0,
        max=65535,
    ),
]

LivenessWindowOpt = Annotated[
    float,
    typer.Option(
        "--liveness-window",
        envvar="SHARDCTL_LIVENESS_WINDOW_S",
        help="Seconds without a tick of the process's main loop (every second; a CDC "
        "reader's at least every cdc.heartbeat_s) after which /healthz answers 503.",
        min=2,
    ),
]


def fail(message: str, code: int = EXIT_FAILURE) -> typer.Exit:
    """Print one `error:` line to stderr and return the Exit to raise."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def die(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    raise fail(message, code)


def load(
    config: Path | None,
    cluster: str | None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Settings:
    """The settings (flags in `overrides` by section beat env and file), or exit 2
    naming the bad setting."""
    from shardctl.core.config import ConfigError, load_settings

    try:
        return load_settings(path=config, overrides=overrides, cluster=cluster)
    except ConfigError as exc:
        raise fail(str(exc), EXIT_USAGE) from None


def start_process(
    role: str,
    log_level: LogLevel,
    log_json: bool,
    metrics_port: int | None,
    liveness_window_s: float,
) -> None:
    """Logging, the health state of `role`, and (with a port) /metrics, /healthz, /readyz."""
    from shardctl.core import health, logs, metrics

    logs.configure(log_level.value, json=log_json)
    health.configure(role, liveness_window_s)
    if metrics_port:
        try:
            metrics.serve(metrics_port)
        except OSError as exc:
            die(f"--metrics-port {metrics_port}: cannot listen: {exc}", EXIT_USAGE)


def _interrupted(signum: int, frame: object) -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        raise KeyboardInterrupt from None
    # In a running event loop the exception would land in whatever the loop runs,
    # possibly a C extension's callback (grpc's, under the etcd client); a demo
    # interrupted in its loop once aborted with "corrupted double-linked list". So it
    # is raised by a callback of its own, between two steps of the loop
    # (call_soon_threadsafe also wakes a loop waiting in select).
    loop.call_soon_threadsafe(_raise_interrupt)


def _raise_interrupt() -> None:
    raise KeyboardInterrupt


def raise_on_interrupt() -> None:
    """Make Ctrl-C raise KeyboardInterrupt: at once outside an event loop, and between
    two steps of a running one (never inside the step it interrupted).

    With Python's default handler in place, `asyncio.Runner.run` (and `asyncio.run`)
    turns a Ctrl-C into the cancellation of its task, and a coroutine in flight may
    absorb a cancellation: the demo and `status --watch` then ran on as if never
    interrupted. The runner leaves a handler of our own alone, and the event loop
    lets KeyboardInterrupt out of a callback."""
    signal.signal(signal.SIGINT, _interrupted)
