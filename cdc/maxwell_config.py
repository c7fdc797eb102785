"""Maxwell's `config.properties` translated into shardctl's TOML.

Pure: properties text in, a `Translation` out (the TOML sections and the list
of settings that were not carried over, each with the reason). Settings are
carried over only where shardctl has the same meaning; a password is never
copied (the output points to the environment or a password file instead).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shardctl.core.config import refuse_secret_options

# Maxwell's option -> shardctl's [cdc] option, where the meaning is the same.
_SAME_CDC_OPTIONS = (
    "kafka_topic",
    "ddl_kafka_topic",
    "dead_letter_topic",
    "producer_partition_by",
    "producer_partition_columns",
    "producer_partition_by_fallback",
    "filter",
    "kafka_partition_hash",
)
_CDC_BOOLEANS_PREFIX = "output_"
_PRODUCERS = {"kafka": "kafka", "stdout": "stdout"}
_PARTITION_BY = {"primary_key", "table", "database", "transaction_id", "column"}

# Maxwell settings with no counterpart, and why (the rest gets a generic reason).
_NOT_CARRIED: dict[str, str] = {
    "schema_database": "shardctl keeps its state in etcd, not in the database; pass it to "
    "`shardctl cdc import-maxwell --schema-database` to take over Maxwell's position",
    "client_id": "Maxwell's position key; pass it to `shardctl cdc import-maxwell --client-id`",
    "replica_server_id": "shardctl must use a server_id other than Maxwell's while both run "
    "(two replicas with one server_id cut each other off); cdc.server_id keeps its default",
    "init_position": "only used when there is no checkpoint; import Maxwell's position with "
    "`shardctl cdc import-maxwell`, or set cdc.start_position",
    "bootstrapper": "shardctl bootstraps through `shardctl cdc bootstrap`, with no bootstrap table",
    "log_level": "use the --log-level flag",
    "metrics_type": "shardctl serves Prometheus metrics on --metrics-port",
    "metrics_prefix": "shardctl's metric names are fixed",
    "http_port": "shardctl serves Prometheus metrics on --metrics-port",
    "http_bind_address": "shardctl serves Prometheus metrics on --metrics-port",
    "http_path_prefix": "shardctl serves Prometheus metrics on --metrics-port",
    "ssl": "configure TLS in [mysql.tls] (ca_file, cert_file, key_file)",
    "jdbc_options": "shardctl connects with PyMySQL, not JDBC; TLS goes in [mysql.tls]",
    "schema_host": "shardctl reads schema details from the replication server itself",
    "schema_port": "shardctl reads schema details from the replication server itself",
    "schema_user": "shardctl reads schema details from the replication server itself",
    "include_dbs": "the old filter options are not read; write them as `filter` rules",
    "exclude_dbs": "the old filter options are not read; write them as `filter` rules",
    "include_tables": "the old filter options are not read; write them as `filter` rules",
    "exclude_tables": "the old filter options are not read; write them as `filter` rules",
    "blacklist_dbs": "the old filter options are not read; write them as `filter` rules",
    "blacklist_tables": "the old filter options are not read; write them as `filter` rules",
    "include_column_values": "the old filter options are not read; write them as `filter` rules",
    "kafka_version": "shardctl uses librdkafka, which negotiates the protocol version",
    "kafka_key_format": "shardctl writes Maxwell's default key format (`hash`) only",
    "producer_ack_timeout": "shardctl waits for every acknowledgement; no timeout drops a message",
}

# Kafka Java-client properties librdkafka does not know.
_JAVA_ONLY_KAFKA = {
    "key.serializer": "shardctl writes the key and value as UTF-8 JSON itself",
    "value.serializer": "shardctl writes the key and value as UTF-8 JSON itself",
    "partitioner.class": "shardctl chooses the partition itself (cdc.producer_partition_by)",
    "buffer.memory": "a Java-client setting; librdkafka's is queue.buffering.max.kbytes",
    "max.block.ms": "a Java-client setting with no librdkafka counterpart",
    "max.request.size": "a Java-client setting; librdkafka's is message.max.bytes",
    "interceptor.classes": "a Java-client setting with no librdkafka counterpart",
    "sasl.jaas.config": "it holds the SASL user and password: set sasl.username in "
    "[kafka] options and the password in SHARDCTL_KAFKA_SASL_PASSWORD or "
    "SHARDCTL_KAFKA_SASL_PASSWORD_FILE",
}
# Delivery settings shardctl does not let a configuration weaken.
_FIXED_KAFKA = {
    "acks": "shardctl always produces with acks=all (P4), as an idempotent producer",
    "enable.idempotence": "shardctl always produces as an idempotent producer (P4)",
}
# librdkafka properties that configure the connection: [kafka] options, shared
# by every shardctl process; the rest tunes the reader's producer.
_CONNECTION_KAFKA = re.compile(r"^(security\.protocol|sasl\.|ssl\.|client\.id$)")


@dataclass
class Translation:
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    not_carried: list[tuple[str, str]] = field(default_factory=list)

    def put(self, section: str, name: str, value: Any) -> None:
        self.sections.setdefault(section, {})[name] = value

    def skip(self, name: str, why: str) -> None:
        self.not_carried.append((name, why))


def parse_properties(text: str) -> dict[str, str]:
    """A Java .properties file: `key=value`, `key: value` or `key value` lines,
    `#` and `!` comments, a trailing backslash continuing a line. Later keys win."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.lstrip()
        if not pending and (not line or line[0] in "#!"):
            continue
        trailing = len(line) - len(line.rstrip("\\"))
        if trailing % 2 == 1:
            pending += line[:-1]
            continue
        logical.append(pending + line)
        pending = ""
    if pending:
        logical.append(pending)
    out: dict[str, str] = {}
    for line in logical:
        match = re.match(r"^((?:\\.|[^\\=:\s])*)\s*[=:\s]?\s*(.*)$", line)
        if match is None:  # pragma: no cover - the pattern matches any line
            continue
        key, value = (_unescape(g) for g in match.groups())
        if key:
            out[key] = value.rstrip()
    return out


