"""A producer that prints each message value on its own line, for debugging."""

from __future__ import annotations

import sys
from typing import TextIO

from cdc.producers.base import Ack, DeliveryError, Outgoing, Producer


class StdoutProducer(Producer):
    name = "stdout"

    def __init__(self, stream: TextIO | None = None, with_shard: bool = False) -> None:
        self._stream = stream or sys.stdout
        self._with_shard = with_shard
        self._unflushed: list[Ack] = []

    def send(self, message: Outgoing, on_ack: Ack) -> None:
        text = message.value.decode("utf-8", errors="backslashreplace")
        if self._with_shard:
            text = f"{message.shard}\t{text}"
        self._stream.write(text + "\n")
        self._unflushed.append(on_ack)

    def poll(self, timeout: float = 0.0) -> None:
        self.flush(timeout)

    def flush(self, timeout: float) -> None:
        if not self._unflushed:
            return
        try:
            self._stream.flush()
        except OSError as exc:
            raise DeliveryError(f"stdout: write failed: {exc}") from exc
        acks, self._unflushed = self._unflushed, []
        for ack in acks:
            ack()
