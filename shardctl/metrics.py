"""Prometheus metrics of every shardctl process, defined in one place.

Each process calls `serve(port)` once and updates the metrics of its own role. The
names are a contract with the Grafana dashboard in deploy/grafana/.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

# --- CDC reader -------------------------------------------------------------
CDC_ROWS = Counter("shardctl_cdc_rows_total", "Row changes published", ["source"])
CDC_LAG_SECONDS = Gauge(
    "shardctl_cdc_binlog_lag_seconds", "Now minus the timestamp of the last event read", ["source"]
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


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Serve /metrics on `port` (0 disables) from a background thread."""
    if port:
        start_http_server(port, addr=addr)
