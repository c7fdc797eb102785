"""The Kafka dead-letter writer replaces a producer whose write failed.

An idempotent producer can take a fatal error across a broker restart; a writer that
kept it would fail every later letter, and the shard would wait forever. The broker
side is librdkafka's; here a stand-in producer plays the failures (a fatal delivery
error, a flush that times out) so the writer's own rule is what is tested.
"""

from __future__ import annotations

import json
from typing import Any

import confluent_kafka
import pytest

from workers.deadletters import DeadLetter, KafkaDeadLetterWriter


class FakeError:
    def __init__(self, text: str, fatal: bool) -> None:
        self._text, self._fatal = text, fatal

    def fatal(self) -> bool:
        return self._fatal

    def __str__(self) -> str:
        return self._text


class ScriptedProducer:
    """Plays one outcome per producer made: 'ok', 'fatal' or 'timeout'."""

    script: list[str] = []
    made: list[ScriptedProducer] = []

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.outcome = ScriptedProducer.script.pop(0)
        self.delivered: list[bytes] = []
        self.purged = False
        self._pending: list[tuple[bytes, Any]] = []
        ScriptedProducer.made.append(self)

    def produce(self, topic: str, value: bytes, key: Any, on_delivery: Any, headers: Any) -> None:
        self._pending.append((value, on_delivery))

    def flush(self, timeout: float) -> int:
        if self.outcome == "timeout" and timeout > 0:
            return len(self._pending)
        for value, callback in self._pending:
            if self.outcome == "fatal":
                callback(FakeError("Broker: out of order sequence number", fatal=True), None)
            else:
                self.delivered.append(value)
                callback(None, None)
        self._pending.clear()
        return 0

    def purge(self) -> None:
        self.purged = True
        self._pending.clear()


def letter(n: int) -> DeadLetter:
    return DeadLetter(
        shard=1,
        topic="shop",
        position=n,
        key=b"k",
        raw=b'{"n": %d}' % n,
        event_id=f"0-1-{n}#0",
        token=7,
        error="bad row",
        error_type="ValueError",
        attempts=5,
        handler="h",
    )


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> type[ScriptedProducer]:
    ScriptedProducer.script = []
    ScriptedProducer.made = []
    monkeypatch.setattr(confluent_kafka, "Producer", ScriptedProducer)
    return ScriptedProducer


@pytest.mark.parametrize("failure", ["fatal", "timeout"])
def test_a_failed_write_gets_a_new_producer_for_the_retry(
    scripted: type[ScriptedProducer], failure: str
) -> None:
    scripted.script = [failure, "ok"]
    writer = KafkaDeadLetterWriter({"bootstrap.servers": "unused:1"}, "w1", timeout_s=0.01)
    with pytest.raises((RuntimeError, TimeoutError), match=r"dead-letter topic shop\.dlq"):
        writer._write_blocking(letter(1))
    first = scripted.made[0]
    assert first.purged, "the failed producer's queue was not purged"
    writer._write_blocking(letter(1))  # the retry
    assert len(scripted.made) == 2, "the retry reused the failed producer"
    [stored] = scripted.made[1].delivered
    assert json.loads(stored)["event_id"] == "0-1-1#0"
    assert first.delivered == [], "the failed producer delivered a letter after all"


def test_a_healthy_producer_is_kept(scripted: type[ScriptedProducer]) -> None:
    scripted.script = ["ok"]
    writer = KafkaDeadLetterWriter({"bootstrap.servers": "unused:1"}, "w1")
    for n in range(3):
        writer._write_blocking(letter(n))
    assert len(scripted.made) == 1
    assert len(scripted.made[0].delivered) == 3


def test_the_fatal_error_is_named(scripted: type[ScriptedProducer]) -> None:
    scripted.script = ["fatal"]
    writer = KafkaDeadLetterWriter({"bootstrap.servers": "unused:1"}, "w1")
    with pytest.raises(RuntimeError, match=r"out of order sequence number \(fatal\)"):
        writer._write_blocking(letter(1))
