"""What a handler receives: one CDC event of an owned shard, and batches of them.

An `Event` is one transport message, decoded: the Maxwell JSON document (numbers
with a fraction come back as `decimal.Decimal`, never as float, so DECIMAL columns
stay exact) plus where it came from (shard, topic, transport position) and the
owner token under which it is being processed.

A `Batch` is a run of consecutive events of one shard, in transport order. Its
`next_positions` is where the shard resumes once the batch is done: for each topic,
the position after the batch's last event of that topic (Kafka offset + 1).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import msgspec


class EventDecodeError(ValueError):
    """A message is not a Maxwell JSON object; the message names shard, topic and position."""


def where(shard: int, topic: str, position: int | None) -> str:
    at = "" if position is None else f"@{position}"
    return f"shard {shard} {topic}{at}"


# msgspec gives a number with a fraction to the hook as its text: exact, like
# json's parse_float. It decodes a Maxwell message about four times faster than json.
_decode = msgspec.json.Decoder(float_hook=Decimal).decode


def decode_message(raw: bytes, shard: int, topic: str, position: int | None) -> dict[str, Any]:
    """The Maxwell document of `raw`, with exact decimals. Raises EventDecodeError."""
    try:
        doc = _decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError):
        # What msgspec refuses, json decides, as before: it reads what msgspec does
        # not (NaN, a byte order mark, lone surrogates), and its error names the place.
        try:
            doc = json.loads(raw, parse_float=Decimal)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise EventDecodeError(f"{where(shard, topic, position)}: not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise EventDecodeError(
            f"{where(shard, topic, position)}: expected a JSON object, got {type(doc).__name__}"
        )
    return doc


class Event(msgspec.Struct, frozen=True):
    """One decoded event. A frozen msgspec Struct rather than a frozen dataclass: it
    is made once per message, and a frozen dataclass's __init__ costs about ten times
    as much (it sets each field through object.__setattr__)."""

    shard: int
    topic: str
    position: int | None  # Kafka offset; None on NSQ, which has no replayable position
    key: bytes | None
    raw: bytes
    message: dict[str, Any]
    token: int

    @property
    def event_id(self) -> str | None:
        value = self.message.get("event_id")
        return value if isinstance(value, str) else None

    @property
    def source(self) -> str | None:
        """The source identity `<source name>/<server_id>` (shardctl.core.event_ids)."""
        value = self.message.get("source")
        return value if isinstance(value, str) else None

    @property
    def type(self) -> str:
        return str(self.message.get("type", ""))

    @property
    def database(self) -> str:
        return str(self.message.get("database", ""))

    @property
    def table(self) -> str:
        return str(self.message.get("table", ""))

    @property
    def data(self) -> dict[str, Any]:
        value = self.message.get("data")
        return value if isinstance(value, dict) else {}

    @property
    def old(self) -> dict[str, Any] | None:
        value = self.message.get("old")
        return value if isinstance(value, dict) else None

    def describe(self) -> str:
        """Where the event sits, for error messages: shard, topic@position, event id."""
        ident = f" event {self.event_id}" if self.event_id else ""
        return f"{where(self.shard, self.topic, self.position)}{ident}"


@dataclass(frozen=True, slots=True)
class Batch:
    shard: int
    token: int
    events: tuple[Event, ...]
    next_positions: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, shard: int, token: int, events: tuple[Event, ...]) -> Batch:
        positions: dict[str, int] = {}
        for event in events:
            if event.position is not None:
                positions[event.topic] = event.position + 1
        return cls(shard=shard, token=token, events=events, next_positions=positions)

    @property
    def last_event_id(self) -> str | None:
        for event in reversed(self.events):
            if event.event_id is not None:
                return event.event_id
        return None
