"""`shardctl doctor`: check a deployment and say, for each problem, what is wrong
and how to fix it.

Checks, in order (a check whose prerequisite failed is reported as skipped):
1. etcd answers at `etcd.endpoints`, and the cluster has a `config` key; a warning
   while maintenance mode is on (the assignment is frozen).
2. The source server's binlog settings, the same check the reader runs at start.
3. The grants of the CDC user (`mysql.user`).
4. Every Kafka topic of the cluster config and of `cdc.kafka_topic` has exactly
   `num_shards` partitions (partition = shard).
5. What runs: a coordinator leads; a reader leads each source (the configured
   `cdc.source` and every source with a checkpoint); workers are registered; every
   shard of the assignment is owned.
6. No shard is stalled on a transient failure (its offset record says `stalled`).
7. Lag and dead letters, sampled twice `--sample` seconds apart: a growing lag is a
   warning, dead letters written during the sample are a problem.
8. Each source's checkpoint: its binlog file is still on the server, and the server's
   binlog retention covers how far the checkpoint is behind.
First of all, each TLS file of the settings is readable, and each certificate in them
is valid for more than CERT_WARN_DAYS days.

Exit code: 0 when nothing is wrong (warnings allowed), 1 when a check found a
problem, 2 when the settings themselves are invalid.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from shardctl.cli.common import EXIT_FAILURE, EXIT_USAGE, ClusterOpt, ConfigOpt

if TYPE_CHECKING:
    from shardctl.core.config import Settings
    from shardctl.core.records import ClusterConfig

Level = Literal["ok", "warning", "problem", "skipped"]


@dataclass(frozen=True)
class Finding:
    check: str
    level: Level
    what: str
    fix: str = ""


# -- etcd --------------------------------------------------------------------------


def check_etcd(settings: Settings) -> tuple[list[Finding], ClusterConfig | None, bool]:
    """Findings, the cluster config (if any), and whether etcd answered."""
    from shardctl.core.etcd import EtcdClient, EtcdError
    from shardctl.core.keyspace import Keyspace
    from shardctl.core.records import ClusterConfig, RecordError

    keys = Keyspace.of(settings)
    endpoints = settings.etcd.endpoints

    async def read() -> Any:
        async with EtcdClient(settings.etcd) as client:
            return await client.get(keys.config), await client.get(keys.maintenance)

    try:
        kv, maintenance_kv = asyncio.run(asyncio.wait_for(read(), settings.etcd.timeout_s * 2))
    except (EtcdError, TimeoutError, OSError) as exc:
        return (
            [
                Finding(
                    "etcd",
                    "problem",
                    f"etcd at {endpoints} does not answer: {exc}",
                    "start etcd, or point etcd.endpoints (SHARDCTL_ETCD_ENDPOINTS) at it; "
                    "with auth, set etcd.username and SHARDCTL_ETCD_PASSWORD_FILE",
                )
            ],
            None,
            False,
        )
    found = [Finding("etcd", "ok", f"etcd at {endpoints} answers")]
    if maintenance_kv is not None:
        found.append(check_maintenance(maintenance_kv.key, maintenance_kv.value))
    if kv is None:
        found.append(
            Finding(
                "cluster config",
                "problem",
                f"cluster {settings.cluster!r} has no {keys.config} key, so the coordinator "
                "assigns nothing and the reader does not know num_shards",
                "run `shardctl cluster init --shards N --topic T` (N = partitions per topic)",
            )
        )
        return found, None, True
    try:
        config = ClusterConfig.decode(kv.key, kv.value)
    except RecordError as exc:
        found.append(
            Finding("cluster config", "problem", str(exc), "rewrite it: `shardctl shards set N`")
        )
        return found, None, True
    found.append(
        Finding(
            "cluster config",
            "ok",
            f"cluster {settings.cluster!r}: num_shards={config.num_shards}, "
            f"transport={config.transport}, topics={config.topics or 'none listed'}",
        )
    )
    return found, config, True


# -- shards stalled on a transient failure ----------------------------------------------


def check_stalled_shards(settings: Settings) -> list[Finding]:
    """A finding per shard whose worker waits out a transient failure (sink or broker
    away): its events wait, nothing is dead-lettered, its lag grows."""
    from shardctl.core.etcd import EtcdClient, EtcdError
    from shardctl.core.keyspace import Keyspace
    from shardctl.core.records import OffsetRecord, RecordError

    keys = Keyspace.of(settings)

    async def read() -> Any:
        async with EtcdClient(settings.etcd) as client:
            return await client.get_prefix(keys.offsets_prefix)

    try:
        listing = asyncio.run(asyncio.wait_for(read(), settings.etcd.timeout_s * 2))
    except (EtcdError, TimeoutError, OSError) as exc:
        return [Finding("stalled shards", "skipped", f"cannot read {keys.offsets_prefix}: {exc}")]
    found: list[Finding] = []
    now = time.time()
    for kv in listing.items:
        shard = keys.shard_of_offset_key(kv.key)
        try:
            record = OffsetRecord.decode(kv.key, kv.value)
        except RecordError as exc:
            found.append(
                Finding("stalled shards", "problem", str(exc), "rewrite or delete the key")
            )
            continue
        if record.stalled is None:
            continue
        at = ", ".join(f"{t}@{p}" for t, p in sorted(record.positions.items())) or "the start"
        found.append(
            Finding(
                "stalled shards",
                "problem",
                f"shard {shard} has waited {now - record.stalled.since:.0f} s at {at} on a "
                f"transient failure: {record.stalled.error}. Its events wait and its lag "
                "grows; nothing is dead-lettered",
                "bring back what the error names (the sink database or Kafka); the shard "
                "goes on by itself",
            )
        )
    if not found:
        found.append(
            Finding(
                "stalled shards", "ok", f"no shard is stalled ({len(listing.items)} with offsets)"
            )
        )
    return found


def check_maintenance(key: str, raw: bytes) -> Finding:
    """A warning, loud on purpose: in maintenance mode dead workers' shards stay unprocessed."""
    from shardctl.core.records import Maintenance, RecordError
    from shardctl.core.status import maintenance_banner

    try:
        record = Maintenance.decode(key, raw)
    except RecordError as exc:
        return Finding(
            "maintenance",
            "problem",
            f"{exc}; the assignment is frozen while {key} exists",
            "`shardctl maintenance off`, then `shardctl maintenance on` if it should stay on",
        )
    return Finding(
        "maintenance",
        "warning",
        maintenance_banner(record),
        "`shardctl maintenance off` when the maintenance is over",
    )


