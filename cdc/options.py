"""Settings of the binlog reader: the `[cdc]` TOML section or `SHARDCTL_CDC_*` variables.

Connection settings (MySQL, Kafka, NSQ, etcd) come from `shardctl.core.config.Settings`.
The names follow Maxwell's where Maxwell has the option.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cdc.formatter import FormatterOptions
from cdc.partitioner import FallbackBy, PartitionBy, PartitionHash
from cdc.replication.transaction import DEFAULT_MEMORY_BYTES, DEFAULT_MEMORY_ROWS
from shardctl.core.config import config_path, load_section, read_config_file, refuse_secret_options
from shardctl.core.keyspace import check_name


def default_reader_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class CdcOptions(FormatterOptions, BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHARDCTL_CDC_", extra="forbid", frozen=False)

    reader_id: str = Field(default_factory=default_reader_id)
    # Our replica server_id; readers of one source share it, so the server itself
    # drops a deposed leader's connection when a new leader connects. The default
    # is outside the ids replicas and other binlog readers usually take (Maxwell's
    # 6379, Debezium's 5400-6400, small numbers for replicas).
    server_id: int = Field(default=1_870_453, ge=1, lt=2**32)
    mode: Literal["file_pos", "gtid"] = "file_pos"
    # Where to start when no checkpoint exists: "current", "file:pos" or "gtid:<state>".
    start_position: str = "current"
    heartbeat_s: float = Field(default=1.0, gt=0, le=60)

    producer: str = Field(default="kafka", description="kafka, nsq, stdout, or a comma list")
    kafka_topic: str = "maxwell"
    ddl_kafka_topic: str | None = None
    dead_letter_topic: str = "maxwell_dead_letter"
    kafka_replication_factor: int = -1
    kafka_options: dict[str, str] = Field(default_factory=dict)
    # How often each topic's max.message.bytes is read again (batches are sized to it).
    kafka_topic_config_refresh_s: float = Field(default=30.0, gt=0)
    nsq_topic: str = "maxwell"
    nsq_max_message_bytes: int = Field(default=1024 * 1024, gt=0)

    num_shards: int | None = Field(default=None, ge=1)
    producer_partition_by: PartitionBy = "primary_key"
    producer_partition_columns: list[str] = Field(default_factory=list)
    producer_partition_by_fallback: FallbackBy = "database"
    # "crc32" (ours), or Maxwell's "default" (Java String.hashCode) or "murmur3", which
    # also take Maxwell's partition strings: Maxwell's partition numbers.
    kafka_partition_hash: PartitionHash = "crc32"

    filter: str | None = None

    # The message-form options (output_*, decimal_as_string, primary_key_change) and
    # `source` are FormatterOptions'.

    checkpoint_interval_s: float = Field(default=1.0, gt=0)
    lease_ttl_s: int = Field(default=10, ge=2)
    max_in_flight: int = Field(default=200_000, ge=1)
    bootstrap_poll_s: float = Field(default=2.0, gt=0)
    # Incremental snapshots (`shardctl cdc bootstrap`): rows per chunk, read between
    # two watermarks while the stream flows.
    snapshot_chunk_size: int = Field(default=1024, ge=1)
    # "initial": on the first start (no checkpoint), snapshot every table the filter
    # includes, then stream; "when_needed": also when the checkpoint's binlog was
    # purged (from the current position); "never": only the snapshots asked for.
    snapshot_mode: Literal["never", "initial", "when_needed"] = "never"
    # Snapshot a table when it comes into the filter: renamed from a name the filter
    # excludes to one it includes, or included by a changed `filter` on restart.
    # Tables created while streaming need none (every row they get is in the
    # binlog, CREATE TABLE ... SELECT included). Like the `snapshot.new.tables`
    # of Debezium's MySQL connector before 1.5.
    snapshot_new_tables: bool = Field(
        default=False,
        description="snapshot a table that comes into the filter (a RENAME into it, or a "
        "filter changed between runs)",
    )
    # A transaction's rows past either bound go to a temporary file (in `spill_dir`,
    # else the system's temporary directory) and are read back to publish.
    transaction_memory_rows: int = Field(default=DEFAULT_MEMORY_ROWS, ge=0)
    transaction_memory_bytes: int = Field(default=DEFAULT_MEMORY_BYTES, ge=0)
    spill_dir: str | None = None
    # How often the lag gauges are computed, on their own thread (never frozen by a
    # publish loop blocked on the broker).
    lag_interval_s: float = Field(default=1.0, gt=0, le=60)
    # Where the read stage (binlog reading, decoding, formatting) runs: in a second
    # process ("two-process", so the reader uses two cores) or in the reader's own.
    pipeline: Literal["two-process", "one-process"] = "one-process"
    # Row decoding: "native" decodes and writes the JSON of every table whose columns
    # the compiled decoder reads (the others, and all tables when it is not
    # installed, take the Python decoder); "python" always uses the Python decoder.
    decoder: Literal["native", "python"] = "native"

    @field_validator("source", "reader_id")
    @classmethod
    def _key_safe(cls, value: str) -> str:
        try:
            return check_name("cdc source or reader id", value)
        except ValueError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("kafka_options")
    @classmethod
    def _no_secrets(cls, options: dict[str, str]) -> dict[str, str]:
        refuse_secret_options("cdc.kafka_options", options)
        return options

    @field_validator("producer_partition_columns", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("producer")
    @classmethod
    def _producers(cls, value: str) -> str:
        names = [v.strip() for v in value.split(",") if v.strip()]
        bad = [n for n in names if n not in ("kafka", "nsq", "stdout")]
        if not names or bad:
            raise ValueError(f"unknown producer {bad or value!r}; use kafka, nsq or stdout")
        return ",".join(names)

    @property
    def producers(self) -> list[str]:
        return self.producer.split(",")

    def formatter_options(self) -> FormatterOptions:
        """The Maxwell output options among these settings (they share their names)."""
        names = FormatterOptions.model_fields
        return FormatterOptions(**{name: getattr(self, name) for name in names})


def load_cdc_options(
    path: Path | None = None, overrides: dict[str, Any] | None = None
) -> CdcOptions:
    """`[cdc]` of the TOML file, then SHARDCTL_CDC_* variables, then `overrides` (CLI flags).

    Raises ConfigError naming the first bad setting as `cdc.<name>`.
    """
    path = config_path(path)
    from_file = read_config_file(path).get("cdc", {})
    return load_section(CdcOptions, "cdc", from_file, overrides, path)
