"""The read model's derived facts, and the live view of `status --watch` at 1000 shards:
it fits the screen, and the shards it keeps are the ones that need a look."""

from __future__ import annotations

import dataclasses
import io

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from shardctl.cli.live import LiveView, Rates, Snapshot
from shardctl.core.records import Assignment, ClusterConfig, WorkerRecord
from shardctl.core.status import ClusterStatus, Holder, WorkerStatus, shard_ranges

SHARDS = 1000


def cluster(num_workers: int, unowned: set[int], shards: int = SHARDS) -> ClusterStatus:
    """`shards` shards dealt round-robin over `num_workers` workers, all owned but `unowned`."""
    ids = [f"worker-{n}" for n in range(num_workers)]
    owners = [ids[s % num_workers] for s in range(shards)]
    holders = {s: Holder(owners[s], 100 + s) for s in range(shards) if s not in unowned}
    return ClusterStatus(
        cluster="c",
        leader=Holder("coordinator-1", 7),
        assignment=Assignment(generation=3, num_shards=shards, owners=list(owners)),
        config=ClusterConfig(num_shards=shards, topics=["t"]),
        maintenance=None,
        workers=[
            WorkerStatus(
                id=wid,
                record=WorkerRecord(host="h", pid=n + 1),
                assigned=[s for s in range(shards) if owners[s] == wid],
                owned=[s for s, h in sorted(holders.items()) if h.id == wid],
            )
            for n, wid in enumerate(ids)
        ],
        owners=holders,
        readers={"default": "reader-1"},
    )


def snapshot(state: ClusterStatus, lags: dict[int, int]) -> Snapshot:
    """Every shard committed at 1000; the end offset is 1000 plus its lag."""
    positions = {s: 1000 for s in range(state.shard_count)}
    ends = {s: 1000 + lags.get(s, 0) for s in range(state.shard_count)}
    return Snapshot(0.0, state, positions, ends)


def rendered(view: LiveView, snap: Snapshot, height: int) -> list[str]:
    console = Console(file=io.StringIO(), width=160, height=height, record=True)
    console.print(view.render(snap, Rates(events_per_s=None, rebalances=0)))
    return console.export_text().rstrip("\n").splitlines()


def shard_rows(lines: list[str]) -> list[tuple[int, str]]:
    """(shard, owner) of each row of the shard table, in order."""
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("shards"))
    rows = []
    for line in lines[start:]:
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if len(cells) == 4 and cells[0].isdigit():
            rows.append((int(cells[0]), cells[1]))
    return rows


def test_derived_facts_of_the_read_model() -> None:
    state = cluster(3, unowned={5, 6, 700}, shards=SHARDS)
    assert state.unowned == [5, 6, 700]
    assert state.in_handoff == [5, 6, 700]  # assigned, but nobody holds the owner key
    assert state.unassigned == [] and state.absent_owners == {}
    document = state.to_json()
    assert document["leader"] == {"id": "coordinator-1", "token": 7}
    assert document["generation"] == 3 and document["num_shards"] == SHARDS
    assert [w["id"] for w in document["workers"]] == ["worker-0", "worker-1", "worker-2"]
    assert shard_ranges(document["in_handoff"]) == "5-6,700"


def test_a_worker_the_assignment_names_but_not_registered_is_an_absent_owner() -> None:
    state = cluster(3, unowned=set(), shards=9)
    gone = dataclasses.replace(state, workers=state.workers[1:])
    assert gone.absent_owners == {"worker-0": [0, 3, 6]}


def test_1000_shards_fit_the_screen_unowned_first_then_most_lag() -> None:
    state = cluster(3, unowned={5, 6, 700})
    lags = {512: 900, 7: 500, 999: 300, 40: 1}
    lines = rendered(LiveView("watch", height=40), snapshot(state, lags), height=40)
    assert len(lines) <= 40
    rows = shard_rows(lines)
    assert [shard for shard, _ in rows[:7]] == [5, 6, 700, 512, 7, 999, 40]
    assert rows[0][1] == "-" and rows[3][1] == "worker-2"  # 512 % 3 == 2
    assert any("of 1,000 shown" in line for line in lines)
    assert any("997 of 1,000 owned" in line for line in lines)
    assert any("1,701" in line for line in lines)  # the total lag


def test_without_a_height_every_shard_gets_a_row() -> None:
    state = cluster(2, unowned=set(), shards=60)
    rows = shard_rows(rendered(LiveView("watch"), snapshot(state, {}), height=40))
    assert [shard for shard, _ in rows] == list(range(60))


@settings(max_examples=40, deadline=None)
@given(
    # 32 lines: the panel, two tables' rules, 8 event lines, a worker and 5 shards.
    height=st.integers(min_value=32, max_value=90),
    num_workers=st.integers(min_value=1, max_value=40),
    unowned=st.sets(st.integers(min_value=0, max_value=SHARDS - 1), max_size=40),
    events=st.integers(min_value=0, max_value=12),
)
def test_the_view_never_outgrows_its_height(
    height: int, num_workers: int, unowned: set[int], events: int
) -> None:
    view = LiveView("watch", height=height)
    view.events = [f"step {n}" for n in range(events)]
    state = cluster(num_workers, unowned)
    lines = rendered(view, snapshot(state, {s: s % 17 for s in range(SHARDS)}), height)
    assert len(lines) <= height
    shown = [shard for shard, _ in shard_rows(lines)]
    # The unowned shards come first, as many as fit.
    assert shown[: len(unowned)] == sorted(unowned)[: len(shown)]