# -- MySQL: binlog settings and grants ------------------------------------------------

REPLICATION_SLAVE = ("REPLICATION SLAVE", "REPLICATION REPLICA")
BINLOG_CLIENT = ("REPLICATION CLIENT", "BINLOG MONITOR")
_GRANT = re.compile(r"^GRANT (?P<privs>.+?) ON (?P<on>\S+) TO ", re.IGNORECASE)


def missing_privileges(grant_lines: list[str]) -> tuple[list[str], list[str]]:
    """From SHOW GRANTS lines: (privileges missing on *.*, warnings). Pure; the
    lines are never echoed (they can carry a password hash)."""
    global_privs: set[str] = set()
    scoped_select: list[str] = []
    for line in grant_lines:
        match = _GRANT.match(line.strip())
        if match is None:
            continue
        privs = {p.strip().upper() for p in match.group("privs").split(",")}
        on = match.group("on").replace("`", "")
        if on == "*.*":
            global_privs |= privs
        elif "SELECT" in privs or "ALL PRIVILEGES" in privs:
            scoped_select.append(on)
    if "ALL PRIVILEGES" in global_privs:
        return [], []
    missing: list[str] = []
    warnings: list[str] = []
    if not global_privs & set(REPLICATION_SLAVE):
        missing.append("REPLICATION SLAVE")
    if not global_privs & set(BINLOG_CLIENT):
        missing.append("REPLICATION CLIENT (MariaDB: BINLOG MONITOR)")
    if "SELECT" not in global_privs:
        if scoped_select:
            warnings.append(
                f"SELECT only on {', '.join(sorted(scoped_select))}: JSON column detection "
                "and `cdc bootstrap` work only on those tables"
            )
        else:
            missing.append("SELECT")
    return missing, warnings


