"""What the Kafka sink forwarded of each source stream of one shard, to skip a change
the CDC reader published again (workers.sinks.kafka).

After a CDC failover the new reader publishes the tail of the old one again: the same
changes, with the same event ids, at new offsets. Per source topic and stream (the
message's source identity plus the id's own order stream, `shardctl.core.event_ids`) the
state holds:

    newest   the order key of the newest change forwarded
    txns     the fingerprint (ts:xid) of each of the newest `replay_window` forwarded
             transactions, by their place in the stream (`txn_text`)

A row change (insert, update, delete with an event id) is skipped only when BOTH hold:
its order key is not after `newest`, and its transaction is one of `txns` with the
same fingerprint: it is a change already forwarded, published again. Every other
change is forwarded, among them:

    a change at or below `newest` whose transaction is not remembered, or differs:
        the source went backwards (RESET MASTER, a restore, binlog renumbering), or a
        replay deeper than replay_window. It is forwarded, never dropped, with a
        warning; the stream's `newest` becomes its key (the stream starts again there)
    the later rows of a transaction whose first rows an earlier batch forwarded
    DDL, bootstrap rows, and messages without an event id (never deduplicated)

The state lives in records (key -> value) the sink writes to its compacted state
topic inside each batch's Kafka transaction, and reads back on assign:

    ["newest", topic, stream]      -> the order key, as comma-separated integers
    ["txn", topic, stream, txn]    -> the fingerprint; a tombstone (None) once pruned

A stream's transactions are pruned back to the newest `replay_window` once it holds
`prune_every` more, with tombstones in the same transaction. This module is the pure
logic; `apply` is the one way the state changes, from a record read back or one just
committed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from shardctl.core.event_ids import describe_key, order_key
from workers.events import Event
from workers.sinks.sql_common import fingerprint, txn_text

log = logging.getLogger(__name__)

# The changes ordered by their event id (DDL and bootstrap rows carry no source order).
ROW_TYPES = frozenset({"insert", "update", "delete"})

NEWEST = "newest"
TXN = "txn"

StateRecord = tuple[bytes, bytes | None]
Stream = tuple[str, str]  # (source topic, stream)


class StateRecordError(ValueError):
    """A record of the state topic the sink cannot read; the message names it."""


def newest_key(topic: str, stream: str) -> bytes:
    return json.dumps([NEWEST, topic, stream]).encode()


def txn_key(topic: str, stream: str, txn: str) -> bytes:
    return json.dumps([TXN, topic, stream, txn]).encode()


@dataclass
class Plan:
    """One batch: the events to forward, the state records to write with them, and
    how many replayed changes were skipped."""

    forward: list[Event] = field(default_factory=list)
    records: list[StateRecord] = field(default_factory=list)
    skipped: int = 0


class AppliedChanges:
    """The forwarded changes of one shard, per source topic and stream."""

    def __init__(self, shard: int, replay_window: int, prune_every: int) -> None:
        self.shard = shard
        self.replay_window = replay_window
        self.prune_every = prune_every
        self.newest: dict[Stream, tuple[int, ...]] = {}
        self.txns: dict[Stream, dict[str, str]] = {}

    def apply(self, key: bytes, value: bytes | None) -> None:
        """Take one state record (read back from the state topic, or just committed)."""
        try:
            parts = json.loads(key)
            kind, topic, stream = str(parts[0]), str(parts[1]), str(parts[2])
            if kind == NEWEST:
                if value is None:
                    self.newest.pop((topic, stream), None)
                else:
                    self.newest[(topic, stream)] = tuple(int(n) for n in value.split(b","))
            elif kind == TXN:
                txns = self.txns.setdefault((topic, stream), {})
                if value is None:
                    txns.pop(str(parts[3]), None)
                else:
                    txns[str(parts[3])] = value.decode()
            else:
                raise ValueError(f"unknown record kind {kind!r}")
        except (ValueError, IndexError, TypeError) as exc:
            raise StateRecordError(
                f"shard {self.shard}: state record {key!r} -> {value!r}: {exc}"
            ) from None

    def plan(self, events: Sequence[Event]) -> Plan:
        """What to forward of `events` and the records that say so; the state itself
        changes only when the records are applied (after the transaction commits)."""
        plan = Plan()
        newest: dict[Stream, tuple[int, ...]] = {}
        added: dict[Stream, dict[str, str]] = {}
        for event in events:
            event_id = event.event_id
            place = (
                order_key(event_id, event.source) if event_id and event.type in ROW_TYPES else None
            )
            if place is None:
                plan.forward.append(event)
                continue
            stream, key = place
            where = (event.topic, stream)
            seen = newest.get(where, self.newest.get(where))
            txn, print_ = txn_text(key), fingerprint(event)
            if seen is not None and key <= seen:
                remembered = added.get(where, {}).get(txn)
                if remembered is None:
                    remembered = self.txns.get(where, {}).get(txn)
                if remembered == print_:
                    plan.skipped += 1
                    continue
                log.warning(
                    "kafka sink: shard %d topic %s stream %s: %s is at or below the newest "
                    "forwarded change (%s) and is not a transaction forwarded there "
                    "(%s): the source went backwards (RESET MASTER, a restore) or the "
                    "reader replayed more than replay_window=%d transactions; forwarded",
                    self.shard,
                    event.topic,
                    stream,
                    event.describe(),
                    describe_key(seen),
                    "none remembered" if remembered is None else f"ts:xid {remembered}",
                    self.replay_window,
                )
            newest[where] = key
            added.setdefault(where, {})[txn] = print_
            plan.forward.append(event)
        for (topic, stream), key in newest.items():
            plan.records.append((newest_key(topic, stream), ",".join(map(str, key)).encode()))
        for (topic, stream), txns in added.items():
            for txn, print_ in txns.items():
                plan.records.append((txn_key(topic, stream, txn), print_.encode()))
            plan.records.extend(self._pruned(topic, stream, txns))
        return plan

    def _pruned(self, topic: str, stream: str, added: dict[str, str]) -> list[StateRecord]:
        """Tombstones for the oldest remembered transactions of a stream, once it holds
        `prune_every` more than `replay_window` with `added`."""
        held = self.txns.get((topic, stream), {}).keys() | added.keys()
        if len(held) < self.replay_window + self.prune_every:
            return []
        oldest = sorted(held)[: len(held) - self.replay_window]
        return [(txn_key(topic, stream, txn), None) for txn in oldest]
