"""What the chaos run checks, as pure functions over what it collected.

A row change is named by `ChangeKey` = (table, id, version, kind), kind "w" for an
insert or update and "d" for a delete. The source's trigger log gives the committed
changes; the sink's trigger log gives the applied effects; the topic and the
dead-letter topic give the published and the rejected events with their event ids.

    lost        committed, not poisoned, and never applied in the sink
    duplicated  applied more than once (or applied though never committed)
    sink_duplicated   applied more often than it is on the topic: the workers or
                the sink applied one record twice (their exactly-once is broken)
    reapplied_redeliveries   duplicated, but each application matches a record on
                the topic: the reader published the change again (allowed by P4,
                same event id) and the sink applied the copy as a new record
    poisoned    committed changes the handler rule rejects always: expected in the
                DLQ (each event id exactly once as a set) and never in the sink

Three more sources of records are accounted for exactly:
- an update that changes the primary key carries (in `old`) the delete of the old
  key, so it stands for two changes;
- a bootstrap publishes `bootstrap-insert` records of rows that may already be in
  the sink: each distinct bootstrap record may add one application of its change,
  and a poisoned row's bootstrap record is expected in the DLQ too;
- changes the operator skipped (`cdc checkpoint skip` past a transaction the reader
  refused) are never published; the bootstrap that follows restores their table,
  which the table comparison checks. Oversized changes go to the reader's
  dead-letter topic instead of the topic and the sink.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

ChangeKey = tuple[str, int, int, str]


ROW_TYPES = ("insert", "update", "delete")


class PartialRow(ValueError):
    """A row message without the columns every row has (a partial row image)."""


def change_of_message(message: dict[str, Any]) -> ChangeKey | None:
    """The change a Maxwell message carries, or None for anything but a row change
    (bootstrap records included: `bootstrap_change_of`)."""
    kind = message.get("type")
    data = message.get("data")
    if kind not in ROW_TYPES or not isinstance(data, dict):
        return None
    if not isinstance(data.get("id"), int) or not isinstance(data.get("version"), int):
        raise PartialRow(f"row message without id/version: {json.dumps(message)[:300]}")
    return (
        str(message.get("table")),
        int(data["id"]),
        int(data["version"]),
        "d" if kind == "delete" else "w",
    )


def moved_from(message: dict[str, Any]) -> ChangeKey | None:
    """The delete of the old key that an update changing the primary key implies."""
    old = message.get("old")
    data = message.get("data")
    if message.get("type") != "update" or not isinstance(old, dict) or "id" not in old:
        return None
    assert isinstance(data, dict)
    return (
        str(message.get("table")),
        int(old["id"]),
        int(old.get("version", data["version"])),
        "d",
    )


def bootstrap_change_of(message: dict[str, Any]) -> ChangeKey | None:
    data = message.get("data")
    if message.get("type") != "bootstrap-insert" or not isinstance(data, dict):
        return None
    return (str(message.get("table")), int(data["id"]), int(data["version"]), "w")


@dataclass
class Published:
    """Changes seen on the topic, with every event id each was published under."""

    event_ids: dict[ChangeKey, set[str]] = field(default_factory=dict)
    records: Counter[ChangeKey] = field(default_factory=Counter)
    messages: int = 0
    # Bootstrap records: change -> their event ids, and how many records.
    bootstrap_ids: dict[ChangeKey, set[str]] = field(default_factory=dict)
    bootstrap_records: Counter[ChangeKey] = field(default_factory=Counter)
    partial_rows: list[str] = field(default_factory=list)  # row messages missing columns

    @classmethod
    def of(cls, values: Iterable[bytes]) -> Published:
        out = cls()
        for raw in values:
            message = json.loads(raw)
            event_id = str(message.get("event_id"))
            copied = bootstrap_change_of(message)
            if copied is not None:
                out.bootstrap_records[copied] += 1
                out.bootstrap_ids.setdefault(copied, set()).add(event_id)
                continue
            try:
                key = change_of_message(message)
            except PartialRow as exc:
                out.partial_rows.append(str(exc))
                continue
            if key is None:
                continue
            out.messages += 1
            for change in (key, moved_from(message)):
                if change is not None:
                    out.records[change] += 1
                    out.event_ids.setdefault(change, set()).add(event_id)
        return out


@dataclass
class DeadLetters:
    """Event ids in the dead-letter topic, and how often each is there."""

    event_ids: Counter[str] = field(default_factory=Counter)
    changes: dict[str, ChangeKey | None] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)

    @classmethod
    def of(cls, values: Iterable[bytes]) -> DeadLetters:
        out = cls()
        for raw in values:
            letter = json.loads(raw)
            event_id = str(letter.get("event_id"))
            out.event_ids[event_id] += 1
            event = letter.get("event")
            try:
                out.changes[event_id] = (
                    change_of_message(json.loads(event)) if isinstance(event, str) else None
                )
            except PartialRow:
                out.changes[event_id] = None
            out.errors[str(letter.get("error_type"))] += 1
        return out


def row_of_reader_letter(letter: dict[str, Any]) -> tuple[str, int] | None:
    """(table, id) of a reader dead letter, from its Maxwell key (hash or array form)."""
    try:
        key = json.loads(str(letter.get("key")))
    except json.JSONDecodeError:
        return None
    if isinstance(key, dict) and isinstance(key.get("pk.id"), int):
        return str(letter.get("table")), int(key["pk.id"])
    if isinstance(key, list) and key and isinstance(key[-1], dict):
        ident = key[-1].get("id")
        if isinstance(ident, int):
            return str(letter.get("table")), ident
    return None


@dataclass
class ReaderDeadLetters:
    """Rows in the reader's dead-letter topic (messages the broker would not take)."""

    rows: Counter[tuple[str, int]] = field(default_factory=Counter)
    unreadable: list[str] = field(default_factory=list)  # letters naming no row

    @classmethod
    def of(cls, values: Iterable[bytes]) -> ReaderDeadLetters:
        out = cls()
        for raw in values:
            letter = json.loads(raw)
            row = row_of_reader_letter(letter)
            if row is None:
                out.unreadable.append(raw.decode(errors="replace")[:300])
            else:
                out.rows[row] += 1
        return out