def check_mysql(settings: Settings, reader_server_id: int) -> list[Finding]:
    import pymysql

    from cdc.replication.errors import ServerSettingError
    from cdc.replication.server_check import check_server

    where = f"{settings.mysql.user}@{settings.mysql.host}:{settings.mysql.port}"
    try:
        connection = pymysql.connect(**settings.mysql.connect_kwargs(), connect_timeout=5)
    except pymysql.err.MySQLError as exc:
        return [
            Finding(
                "mysql",
                "problem",
                f"cannot connect as {where}: {exc}",
                "check mysql.host/port/user and SHARDCTL_MYSQL_PASSWORD_FILE; the user "
                "must be allowed to connect from this host",
            ),
            Finding("binlog settings", "skipped", "no connection to the server"),
            Finding("grants", "skipped", "no connection to the server"),
        ]
    found = [Finding("mysql", "ok", f"connected as {where}")]
    try:
        try:
            info = check_server(connection, reader_server_id)
            found.append(
                Finding(
                    "binlog settings",
                    "ok",
                    f"{info.version}: log_bin, binlog_format=ROW, binlog_row_image=FULL, "
                    "binlog_row_metadata=FULL, no binlog compression",
                )
            )
        except ServerSettingError as exc:
            what, _, fix = str(exc).partition(". ")
            found.append(
                Finding(
                    "binlog settings",
                    "problem",
                    what,
                    f"set {exc.setting} in the [mysqld] section of the server's configuration "
                    f"and restart it. {fix}".strip(),
                )
            )
        with connection.cursor() as cursor:
            cursor.execute("SHOW GRANTS FOR CURRENT_USER()")
            lines = [str(row[0]) for row in cursor.fetchall()]
    finally:
        connection.close()
    missing, warnings = missing_privileges(lines)
    user = f"'{settings.mysql.user}'@'<host>'"
    if missing:
        found.append(
            Finding(
                "grants",
                "problem",
                f"{settings.mysql.user} lacks {', '.join(missing)} on *.*",
                f"GRANT SELECT, REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO {user}",
            )
        )
    else:
        found.append(Finding("grants", "ok", f"{settings.mysql.user} can read the binlog"))
    found.extend(
        Finding("grants", "warning", warning, f"GRANT SELECT ON *.* TO {user}")
        for warning in warnings
    )
    return found


# -- Kafka topics ---------------------------------------------------------------------


def check_topics(settings: Settings, num_shards: int, topics: list[str]) -> list[Finding]:
    from shardctl.cli.kafka_admin import KafkaUnavailable, partition_counts

    if not topics:
        return [Finding("topics", "skipped", "no Kafka topic to check")]
    try:
        counts = partition_counts(settings, topics)
    except KafkaUnavailable as exc:
        return [
            Finding(
                "kafka",
                "problem",
                str(exc),
                "start Kafka, or set kafka.bootstrap_servers (SHARDCTL_KAFKA_BOOTSTRAP_SERVERS) "
                "and the SASL/SSL options in kafka.options",
            )
        ]
    found: list[Finding] = []
    for topic, count in sorted(counts.items()):
        if count is None:
            found.append(
                Finding(
                    "topics",
                    "warning",
                    f"topic {topic} does not exist",
                    f"the CDC reader creates it with {num_shards} partitions; or create it "
                    f"yourself: kafka-topics --create --topic {topic} --partitions {num_shards}",
                )
            )
        elif count != num_shards:
            grow = (
                f"kafka-topics --alter --topic {topic} --partitions {num_shards}, or "
                if count < num_shards
                else ""
            )
            found.append(
                Finding(
                    "topics",
                    "problem",
                    f"topic {topic} has {count} partitions but num_shards is {num_shards} "
                    "(partition = shard: shards without a partition get nothing, and "
                    "partitions without a shard are never read)",
                    f"{grow}set the shard count to match: `shardctl shards set {count}`",
                )
            )
        else:
            found.append(Finding("topics", "ok", f"topic {topic} has {count} partitions"))
    return found


# -- what runs --------------------------------------------------------------------------


