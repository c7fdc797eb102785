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
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

ChangeKey = tuple[str, int, int, str]


def change_of_message(message: dict[str, Any]) -> ChangeKey | None:
    """The change a Maxwell message carries, or None for anything but a row change."""
    kind = message.get("type")
    data = message.get("data")
    if kind not in ("insert", "update", "delete") or not isinstance(data, dict):
        return None
    return (
        str(message.get("table")),
        int(data["id"]),
        int(data["version"]),
        "d" if kind == "delete" else "w",
    )


@dataclass
class Published:
    """Changes seen on the topic, with every event id each was published under."""

    event_ids: dict[ChangeKey, set[str]] = field(default_factory=dict)
    records: Counter[ChangeKey] = field(default_factory=Counter)
    messages: int = 0

    @classmethod
    def of(cls, values: Iterable[bytes]) -> Published:
        out = cls()
        for raw in values:
            message = json.loads(raw)
            key = change_of_message(message)
            if key is None:
                continue
            out.messages += 1
            out.records[key] += 1
            out.event_ids.setdefault(key, set()).add(str(message.get("event_id")))
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
            out.changes[event_id] = (
                change_of_message(json.loads(event)) if isinstance(event, str) else None
            )
            out.errors[str(letter.get("error_type"))] += 1
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

    @property
    def dlq_exact(self) -> bool:
        return not self.dlq_missing and not self.dlq_unexpected


def verdict(
    committed: Iterable[ChangeKey],
    applied: Iterable[ChangeKey],
    published: Published,
    dead: DeadLetters,
    is_poison: Callable[[ChangeKey], bool],
) -> Verdict:
    source = Counter(committed)
    sink = Counter(applied)
    poison = {key for key in source if is_poison(key)}
    lost = sorted(k for k in source if k not in poison and sink[k] < source[k])
    duplicated = sorted(k for k in sink if k not in poison and sink[k] > source[k])
    sink_duplicated = sorted(k for k in duplicated if sink[k] > published.records[k])
    expected_dlq = {eid for key in poison for eid in published.event_ids.get(key, ())}
    in_dlq = set(dead.event_ids)
    return Verdict(
        committed=sum(source.values()),
        applied=sum(sink.values()),
        lost=lost,
        duplicated=duplicated,
        sink_duplicated=sink_duplicated,
        reapplied_redeliveries=sorted(set(duplicated) - set(sink_duplicated)),
        poisoned=len(poison),
        poison_applied=sorted(k for k in poison if sink[k]),
        unpublished=sorted(k for k in source if k not in published.event_ids),
        split_event_ids=sorted(k for k, ids in published.event_ids.items() if len(ids) > 1),
        dlq_missing=sorted(expected_dlq - in_dlq),
        dlq_unexpected=sorted(in_dlq - expected_dlq),
        dlq_repeated=sum(n - 1 for n in dead.event_ids.values()),
    )
