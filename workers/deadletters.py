"""Dead letters: events a handler rejected, kept with the error so none is lost.

A dead letter is one JSON document:

    {"error": "...", "error_type": "ValueError", "attempts": 5, "handler": "mod:fn",
     "shard": 3, "topic": "shop", "position": 42, "event_id": "0-1-77#0",
     "token": 1234, "worker": "w1", "failed_at": 1700000000.1,
     "event": "<the original message, as text>"}       (or "event_base64" if not UTF-8)

It goes to the dead-letter topic named by `template` (default "{topic}.dlq"), keyed
by the original message key. Writers: Kafka (idempotent, acks=all; the write returns
only once the broker has it) and NSQ (nsqd's HTTP /pub).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Protocol

from shardctl.core.kafka_log import kafka_log
from workers.events import Event, where

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "{topic}.dlq"


@dataclass(frozen=True)
class DeadLetter:
    shard: int
    topic: str
    position: int | None
    key: bytes | None
    raw: bytes
    event_id: str | None
    token: int
    error: str
    error_type: str
    attempts: int
    handler: str

    @classmethod
    def of(cls, event: Event, error: BaseException, attempts: int, handler: str) -> DeadLetter:
        return cls(
            shard=event.shard,
            topic=event.topic,
            position=event.position,
            key=event.key,
            raw=event.raw,
            event_id=event.event_id,
            token=event.token,
            error=str(error) or type(error).__name__,
            error_type=type(error).__name__,
            attempts=attempts,
            handler=handler,
        )

    @classmethod
    def undecodable(
        cls,
        shard: int,
        topic: str,
        position: int | None,
        key: bytes | None,
        raw: bytes,
        token: int,
        error: BaseException,
    ) -> DeadLetter:
        return cls(
            shard=shard,
            topic=topic,
            position=position,
            key=key,
            raw=raw,
            event_id=None,
            token=token,
            error=str(error),
            error_type=type(error).__name__,
            attempts=0,
            handler="(decoding)",
        )

    def describe(self) -> str:
        ident = f" event {self.event_id}" if self.event_id else ""
        return f"{where(self.shard, self.topic, self.position)}{ident}"

    def document(self, worker: str, now: float | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "error": self.error,
            "error_type": self.error_type,
            "attempts": self.attempts,
            "handler": self.handler,
            "shard": self.shard,
            "topic": self.topic,
            "position": self.position,
            "event_id": self.event_id,
            "token": self.token,
            "worker": worker,
            "failed_at": time.time() if now is None else now,
        }
        try:
            doc["event"] = self.raw.decode("utf-8")
        except UnicodeDecodeError:
            doc["event_base64"] = base64.b64encode(self.raw).decode("ascii")
        return doc

    def encode(self, worker: str, now: float | None = None) -> bytes:
        return json.dumps(self.document(worker, now), sort_keys=True).encode()


def dead_letter_topic(template: str, topic: str) -> str:
    try:
        return template.format(topic=topic)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            f"dead-letter topic template {template!r}: only {{topic}} may appear ({exc})"
        ) from None


class DeadLetterWriter(Protocol):
    async def write(self, letter: DeadLetter) -> None:
        """Store `letter` durably or raise; returning means it is stored."""


class KafkaDeadLetterWriter:
    """Dead letters to Kafka. The topic must exist (brokers may not auto-create).

    A producer whose write failed is closed and a new one made for the next try: an
    idempotent producer can take a fatal error across a broker restart (a sequence
    out of sync) and would fail every later write, so the shard would wait forever;
    and a timed-out letter purged from the old one is not delivered later behind the
    retry's copy. A letter that was in flight when it timed out may still land, so
    the dead-letter topic is at least once: its readers dedupe by `event_id`."""

    def __init__(
        self,
        client_config: dict[str, str],
        worker: str,
        template: str = DEFAULT_TEMPLATE,
        timeout_s: float = 30.0,
    ) -> None:
        self._config: dict[str, Any] = {
            **client_config,
            "enable.idempotence": "true",
            "acks": "all",
            "linger.ms": "0",
            "logger": kafka_log("worker dead-letter producer"),
        }
        self._producer: Any = None
        self._lock = threading.Lock()  # shards write from executor threads
        self._worker = worker
        self._template = template
        self._timeout_s = timeout_s

    def _current(self) -> Any:
        if self._producer is None:
            from confluent_kafka import Producer

            self._producer = Producer(self._config)
        return self._producer

    def _discard(self, producer: Any) -> None:
        from confluent_kafka import KafkaException

        self._producer = None
        try:
            producer.purge()
            producer.flush(0)
        except KafkaException as exc:  # a fatal producer may refuse even this
            log.warning("dead-letter producer: closing the failed producer: %s", exc)

    def _write_blocking(self, letter: DeadLetter) -> None:
        topic = dead_letter_topic(self._template, letter.topic)
        failures: list[str] = []

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                failures.append(f"{err} (fatal)" if err.fatal() else str(err))

        with self._lock:
            producer = self._current()
            try:
                producer.produce(
                    topic,
                    value=letter.encode(self._worker),
                    key=letter.key,
                    on_delivery=delivered,
                    headers=[("shardctl.error_type", letter.error_type.encode())],
                )
                remaining = producer.flush(self._timeout_s)
            except Exception:
                self._discard(producer)
                raise
            if failures or remaining:
                self._discard(producer)
            if failures:
                raise RuntimeError(f"dead-letter topic {topic}: delivery failed: {failures[0]}")
            if remaining:
                raise TimeoutError(
                    f"dead-letter topic {topic}: not acknowledged within {self._timeout_s}s"
                )

    async def write(self, letter: DeadLetter) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._write_blocking, letter)

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.flush(self._timeout_s)


class NsqDeadLetterWriter:
    """Dead letters to NSQ through nsqd's HTTP API (topics are created on publish)."""

    def __init__(
        self,
        nsqd_http_address: str,
        worker: str,
        template: str = DEFAULT_TEMPLATE,
        timeout_s: float = 10.0,
    ) -> None:
        self._base = (
            nsqd_http_address if "://" in nsqd_http_address else (f"http://{nsqd_http_address}")
        )
        self._worker = worker
        self._template = template
        self._timeout_s = timeout_s

    def _write_blocking(self, letter: DeadLetter) -> None:
        topic = dead_letter_topic(self._template, letter.topic)
        url = f"{self._base}/pub?{urllib.parse.urlencode({'topic': topic})}"
        request = urllib.request.Request(url, data=letter.encode(self._worker), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as reply:
                body = reply.read()
        except urllib.error.URLError as exc:
            raise RuntimeError(f"dead-letter topic {topic} at {self._base}: {exc}") from exc
        if body.strip() != b"OK":
            raise RuntimeError(f"dead-letter topic {topic} at {self._base}: nsqd said {body!r}")

    async def write(self, letter: DeadLetter) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._write_blocking, letter)