def check_running(settings: Settings, config: ClusterConfig, source: str) -> list[Finding]:
    """Leaders, workers and owners, from the cluster's read model (etcd answered a
    moment ago)."""
    from shardctl.cli.read_model import read_status
    from shardctl.core.etcd import EtcdError
    from shardctl.core.records import RecordError
    from shardctl.core.status import shard_ranges

    try:
        state = asyncio.run(asyncio.wait_for(read_status(settings), settings.etcd.timeout_s * 4))
    except (EtcdError, TimeoutError, OSError) as exc:
        return [Finding("running", "problem", f"cannot read the cluster's state: {exc}")]
    except RecordError as exc:
        return [Finding("running", "problem", str(exc), "rewrite or delete the key it names")]
    found: list[Finding] = []
    if state.leader is None:
        found.append(
            Finding(
                "coordinator",
                "problem",
                f"no coordinator leads cluster {settings.cluster!r}: nothing assigns shards",
                "start `shardctl coordinator run` (two replicas: one stands by)",
            )
        )
    else:
        found.append(
            Finding("coordinator", "ok", f"{state.leader.id} leads (token {state.leader.token})")
        )
    readers: dict[str, str | None] = {source: None, **state.readers}
    for name, reader in sorted(readers.items()):
        if reader is not None:
            found.append(Finding("cdc reader", "ok", f"source {name}: {reader} leads"))
        else:
            found.append(
                Finding(
                    "cdc reader",
                    "problem",
                    f"source {name}: no reader leads, so its binlog is not published",
                    f"start `shardctl cdc run --source {name}` (two: one stands by)",
                )
            )
    draining = sum(w.record.state == "draining" for w in state.workers)
    if not state.workers:
        found.append(
            Finding(
                "workers",
                "problem",
                "no worker is registered: nothing consumes the shards",
                "start `shardctl worker run --handler ...`",
            )
        )
    else:
        found.append(
            Finding("workers", "ok", f"{len(state.workers)} registered ({draining} draining)")
        )
    num_shards = state.num_shards if state.num_shards is not None else config.num_shards
    unowned = [s for s in range(num_shards) if s not in state.owners]
    if unowned:
        found.append(
            Finding(
                "shards",
                "problem",
                f"{len(unowned)} of {num_shards} shards have no owner: {shard_ranges(unowned)}",
                "start workers, and check that a coordinator leads and that "
                "`shardctl status` shows no shard stuck in handoff",
            )
        )
    else:
        found.append(Finding("shards", "ok", f"all {num_shards} shards are owned"))
    return found


# -- TLS files ----------------------------------------------------------------------------

CERT_WARN_DAYS = 14
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.S)


def _tlv(der: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start, end) of the DER element at `at`: its content is der[start:end]."""
    if at + 2 > len(der):
        raise ValueError("truncated DER")
    tag, length, at = der[at], der[at + 1], at + 2
    if length & 0x80:
        size = length & 0x7F
        length, at = int.from_bytes(der[at : at + size], "big"), at + size
    if at + length > len(der):
        raise ValueError("truncated DER")
    return tag, at, at + length


def _der_time(tag: int, text: bytes) -> datetime:
    formats = {0x17: "%y%m%d%H%M%SZ", 0x18: "%Y%m%d%H%M%SZ"}  # UTCTime, GeneralizedTime
    if tag not in formats:
        raise ValueError(f"a time of DER tag {tag:#x}")
    return datetime.strptime(text.decode("ascii"), formats[tag]).replace(tzinfo=UTC)


def certificate_expiries(pem: bytes) -> list[datetime]:
    """The notAfter of every certificate in a PEM file: X.509's TBSCertificate is
    [0] version, serialNumber, signature, issuer, validity {notBefore, notAfter}, ...
    ValueError when there is none, or one does not parse."""
    import base64

    expiries = []
    for body in _PEM_CERT.findall(pem):
        der = base64.b64decode(b"".join(body.split()))
        _, start, _ = _tlv(der, 0)  # Certificate
        _, at, _ = _tlv(der, start)  # TBSCertificate
        tag, _, end = _tlv(der, at)
        if tag == 0xA0:  # version
            at = end
        for _ in range(3):  # serialNumber, signature, issuer
            at = _tlv(der, at)[2]
        _, validity, _ = _tlv(der, at)
        not_before_end = _tlv(der, validity)[2]
        tag, start, end = _tlv(der, not_before_end)
        expiries.append(_der_time(tag, der[start:end]))
    if not expiries:
        raise ValueError("no PEM certificate in it")
    return expiries


def tls_files(settings: Settings) -> list[tuple[str, Path, bool]]:
    """(setting, path, holds certificates) of every TLS file the settings name."""
    files: list[tuple[str, Path, bool]] = []
    for section, tls in (("etcd", settings.etcd.tls), ("mysql", settings.mysql.tls)):
        for name, is_cert in (("ca_file", True), ("cert_file", True), ("key_file", False)):
            path = getattr(tls, name)
            if path is not None:
                files.append((f"{section}.tls.{name}", path, is_cert))
    for option, is_cert in (
        ("ssl.ca.location", True),
        ("ssl.certificate.location", True),
        ("ssl.key.location", False),
    ):
        if option in settings.kafka.options:
            files.append((f"kafka.options.{option}", Path(settings.kafka.options[option]), is_cert))
    return files


def tls_finding(setting: str, path: Path, is_cert: bool, now: datetime) -> Finding:
    """Readable, and (a certificate file) not expired nor about to."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return Finding(
            "tls", "problem", f"{setting}: cannot read {path}: {exc.strerror}", "fix the path"
        )
    if not is_cert:
        return Finding("tls", "ok", f"{setting}: {path} is readable")
    try:
        not_after = min(certificate_expiries(data))
    except ValueError as exc:
        return Finding(
            "tls", "problem", f"{setting}: {path}: {exc}", "point it at a PEM certificate"
        )
    day = not_after.strftime("%Y-%m-%d %H:%M UTC")
    renew = f"renew the certificate in {path}"
    if not_after <= now:
        return Finding("tls", "problem", f"{setting}: {path} expired on {day}", renew)
    if not_after - now <= timedelta(days=CERT_WARN_DAYS):
        left = (not_after - now).total_seconds() / 86400
        return Finding(
            "tls", "warning", f"{setting}: {path} expires on {day}, in {left:.1f} days", renew
        )
    return Finding("tls", "ok", f"{setting}: {path} is valid until {day}")