def _unescape(text: str) -> str:
    simple = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}

    def one(match: re.Match[str]) -> str:
        body = match.group(1)
        if body[0] == "u":
            return chr(int(body[1:], 16))
        return simple.get(body, body)

    return re.sub(r"\\(u[0-9a-fA-F]{4}|.)", one, text)


def _bool(name: str, value: str, out: Translation) -> bool | None:
    lowered = value.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    out.skip(name, f"value {value!r} is not true or false")
    return None


def translate(properties: Mapping[str, str], cdc_options: frozenset[str]) -> Translation:
    """Translate Maxwell's settings. `cdc_options` are the names shardctl's [cdc]
    section accepts (an option is carried over only when shardctl has it)."""
    out = Translation()
    replication = any(k.startswith("replication_") for k in properties)
    for name in sorted(properties):
        value = properties[name]
        if "password" in name:
            where = (
                "SHARDCTL_KAFKA_SASL_PASSWORD (or _FILE)"
                if name.startswith("kafka.")
                else "SHARDCTL_MYSQL_PASSWORD, SHARDCTL_MYSQL_PASSWORD_FILE or mysql.password_file"
            )
            out.skip(name, f"passwords are never copied into the file: set {where}")
            continue
        if name in ("host", "port", "user") and replication:
            out.skip(
                name,
                "Maxwell reads the binlog from replication_* here; shardctl reads the "
                "schema from the replication server too, so [mysql] takes replication_*",
            )
            continue
        if name in ("host", "user", "replication_host", "replication_user"):
            out.put("mysql", name.removeprefix("replication_"), value)
            continue
        if name in ("port", "replication_port"):
            if value.strip().isdigit():
                out.put("mysql", "port", int(value))
            else:
                out.skip(name, f"value {value!r} is not a port number")
            continue
        if name == "producer":
            producer = _PRODUCERS.get(value.strip())
            if producer is None:
                out.skip(name, f"shardctl publishes to Kafka, NSQ or stdout, not {value!r}")
            else:
                out.put("cdc", "producer", producer)
            continue
        if name == "gtid_mode":
            flag = _bool(name, value, out)
            if flag is not None:
                out.put("cdc", "mode", "gtid" if flag else "file_pos")
            continue
        if name.startswith("kafka."):
            _kafka(name, value, out)
            continue
        if name.startswith(_CDC_BOOLEANS_PREFIX) or name in _SAME_CDC_OPTIONS:
            if name not in cdc_options:
                out.skip(name, f"shardctl has no cdc.{name} option")
                continue
            if name.startswith(_CDC_BOOLEANS_PREFIX):
                flag = _bool(name, value, out)
                if flag is not None:
                    out.put("cdc", name, flag)
                continue
            if name == "producer_partition_by" and value.strip() not in _PARTITION_BY:
                out.skip(name, f"shardctl has no partitioning by {value!r}")
                continue
            if name == "kafka_partition_hash":
                # Maxwell takes any value but murmur3 as its default hash.
                out.put("cdc", name, "murmur3" if value.strip() == "murmur3" else "default")
                continue
            if name == "producer_partition_columns":
                out.put("cdc", name, [c.strip() for c in value.split(",") if c.strip()])
                continue
            out.put("cdc", name, value.strip())
            continue
        out.skip(name, _NOT_CARRIED.get(name, "not a setting shardctl has"))
    cdc = out.sections.get("cdc", {})
    if cdc.get("producer") == "kafka" and "kafka_partition_hash" in cdc_options:
        # Maxwell's partitions by Maxwell's defaults, where shardctl's differ.
        cdc.setdefault("kafka_partition_hash", "default")
        if "producer_partition_by" not in properties:
            cdc["producer_partition_by"] = "database"
    return out


