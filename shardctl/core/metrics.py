"""Prometheus metrics of every shardctl process, defined in one place.

Each process calls `serve(port)` once and updates the metrics of its own role. The
names are a contract with the Grafana dashboard in deploy/grafana/. The same port
serves /healthz and /readyz (`shardctl.core.health`); any other path is a 404.
"""

from __future__ import annotations

import json
import platform
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import Counter, Gauge, Histogram, make_wsgi_app

from shardctl import __version__
from shardctl.core import health

# The usual `*_build_info` gauge: always 1, the facts are in the labels.
BUILD_INFO = Gauge(
    "shardctl_build_info",
    "Version of shardctl and of Python this process runs",
    ["version", "python"],
)
BUILD_INFO.labels(__version__, platform.python_version()).set(1)

# --- CDC reader -------------------------------------------------------------
CDC_ROWS = Counter("shardctl_cdc_rows_total", "Row changes published", ["source"])
CDC_LAG_SECONDS = Gauge(
    "shardctl_cdc_binlog_lag_seconds",
    "Now minus the commit time of the newest transaction read, or of the last moment the "
    "reader had read the server's whole binlog, whichever is later",
    ["source"],
)
CDC_LAG_BYTES = Gauge(
    "shardctl_cdc_binlog_lag_bytes",
    "Bytes between the server's binlog end and the reader",
    ["source"],
)
CDC_PUBLISH_AGE = Histogram(
    "shardctl_cdc_publish_age_seconds",
    "Commit timestamp to broker acknowledgement",
    ["source"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
CDC_CHECKPOINT = Gauge(
    "shardctl_cdc_checkpoint_position",
    "Checkpointed binlog position (byte offset in `file`)",
    ["source", "file"],
)
CDC_IN_FLIGHT = Gauge(
    "shardctl_cdc_in_flight_messages",
    "Messages handed to the producer and not yet acknowledged by the broker",
    ["source"],
)
CDC_DELIVERY_FAILURES = Counter(
    "shardctl_cdc_delivery_failures",
    "Delivery failures that stopped the reader before its checkpoint passed the message",
    ["source"],
)
CDC_LEADER = Gauge("shardctl_cdc_leader", "1 while this reader is the elected one", ["source"])

# --- Shard workers -----------------------------------------------------------
WORKER_EVENTS = Counter("shardctl_worker_events_total", "Events handled", ["worker", "shard"])
WORKER_LAG = Gauge(
    "shardctl_worker_shard_lag_events", "High watermark minus committed offset", ["worker", "shard"]
)
WORKER_HANDLER_SECONDS = Histogram(
    "shardctl_worker_handler_seconds", "Handler latency per batch", ["worker"]
)
WORKER_DLQ = Counter(
    "shardctl_worker_dead_letters_total",
    "Events sent to the dead-letter topic",
    ["worker", "shard"],
)
WORKER_TRANSIENT_RETRIES = Counter(
    "shardctl_worker_transient_retries_total",
    "Handler calls retried after a transient failure (sink or broker away)",
    ["worker", "shard"],
)
WORKER_STALLED = Gauge(
    "shardctl_worker_shard_stalled",
    "1 while the shard waits out a transient failure, else 0",
    ["worker", "shard"],
)
WORKER_SHARDS_OWNED = Gauge("shardctl_worker_shards_owned", "Shards owned now", ["worker"])

# --- Coordinator ---------------------------------------------------------------
COORD_GENERATION = Gauge("shardctl_coordinator_generation", "Assignment generation written")
COORD_REBALANCES = Counter("shardctl_coordinator_rebalances_total", "Assignments written")
COORD_MOVES = Counter("shardctl_coordinator_moves_total", "Shards moved between workers")
COORD_LEADER = Gauge("shardctl_coordinator_leader", "1 while this replica leads")


StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds would flood the log."""


def _probe(verdict: health.Verdict, start_response: StartResponse) -> Iterable[bytes]:
    body = json.dumps({"ok": verdict.ok, **verdict.detail}).encode()
    status = "200 OK" if verdict.ok else "503 Service Unavailable"
    start_response(status, [("Content-Type", "application/json"), ("Cache-Control", "no-store")])
    return [body]


def make_app() -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    """The WSGI app: /metrics, /healthz, /readyz, and 404 for anything else."""
    metrics_app = make_wsgi_app()

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            result: Iterable[bytes] = metrics_app(environ, start_response)
            return result
        if path == "/healthz":
            return _probe(health.PROCESS.alive(), start_response)
        if path == "/readyz":
            return _probe(health.PROCESS.ready(), start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics, /healthz or /readyz\n"]

    return app


def start_server(port: int, addr: str = "0.0.0.0") -> WSGIServer:
    """Serve /metrics, /healthz and /readyz on `port` from a daemon thread; the caller
    may `shutdown()` and `server_close()` it. OSError if the port is taken."""
    server = make_server(
        addr, port, make_app(), server_class=_ThreadingServer, handler_class=_QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return server


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Serve /metrics, /healthz and /readyz on `port` (0 disables) for the process's life."""
    if port:
        start_server(port, addr)
