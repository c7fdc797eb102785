"""The chaos run as a benchmark: seeded faults under load, then the report.

    python bench/chaos.py [--seed N] [--duration S] [--large-rows N] [--kinds K,K]
                          [--private-stack]

Runs the whole pipeline (MariaDB -> 2 CDC readers -> Kafka -> workers with the SQL
sink behind a failing-rule handler; 2 coordinators) under a steady write load with
multi-table and large transactions, injects the seeded fault schedule (kill -9 of
workers, of the coordinator leader and of the CDC leader, SIGSTOP past the TTL,
restarts of etcd, Kafka and MariaDB; bootstraps across a CDC failover, sink MariaDB
outages past the retry window, a transaction under session binlog settings and the
operator's fix), with primary-key updates, a second source into the same topic and
rows over the topic's max.message.bytes in the load, and prints: faults by kind,
recovery time per
fault, events processed, lost and duplicated, the DLQ check and the largest owner
overlap. The same seed gives the same schedule. It exits 1 if anything was lost,
duplicated or overlapped.

By default it uses the local stack (`shardctl dev up`) and restarts its services;
`--private-stack` starts its own etcd, MariaDB and Kafka on free ports instead. The
optional `mariadb2` and `mariadb_sink` services start when a kind needs them.
`--kinds` selects kinds by short name (default `all`); `--list-kinds` names them.
`--sink postgres` puts the PostgreSQL sink behind the workers (the stack's
`postgres` service; `all` then leaves out the MariaDB-only DDL step).
`make soak` runs it for 30 minutes with 100k-row transactions and every kind
(`make soak SOAK_SINK=postgres` for the PostgreSQL sink).
"""

from __future__ import annotations

import argparse
import random
import shutil
import socket
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shardctl.cli.dev import load_devstack
from tests.chaos.run import SINKS, ChaosConfig, ChaosRun, Report
from tests.chaos.schedule import KIND_NAMES, FaultKind, parse_kinds
from tests.conftest import StackHandle


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def passed(report: Report) -> bool:
    v = report.verdict
    return (
        v is not None
        and not v.lost
        and not v.duplicated
        and not v.poison_applied
        and not v.unpublished
        and v.dlq_exact
        and v.reader_dlq_exact
        and not v.oversized_applied
        and not v.partial_rows
        and not v.sink_duplicated
        and report.overlap == 0
        and all(report.tables_equal.values())
        and all(r.seconds is not None for r in report.recoveries)
        and not report.crashed
        and not report.workload_errors
        and not report.findings
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of load")
    parser.add_argument("--large-rows", type=int, default=10_000, help="rows per large txn")
    parser.add_argument("--large-every", type=float, default=60.0, help="seconds between them")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--shards", type=int, default=6)
    parser.add_argument("--ttl", type=int, default=3, help="lease TTL of every process")
    parser.add_argument("--pause", type=float, default=0.25, help="seconds between small txns")
    parser.add_argument(
        "--gap", type=float, nargs=2, default=(10.0, 30.0), help="seconds between faults"
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=None, help="seconds the sink may take to catch up"
    )
    parser.add_argument("--kinds", default="all", help="comma list of kinds, or all")
    parser.add_argument(
        "--sink",
        choices=SINKS,
        default="sql",
        help="the workers' sink: sql (MariaDB) or postgres; with postgres, all leaves out ddl",
    )
    parser.add_argument("--list-kinds", action="store_true", help="print the kinds and exit")
    parser.add_argument("--private-stack", action="store_true")
    args = parser.parse_args()
    if args.list_kinds:
        for short, kind in KIND_NAMES.items():
            print(f"{short:<18} {kind.value}")
        return 0
    try:
        kinds, load_kinds = parse_kinds(args.kinds)
    except ValueError as exc:
        parser.error(str(exc))
    if args.sink == "postgres" and FaultKind.DDL in kinds:
        if args.kinds != "all":
            parser.error("ddl alters MariaDB sink tables: it cannot run with --sink postgres")
        kinds = tuple(k for k in kinds if k is not FaultKind.DDL)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    print(f"chaos seed {seed}, sink {args.sink}, kinds {args.kinds}", flush=True)

    devstack = load_devstack()
    state = Path(tempfile.mkdtemp(prefix="chaos-"))
    private: Any = None
    if args.private_stack:
        ports = devstack.Ports(**{name: _free_port() for name in vars(devstack.Ports())})
        private = devstack.Stack(state_dir=state / "stack", ports=ports)
        private.up(["etcd", "mariadb", "kafka"], echo=lambda _m: None)
        stack = StackHandle(private)
    else:
        shared = devstack.Stack()
        shared.up(echo=lambda _m: None)
        stack = StackHandle(shared)
    name = "chaos" + uuid.uuid4().hex[:8]
    conn = stack.mysql_root()
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}`")
    conn.close()
    config = ChaosConfig(
        seed=seed,
        duration_s=args.duration,
        large_rows=args.large_rows,
        large_every_s=args.large_every,
        workers=args.workers,
        num_shards=args.shards,
        ttl=args.ttl,
        pause_s=args.pause,
        gap_s=(args.gap[0], args.gap[1]),
        drain_timeout_s=(
            args.drain_timeout
            if args.drain_timeout is not None
            else max(180.0, args.large_rows / 200)
        ),
        kinds=kinds,
        load_kinds=load_kinds,
        sink=args.sink,
    )
    run = ChaosRun(stack, stack.settings(cluster=name), name, state, config)
    try:
        report = run.run()
    finally:
        run.close()
        conn = stack.mysql_root()
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()
        if private is not None:
            private.down(echo=lambda _m: None)
            shutil.rmtree(state / "stack")  # its data; the process logs stay
    print(report.render())
    print(f"process logs: {state}")
    ok = passed(report)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