def _kafka(name: str, value: str, out: Translation) -> None:
    key = name.removeprefix("kafka.")
    if key == "bootstrap.servers":
        out.put("kafka", "bootstrap_servers", value.strip())
        return
    reason = _JAVA_ONLY_KAFKA.get(key) or _FIXED_KAFKA.get(key)
    if reason is not None:
        out.skip(name, reason)
        return
    if _is_secret(key):
        out.skip(
            name,
            "secrets are never copied into the file: set SHARDCTL_KAFKA_SASL_PASSWORD or "
            "SHARDCTL_KAFKA_SSL_KEY_PASSWORD (or their _FILE forms)",
        )
        return
    if _CONNECTION_KAFKA.match(key):
        out.sections.setdefault("kafka", {}).setdefault("options", {})[key] = value.strip()
    else:
        out.sections.setdefault("cdc", {}).setdefault("kafka_options", {})[key] = value.strip()


def _is_secret(key: str) -> bool:
    # The one rule for secrets in librdkafka option maps.
    try:
        refuse_secret_options("kafka.options", {key: ""})
    except ValueError:
        return True
    return False


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
        )
    # A JSON string is a valid TOML basic string (same escapes).
    return json.dumps(str(value))


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def to_toml(translation: Translation, source_name: str = "maxwell") -> str:
    """The TOML document, with the settings not carried over listed at the top."""
    lines = [f"# Translated from Maxwell's config.properties ({source_name})."]
    if "mysql" in translation.sections or any("password" in n for n, _ in translation.not_carried):
        lines.append(
            "# The MySQL password: SHARDCTL_MYSQL_PASSWORD, SHARDCTL_MYSQL_PASSWORD_FILE "
            "or mysql.password_file."
        )
    if translation.not_carried:
        lines.append("#")
        lines.append("# Not carried over:")
        for name, why in translation.not_carried:
            lines.append(f"#   {name}: {why}")
    for section in ("mysql", "kafka", "cdc"):
        values = translation.sections.get(section)
        if not values:
            continue
        lines.append("")
        lines.append(f"[{section}]")
        for name, value in values.items():
            lines.append(f"{_toml_key(name)} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"
