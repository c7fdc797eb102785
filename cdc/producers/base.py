"""The producer interface: publish messages, report each delivery, never lose one.

A producer calls `on_ack` once per message, after the message is durably
accepted by the broker (or, for a message too large for it, after its
dead-letter record is). A message that cannot be delivered is never dropped and
never acknowledged: the failure is kept and raised as `DeliveryError` from the
next `poll()` or `flush()`, and the reader stops without advancing its checkpoint.
There is no mode that ignores producer errors.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Ack = Callable[[], None]

_TEMPLATE_VAR = re.compile(r"%\{(database|table)\}")


class DeliveryError(Exception):
    """A message could not be delivered; the checkpoint must not move past it."""


@dataclass(slots=True)
class Outgoing:
    """A formatted message with its destination shard. Treat it as immutable (not
    declared frozen because frozen dataclasses are slow to build, once per row)."""

    key: bytes
    value: bytes
    shard: int
    event_id: str
    database: str
    table: str
    # A topic template for this message instead of the producer's (DDL topic).
    topic: str | None = None

    def __reduce__(self) -> tuple[type[Outgoing], tuple[Any, ...]]:
        # Pickled by the thousand between the reader's processes: as a plain tuple
        # of fields, which is several times cheaper than the slots state.
        return Outgoing, (
            self.key,
            self.value,
            self.shard,
            self.event_id,
            self.database,
            self.table,
            self.topic,
        )

    @property
    def position(self) -> str:
        """The binlog position part of the event id (file:pos or GTID)."""
        return self.event_id.rpartition("#")[0] or self.event_id


def render_topic(template: str, database: str, table: str) -> str:
    """Maxwell's topic template: `%{database}` and `%{table}` are substituted."""
    return _TEMPLATE_VAR.sub(lambda m: database if m.group(1) == "database" else table, template)


def _primary_key_of(message: Outgoing) -> dict[str, Any]:
    """The primary key columns, from the message key `{"database","table","pk.<col>"...}`."""
    try:
        key = json.loads(message.key)
    except ValueError:
        return {}
    if not isinstance(key, dict):
        return {}
    return {name[3:]: value for name, value in key.items() if name.startswith("pk.")}


def _type_of(message: Outgoing) -> str | None:
    try:
        value = json.loads(message.value)
    except ValueError:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    return kind if isinstance(kind, str) else None


def dead_letter_document(
    message: Outgoing, destination: str, error: str, reason: str | None = None
) -> bytes:
    """The record that stands in for a message the broker will not take.

    Maxwell's skeleton (`database`, `table`, `type`, `reason`, and `data` with only the
    primary key columns), with where the message was and why it failed beside it."""
    return json.dumps(
        {
            "database": message.database,
            "table": message.table,
            "type": _type_of(message),
            "reason": reason or error,
            "data": _primary_key_of(message),
            "event_id": message.event_id,
            "position": message.position,
            "shard": message.shard,
            "error": error,
            "key": message.key.decode("utf-8", errors="backslashreplace"),
            "destination": destination,
            "size": len(message.value),
        },
        separators=(",", ":"),
    ).encode()


class Producer(ABC):
    """Publishes `Outgoing` messages; see the module docstring for the contract."""

    name: str = "producer"

    @abstractmethod
    def send(self, message: Outgoing, on_ack: Ack) -> None:
        """Queue one message; may block for back-pressure."""

    def send_many(self, messages: Sequence[Outgoing], on_ack: Ack) -> None:
        """Queue messages in order; `on_ack` is called once per message delivered."""
        for message in messages:
            self.send(message, on_ack)

    @abstractmethod
    def poll(self, timeout: float = 0.0) -> None:
        """Serve delivery reports; raise DeliveryError if a delivery failed."""

    @abstractmethod
    def flush(self, timeout: float) -> None:
        """Deliver everything queued; raise DeliveryError on failure or timeout."""

    def close(self) -> None:  # noqa: B027 - most producers hold nothing to release
        """Release resources; undelivered messages stay unacknowledged."""


class FanOutProducer(Producer):
    """Publishes each message to several producers; acknowledged when all have it."""

    name = "fanout"

    def __init__(self, producers: list[Producer]) -> None:
        if not producers:
            raise ValueError("FanOutProducer needs at least one producer")
        self.producers = producers

    def send(self, message: Outgoing, on_ack: Ack) -> None:
        remaining = [len(self.producers)]

        def one_done() -> None:
            remaining[0] -= 1
            if remaining[0] == 0:
                on_ack()

        for producer in self.producers:
            producer.send(message, one_done)

    def poll(self, timeout: float = 0.0) -> None:
        for producer in self.producers:
            producer.poll(timeout / len(self.producers))

    def flush(self, timeout: float) -> None:
        for producer in self.producers:
            producer.flush(timeout)

    def close(self) -> None:
        for producer in self.producers:
            producer.close()
