"""NSQ producer: one topic per shard, `<topic>.<shard>`, published in `mpub` batches.

Messages are batched per destination topic and published with nsqd's HTTP
`/mpub?binary=true` (length-prefixed, so values may hold any bytes). nsqd
answers only after the batch is in its queue, and that answer is the
acknowledgement of every message of the batch. A batch that fails is retried a
few times and then raised as `DeliveryError`; its messages are never
acknowledged.

A message larger than nsqd's `--max-msg-size` is replaced by a dead-letter
record (key, event id, position, size, error) published to
`<dead_letter_topic>.<shard>`.

NSQ itself keeps no order and replays nothing; consumers must be idempotent
(every message carries its `event_id`).
"""

from __future__ import annotations

import http.client
import logging
import re
import struct
import time
import urllib.parse

from cdc.producers.base import (
    Ack,
    DeliveryError,
    Outgoing,
    Producer,
    dead_letter_document,
    render_topic,
)
from shardctl.core.backoff import Backoff
from shardctl.core.config import ConfigError

log = logging.getLogger(__name__)

_TOPIC_NAME = re.compile(r"^[.a-zA-Z0-9_-]{1,64}$")


class _Batch:
    __slots__ = ("acks", "bytes", "messages", "started")

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.acks: list[Ack] = []
        self.bytes = 0
        self.started = time.monotonic()


class NsqProducer(Producer):
    name = "nsq"

    def __init__(
        self,
        http_address: str,
        topic_template: str,
        dead_letter_topic: str,
        max_batch_messages: int = 500,
        max_batch_bytes: int = 4 * 1024 * 1024,
        max_message_bytes: int = 1024 * 1024,
        linger_s: float = 0.02,
        retries: int = 3,
        timeout_s: float = 10.0,
    ) -> None:
        host, sep, port = http_address.rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError(f"nsq.nsqd_http_address: {http_address!r} is not host:port")
        self._host, self._port = host, int(port)
        self._template = topic_template
        self._dead_letter_topic = dead_letter_topic
        self._max_messages = max_batch_messages
        self._max_bytes = max_batch_bytes
        self._max_message = max_message_bytes
        self._linger_s = linger_s
        self._retries = retries
        self._timeout_s = timeout_s
        self._batches: dict[str, _Batch] = {}
        self._connection: http.client.HTTPConnection | None = None
        self.dead_lettered = 0

    def topic_for(self, database: str, table: str, shard: int, template: str | None = None) -> str:
        topic = f"{render_topic(template or self._template, database, table)}.{shard}"
        if not _TOPIC_NAME.match(topic):
            raise DeliveryError(
                f"nsq: topic {topic!r} (from template {self._template!r} for "
                f"{database}.{table}) is not a valid NSQ topic name ([.a-zA-Z0-9_-], 1-64)"
            )
        return topic

    def send(self, message: Outgoing, on_ack: Ack) -> None:
        if len(message.value) > self._max_message:
            self.dead_lettered += 1
            destination = self.topic_for(
                message.database, message.table, message.shard, message.topic
            )
            log.error(
                "nsq: %s (%d bytes) too large for %s; sending it to %s.%d",
                message.event_id,
                len(message.value),
                destination,
                self._dead_letter_topic,
                message.shard,
            )
            topic = f"{self._dead_letter_topic}.{message.shard}"
            value = dead_letter_document(
                message,
                destination,
                f"message of {len(message.value)} bytes exceeds "
                f"nsq max message size {self._max_message}",
            )
        else:
            topic = self.topic_for(message.database, message.table, message.shard, message.topic)
            value = message.value
        batch = self._batches.get(topic)
        if batch is None:
            batch = self._batches[topic] = _Batch()
        if batch.messages and (
            len(batch.messages) >= self._max_messages
            or batch.bytes + len(value) + 4 > self._max_bytes
        ):
            self._publish(topic, self._batches.pop(topic))
            batch = self._batches[topic] = _Batch()
        batch.messages.append(value)
        batch.acks.append(on_ack)
        batch.bytes += len(value) + 4

    def poll(self, timeout: float = 0.0) -> None:
        now = time.monotonic()
        for topic in [t for t, b in self._batches.items() if now - b.started >= self._linger_s]:
            self._publish(topic, self._batches.pop(topic))
        if timeout > 0 and not self._batches:
            time.sleep(min(timeout, self._linger_s))

    def flush(self, timeout: float) -> None:
        for topic in list(self._batches):
            self._publish(topic, self._batches.pop(topic))

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _publish(self, topic: str, batch: _Batch) -> None:
        body = b"".join(
            [struct.pack(">I", len(batch.messages))]
            + [struct.pack(">I", len(m)) + m for m in batch.messages]
        )
        path = "/mpub?" + urllib.parse.urlencode({"topic": topic, "binary": "true"})
        last_error = ""
        backoff = Backoff()
        for attempt in range(self._retries + 1):
            if attempt:
                time.sleep(backoff.next())
            try:
                if self._connection is None:
                    self._connection = http.client.HTTPConnection(
                        self._host, self._port, timeout=self._timeout_s
                    )
                self._connection.request("POST", path, body=body)
                response = self._connection.getresponse()
                text = response.read().decode("utf-8", errors="replace").strip()
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                last_error = f"{type(exc).__name__}: {exc}"
                continue
            if response.status == 200:
                for ack in batch.acks:
                    ack()
                return
            last_error = f"HTTP {response.status}: {text}"
            if response.status < 500:
                break  # the request itself is wrong; retrying cannot help
        raise DeliveryError(
            f"nsq: mpub of {len(batch.messages)} messages to {topic} at "
            f"{self._host}:{self._port} failed: {last_error}"
        )