def check_tls(settings: Settings) -> list[Finding]:
    now = datetime.now(UTC)
    return [tls_finding(setting, path, cert, now) for setting, path, cert in tls_files(settings)]


# -- lag and dead letters, over a short sample ------------------------------------------


@dataclass(frozen=True)
class FlowSample:
    lag: dict[str, int]  # topic -> lag summed over the shards
    dead_letters: dict[str, int]  # dead-letter topic -> records written (end offsets)


def take_flow_sample(settings: Settings, config: ClusterConfig) -> FlowSample:
    """The lag of every topic of the cluster and the size of their dead-letter topics
    (a dead-letter topic that does not exist counts 0). KafkaUnavailable passes."""
    from shardctl.cli.kafka_admin import EndOffsets, UnknownTopic
    from shardctl.cli.offsets import shard_offsets
    from shardctl.core.etcd import EtcdClient
    from workers.deadletters import dead_letter_topic

    async def lags() -> list[dict[str, Any]]:
        async with EtcdClient(settings.etcd) as client:
            return await shard_offsets(
                settings, client, config.topics, list(range(config.num_shards))
            )

    lag: dict[str, int] = dict.fromkeys(config.topics, 0)
    for row in asyncio.run(lags()):
        lag[row["topic"]] += row["lag"] or 0
    kafka = EndOffsets(settings)
    dead: dict[str, int] = {}
    for topic in config.topics:
        name = dead_letter_topic(settings.worker.dead_letter_template, topic)
        try:
            partitions = kafka.partitions(name)
        except UnknownTopic:
            dead[name] = 0
            continue
        dead[name] = sum(kafka.end_offsets(name, partitions).values())
    return FlowSample(lag, dead)


def flow_findings(first: FlowSample, second: FlowSample, seconds: float) -> list[Finding]:
    """Lag and dead letters from two samples `seconds` apart: growth is what matters."""
    found: list[Finding] = []
    for topic, lag in sorted(second.lag.items()):
        before = first.lag.get(topic, lag)
        if lag > before:
            found.append(
                Finding(
                    "lag",
                    "warning",
                    f"topic {topic}: the lag grew from {before:,} to {lag:,} in {seconds:g} s",
                    "if it keeps growing: start more workers, or look at the handler's sink "
                    "(`shardctl status --watch`, `shardctl offsets describe`)",
                )
            )
        else:
            found.append(Finding("lag", "ok", f"topic {topic}: lag {lag:,}, not growing"))
    for name, count in sorted(second.dead_letters.items()):
        before = first.dead_letters.get(name, count)
        if count > before:
            found.append(
                Finding(
                    "dead letters",
                    "problem",
                    f"{name}: {count - before:,} dead letter(s) in {seconds:g} s "
                    f"({count:,} in all): events are failing now",
                    f"read them (`shardctl tail {name} --from-beginning`): each carries "
                    "its error; fix the handler or the data it names",
                )
            )
        elif count:
            found.append(
                Finding(
                    "dead letters",
                    "warning",
                    f"{name}: {count:,} dead letter(s), none in the last {seconds:g} s",
                    f"read them (`shardctl tail {name} --from-beginning`): each carries its error",
                )
            )
        else:
            found.append(Finding("dead letters", "ok", f"{name}: none"))
    return found


