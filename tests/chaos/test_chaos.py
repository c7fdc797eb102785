"""A short seeded chaos run over the whole pipeline (MariaDB -> CDC -> Kafka -> SQL sink).

One of each fault (kill -9 of a worker, of the coordinator leader and of the CDC
leader; a worker frozen past its TTL and resumed; restarts of etcd, Kafka and
MariaDB; a bootstrap across a CDC failover; the sink's own MariaDB down past the
retry window; a transaction under session binlog settings, then the operator's
fix) under a steady load with multi-table and large transactions, primary-key
updates, a second source into the same topic and rows over the topic's
max.message.bytes, and a handler that rejects some rows always and others once.
The seed is printed; set SHARDCTL_CHAOS_SEED to replay a schedule,
SHARDCTL_CHAOS_KINDS (short names, see tests/chaos/schedule.py, or `all`) to choose
the kinds, and SHARDCTL_CHAOS_SINK=postgres for the PostgreSQL sink instead of the
MariaDB one (`sql`, the default; the DDL step is MariaDB's only).

By default the short run leaves out `ddl`: a DDL step first waits for the sink to
apply everything before it (it alters the sink's table as an operator would, after
the source's), which can add minutes to a run meant to take a few. `make soak` runs
every kind.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shardctl.core.config import Settings
from tests.chaos.run import ChaosConfig, ChaosRun
from tests.chaos.schedule import KIND_NAMES, FaultKind, LoadKind, parse_kinds
from tests.conftest import StackHandle

pytestmark = pytest.mark.chaos

DEFAULT_SEED = 7
SHORT_RUN_KINDS = ",".join(name for name in KIND_NAMES if name != "ddl")


def test_short_seeded_run_loses_and_duplicates_nothing(
    chaos_stack: StackHandle, chaos_db: str, unique: str, tmp_path: Path
) -> None:
    seed = int(os.environ.get("SHARDCTL_CHAOS_SEED", DEFAULT_SEED))
    kinds, load_kinds = parse_kinds(os.environ.get("SHARDCTL_CHAOS_KINDS", SHORT_RUN_KINDS))
    sink = os.environ.get("SHARDCTL_CHAOS_SINK", "sql")
    settings: Settings = chaos_stack.settings(cluster=unique)
    config = ChaosConfig(
        seed=seed,
        duration_s=40.0,
        rounds=1,
        large_rows=5_000,
        large_every_s=25.0,
        kinds=kinds,
        load_kinds=load_kinds,
        sink_outage_s=(6.0, 8.0),
        sink=sink,
    )
    print(f"chaos seed {seed}, sink {sink}, kinds {[k.name for k in (*kinds, *load_kinds)]}")
    run = ChaosRun(chaos_stack, settings, chaos_db, tmp_path, config)
    try:
        report = run.run()
    finally:
        run.close()
    print(report.render())
    v = report.verdict
    assert v is not None
    assert {r.fault.kind for r in report.recoveries} == set(kinds), report.render()
    assert report.findings == [], report.render()
    assert all(r.seconds is not None for r in report.recoveries), report.render()
    assert v.lost == [], f"lost changes (first 20): {v.lost[:20]}"
    # Workers and sink never apply a topic record twice (P1, P5), and a change the
    # reader published again after a failover (same event id) is not applied again.
    assert v.sink_duplicated == [], f"applied twice (first 20): {v.sink_duplicated[:20]}"
    assert v.duplicated == [], f"duplicated changes (first 20): {v.duplicated[:20]}"
    assert v.poison_applied == [], v.poison_applied[:20]
    assert v.unpublished == [] and v.split_event_ids == [], report.render()
    assert v.poisoned > 0, "the run committed no poisoned row: the DLQ check proves nothing"
    assert v.dlq_exact, f"DLQ missing {v.dlq_missing[:20]}, unexpected {v.dlq_unexpected[:20]}"
    assert v.partial_rows == [], v.partial_rows[:5]
    if LoadKind.OVERSIZED_ROWS in load_kinds:
        assert v.oversized > 0, "no row over the topic's limit: the reader DLQ check is empty"
    assert v.reader_dlq_exact, (
        f"reader DLQ missing {v.oversized_missing[:20]}, unexpected {v.oversized_unexpected[:20]}"
    )
    assert v.oversized_applied == [], v.oversized_applied[:20]
    if LoadKind.PK_UPDATES in load_kinds:
        assert report.pk_moves > 0, "no primary-key update was committed"
    if LoadKind.SECOND_SOURCE in load_kinds:
        assert report.second_source_transactions > 0, report.render()
    if FaultKind.SESSION_BINLOG in kinds:
        assert report.operator_fixes == 1 and v.skipped_by_operator > 0, report.render()
    assert report.overlap == 0, report.render()
    assert all(report.tables_equal.values()), report.tables_equal
    assert report.workload_errors == [], report.workload_errors
    assert report.crashed == [], report.render()