@dataclass
class Verdict:
    committed: int
    applied: int
    lost: list[ChangeKey]
    duplicated: list[ChangeKey]
    sink_duplicated: list[ChangeKey]
    reapplied_redeliveries: list[ChangeKey]
    poisoned: int
    poison_applied: list[ChangeKey]
    unpublished: list[ChangeKey]
    split_event_ids: list[ChangeKey]  # one change published under two event ids
    dlq_missing: list[str]
    dlq_unexpected: list[str]
    dlq_repeated: int
    bootstrap_applied: int = 0  # applications of bootstrap records (allowed, counted)
    skipped_by_operator: int = 0
    oversized: int = 0
    oversized_missing: list[tuple[str, int]] = field(default_factory=list)
    oversized_unexpected: list[tuple[str, int]] = field(default_factory=list)
    oversized_applied: list[ChangeKey] = field(default_factory=list)
    partial_rows: list[str] = field(default_factory=list)

    @property
    def dlq_exact(self) -> bool:
        return not self.dlq_missing and not self.dlq_unexpected

    @property
    def reader_dlq_exact(self) -> bool:
        return not self.oversized_missing and not self.oversized_unexpected


def verdict(
    committed: Iterable[ChangeKey],
    applied: Iterable[ChangeKey],
    published: Published,
    dead: DeadLetters,
    is_poison: Callable[[ChangeKey], bool],
    *,
    skipped: Iterable[ChangeKey] = (),
    is_oversized: Callable[[ChangeKey], bool] = lambda _k: False,
    reader_dead: ReaderDeadLetters | None = None,
) -> Verdict:
    """`skipped`: changes of transactions the operator skipped after the reader
    refused them. `is_oversized`: changes whose message is over the topic's limit."""
    source = Counter(committed)
    sink = Counter(applied)
    skipped_set = set(skipped)
    poison = {key for key in source if is_poison(key)}
    oversized = {key for key in source if is_oversized(key) and key not in poison}
    copies = {key: len(ids) for key, ids in published.bootstrap_ids.items()}
    # A skipped change reaches the sink only through the bootstrap that follows, and
    # only if it is still the row's newest: the table comparison checks those rows.
    lost = sorted(
        k
        for k in source
        if k not in poison and k not in oversized and k not in skipped_set and sink[k] < source[k]
    )
    duplicated = sorted(
        k for k in sink if k not in poison and sink[k] > source[k] + copies.get(k, 0)
    )
    sink_duplicated = sorted(
        k for k in duplicated if sink[k] > published.records[k] + published.bootstrap_records[k]
    )
    expected_dlq = {
        eid
        for key in poison
        for eid in published.event_ids.get(key, set()) | published.bootstrap_ids.get(key, set())
    }
    in_dlq = set(dead.event_ids)
    rows_dead = reader_dead.rows if reader_dead is not None else Counter()
    oversized_rows = {(k[0], k[1]) for k in oversized}
    return Verdict(
        committed=sum(source.values()),
        applied=sum(sink.values()),
        lost=lost,
        duplicated=duplicated,
        sink_duplicated=sink_duplicated,
        reapplied_redeliveries=sorted(set(duplicated) - set(sink_duplicated)),
        poisoned=len(poison),
        poison_applied=sorted(k for k in poison if sink[k]),
        unpublished=sorted(
            k
            for k in source
            if k not in published.event_ids and k not in skipped_set and k not in oversized
        ),
        split_event_ids=sorted(k for k, ids in published.event_ids.items() if len(ids) > 1),
        dlq_missing=sorted(expected_dlq - in_dlq),
        dlq_unexpected=sorted(in_dlq - expected_dlq),
        dlq_repeated=sum(n - 1 for n in dead.event_ids.values()),
        bootstrap_applied=sum(
            min(max(0, sink[k] - source[k]), n) for k, n in copies.items() if k not in poison
        ),
        skipped_by_operator=len(skipped_set),
        oversized=len(oversized),
        oversized_missing=sorted(oversized_rows - set(rows_dead)),
        oversized_unexpected=sorted(set(rows_dead) - oversized_rows),
        oversized_applied=sorted(k for k in oversized if sink[k]),
        partial_rows=published.partial_rows,
    )