def check_flow(settings: Settings, config: ClusterConfig, seconds: float) -> list[Finding]:
    from shardctl.cli.kafka_admin import KafkaUnavailable
    from shardctl.core.etcd import EtcdError
    from shardctl.core.records import RecordError

    if not config.topics:
        return []  # nothing consumes yet, so there is no lag to watch
    if config.transport == "nsq":
        return [Finding("lag", "skipped", "transport is nsq: no offsets to measure lag by")]
    try:
        first = take_flow_sample(settings, config)
        time.sleep(seconds)
        second = take_flow_sample(settings, config)
    except (KafkaUnavailable, EtcdError, RecordError, ValueError) as exc:
        return [Finding("lag", "skipped", f"cannot sample lag and dead letters: {exc}")]
    return flow_findings(first, second, seconds)


# -- the readers' checkpoints against the server's binlogs ------------------------------


def binlog_retention_s(variables: Mapping[str, str | None]) -> float:
    """Seconds the server keeps a binlog file (0: it never purges by age), from
    `binlog_expire_logs_seconds` (MySQL 8, MariaDB 10.6+), else `expire_logs_days`."""
    seconds = float(variables.get("binlog_expire_logs_seconds") or 0)
    if seconds > 0:
        return seconds
    return float(variables.get("expire_logs_days") or 0) * 86400


def retention_finding(source: str, age_s: float, retention_s: float) -> Finding:
    """Does the server keep its binlogs long enough for the reader of `source`, whose
    checkpoint is `age_s` behind the server's end?"""
    check = "binlog retention"
    if retention_s <= 0:
        return Finding(check, "ok", f"source {source}: the server does not purge binlogs by age")
    keeps = f"the server purges binlogs after {retention_s:,.0f} s"
    fix = (
        f"let the reader of {source} catch up (is it running and leading?), and raise "
        "binlog_expire_logs_seconds on the server"
    )
    if age_s >= retention_s:
        return Finding(
            check,
            "problem",
            f"source {source}: the checkpoint is {age_s:,.0f} s behind and {keeps}: the "
            "binlogs it still has to read are being purged",
            fix,
        )
    if age_s >= retention_s / 2:
        return Finding(
            check,
            "warning",
            f"source {source}: the checkpoint is {age_s:,.0f} s behind and {keeps}: more "
            "than half of the margin is used",
            fix,
        )
    return Finding(check, "ok", f"source {source}: checkpoint {age_s:,.0f} s behind; {keeps}")


def check_checkpoints(settings: Settings, sources: list[str]) -> list[Finding]:
    """For each source: its checkpoint's binlog file is still on the server, and the
    server's retention covers the checkpoint's age."""
    import pymysql

    from cdc.checkpoint import CheckpointError
    from cdc.replication.errors import ServerSettingError
    from shardctl.cli.cdc import collect_cdc_status
    from shardctl.core.etcd import EtcdError

    try:
        connection = pymysql.connect(**settings.mysql.connect_kwargs(), connect_timeout=5)
        try:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SHOW GLOBAL VARIABLES WHERE Variable_name IN "
                    "('binlog_expire_logs_seconds', 'expire_logs_days')"
                )
                variables = {str(row[0]).lower(): str(row[1]) for row in cursor}
        finally:
            connection.close()
    except pymysql.err.MySQLError as exc:
        return [Finding("checkpoint", "skipped", f"no connection to the server: {exc}")]
    retention = binlog_retention_s(variables)
    found: list[Finding] = []
    for source in sources:
        try:
            status = collect_cdc_status(settings, source)
        except (EtcdError, CheckpointError, ServerSettingError, pymysql.err.MySQLError) as exc:
            found.append(Finding("checkpoint", "problem", f"source {source}: {exc}"))
            continue
        checkpoint = status["checkpoint"]
        if checkpoint is None:
            found.append(
                Finding("checkpoint", "ok", f"source {source}: no checkpoint yet (first start)")
            )
            continue
        where = f"{checkpoint['file']}:{checkpoint['pos']}"
        if status["checkpoint_purged"]:
            found.append(
                Finding(
                    "checkpoint",
                    "problem",
                    f"source {source}: the checkpoint is at {where}, but the server no "
                    f"longer has {checkpoint['file']}: the reader cannot resume there",
                    "see `shardctl cdc checkpoint reset` and, in the docs, Operations: "
                    "Recovering from a purged binlog",
                )
            )
            continue
        found.append(Finding("checkpoint", "ok", f"source {source}: {where} is on the server"))
        found.append(retention_finding(source, status["lag_seconds"] or 0.0, retention))
    return found


