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

Exit code: 0 when nothing is wrong (warnings allowed), 1 when a check found a
problem, 2 when the settings themselves are invalid.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from shardctl.cli.common import EXIT_FAILURE, EXIT_USAGE, ClusterOpt, ConfigOpt

if TYPE_CHECKING:
    from shardctl.config import Settings
    from shardctl.records import ClusterConfig

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
    from shardctl.etcd import EtcdClient, EtcdError
    from shardctl.keyspace import Keyspace
    from shardctl.records import ClusterConfig, RecordError

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
    from shardctl.etcd import EtcdClient, EtcdError
    from shardctl.keyspace import Keyspace
    from shardctl.records import OffsetRecord, RecordError

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
    from shardctl.cli.coordination import maintenance_banner
    from shardctl.records import Maintenance, RecordError

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
        maintenance_banner(record.model_dump()),
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
    """Leaders, workers and owners, read from etcd (which answered a moment ago)."""
    from shardctl.cli.live import shard_ranges
    from shardctl.etcd import EtcdClient, EtcdError
    from shardctl.keyspace import Keyspace
    from shardctl.records import Assignment, RecordError, WorkerRecord

    keys = Keyspace.of(settings)

    async def read() -> tuple[Any, Any, Any, Any, Any]:
        async with EtcdClient(settings.etcd) as client:
            return (
                await client.get(keys.coordinator_leader),
                await client.get_prefix(f"{keys.root}cdc/"),
                await client.get_prefix(keys.workers_prefix),
                await client.get_prefix(keys.owners_prefix),
                await client.get(keys.assignment),
            )

    try:
        leader, cdc, workers, owners, assignment_kv = asyncio.run(
            asyncio.wait_for(read(), settings.etcd.timeout_s * 4)
        )
    except (EtcdError, TimeoutError, OSError) as exc:
        return [Finding("running", "problem", f"cannot read the cluster's state: {exc}")]
    found: list[Finding] = []
    if leader is None:
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
            Finding(
                "coordinator",
                "ok",
                f"{leader.value.decode()} leads (token {leader.create_revision})",
            )
        )
    prefix = f"{keys.root}cdc/"
    leaders: dict[str, str] = {}
    sources = {source}
    for kv in cdc.items:
        name, _, rest = kv.key[len(prefix) :].partition("/")
        if rest == "leader":
            leaders[name] = kv.value.decode()
        if rest in ("leader", "checkpoint"):
            sources.add(name)
    for name in sorted(sources):
        if name in leaders:
            found.append(Finding("cdc reader", "ok", f"source {name}: {leaders[name]} leads"))
        else:
            found.append(
                Finding(
                    "cdc reader",
                    "problem",
                    f"source {name}: no reader leads, so its binlog is not published",
                    f"start `shardctl cdc run --source {name}` (two: one stands by)",
                )
            )
    try:
        records = [WorkerRecord.decode(kv.key, kv.value) for kv in workers.items]
        assignment = (
            Assignment.decode(assignment_kv.key, assignment_kv.value) if assignment_kv else None
        )
    except RecordError as exc:
        return [*found, Finding("workers", "problem", str(exc))]
    draining = sum(r.state == "draining" for r in records)
    if not records:
        found.append(
            Finding(
                "workers",
                "problem",
                "no worker is registered: nothing consumes the shards",
                "start `shardctl worker run --handler ...`",
            )
        )
    else:
        found.append(Finding("workers", "ok", f"{len(records)} registered ({draining} draining)"))
    owned = {keys.shard_of_owner_key(kv.key) for kv in owners.items}
    num_shards = assignment.num_shards if assignment is not None else config.num_shards
    unowned = sorted(set(range(num_shards)) - owned)
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


# -- the command ------------------------------------------------------------------------


def run_checks(
    settings: Settings,
    reader_server_id: int,
    cdc_topic: str | None,
    extra_topics: list[str],
    source: str = "default",
) -> list[Finding]:
    findings, config, etcd_ok = check_etcd(settings)
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
    return findings


SYMBOL = {"ok": ("ok", "green"), "warning": ("warn", "yellow"), "problem": ("FAIL", "red")}


def doctor(
    topic: Annotated[
        list[str] | None, typer.Option(help="Another Kafka topic to check; repeatable.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")] = False,
    config: ConfigOpt = None,
    cluster: ClusterOpt = None,
) -> None:
    """Check etcd, the cluster config, the source's binlog settings, the CDC user's
    grants, the topics' partitions, and what runs (leaders, workers, shard owners);
    for each problem, say how to fix it."""
    from cdc.options import load_cdc_options
    from shardctl.config import ConfigError, load_settings

    try:
        settings = load_settings(config, cluster=cluster)
        options = load_cdc_options(config, {})
    except ConfigError as exc:
        typer.secho(f"FAIL settings: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(EXIT_USAGE) from None
    findings = run_checks(
        settings, options.server_id, options.kafka_topic, topic or [], options.source
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