# -- the command ------------------------------------------------------------------------


def run_checks(
    settings: Settings,
    reader_server_id: int,
    cdc_topic: str | None,
    extra_topics: list[str],
    source: str = "default",
    sample_s: float = 0.0,
) -> list[Finding]:
    findings = check_tls(settings)
    more, config, etcd_ok = check_etcd(settings)
    findings += more
    if etcd_ok:
        findings += check_stalled_shards(settings)
    findings += check_mysql(settings, reader_server_id)
    if config is None:
        reason = "etcd does not answer" if not etcd_ok else "the cluster has no config"
        findings.append(Finding("topics", "skipped", f"num_shards unknown: {reason}"))
        findings.append(Finding("running", "skipped", reason))
        return findings
    if config.transport == "nsq":
        findings.append(Finding("topics", "skipped", "transport is nsq: no Kafka partitions"))
    else:
        topics = list(dict.fromkeys([*config.topics, *extra_topics]))
        if cdc_topic is not None and "%{" not in cdc_topic and cdc_topic not in topics:
            topics.append(cdc_topic)
        findings += check_topics(settings, config.num_shards, topics)
    findings += check_running(settings, config, source)
    if sample_s > 0:
        findings += check_flow(settings, config, sample_s)
    findings += check_checkpoints(settings, reader_sources(settings, source))
    return findings


def reader_sources(settings: Settings, source: str) -> list[str]:
    """The configured source and every source with a reader or a checkpoint in etcd."""
    from shardctl.cli.read_model import read_status
    from shardctl.core.etcd import EtcdError
    from shardctl.core.records import RecordError

    try:
        readers = asyncio.run(read_status(settings)).readers
    except (EtcdError, RecordError, OSError):
        readers = {}  # check_running has reported it
    return sorted({source, *readers})


SYMBOL = {"ok": ("ok", "green"), "warning": ("warn", "yellow"), "problem": ("FAIL", "red")}


def doctor(
    topic: Annotated[
        list[str] | None, typer.Option(help="Another Kafka topic to check; repeatable.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")] = False,
    sample: Annotated[
        float,
        typer.Option(
            help="Seconds between the two samples of lag and dead letters (0: skip them).",
            min=0,
        ),
    ] = 2.0,
    config: ConfigOpt = None,
    cluster: ClusterOpt = None,
) -> None:
    """Check etcd, the cluster config, the source's binlog settings, the CDC user's
    grants, the topics' partitions, and what runs (leaders, workers, shard owners);
    for each problem, say how to fix it."""
    from cdc.options import load_cdc_options
    from shardctl.core.config import ConfigError, load_settings

    try:
        settings = load_settings(config, cluster=cluster)
        options = load_cdc_options(config, {})
    except ConfigError as exc:
        typer.secho(f"FAIL settings: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(EXIT_USAGE) from None
    findings = run_checks(
        settings, options.server_id, options.kafka_topic, topic or [], options.source, sample
    )
    problems = sum(f.level == "problem" for f in findings)
    if as_json:
        typer.echo(json.dumps([asdict(f) for f in findings], indent=2))
    else:
        for f in findings:
            label, colour = SYMBOL.get(f.level, ("skip", "white"))
            typer.echo(f"{typer.style(f'{label:<4}', fg=colour)} {f.check}: {f.what}")
            if f.fix and f.level != "ok":
                typer.echo(f"     fix: {f.fix}")
        typer.echo(f"\n{problems} problem(s)" if problems else "\nno problems found")
    if problems:
        raise typer.Exit(EXIT_FAILURE)
