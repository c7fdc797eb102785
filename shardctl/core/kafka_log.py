"""librdkafka's own log lines, through the structured log and rate-limited.

Without a `logger` in its configuration, librdkafka prints its lines to stderr as
they come (`%3|1700000000.123|FAIL|rdkafka#consumer-1| ... Connection refused`),
unformatted and many per second while a broker is away. Every long-lived Kafka
client of a shardctl process gets `"logger": kafka_log(<what it is>)` instead; then
confluent-kafka hands each line to it from the client's poll (or flush), and it goes
to the `shardctl.kafka` logger, with the client it came from, librdkafka's facility
and client name as fields.

Per client, facility and level, `BURST` lines pass within each `INTERVAL_S`; the
rest of that interval are counted, and the next line that passes says how many
were left out. So a Kafka outage gives a few lines per interval, not hundreds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

INTERVAL_S = 10.0
BURST = 3

_log = logging.getLogger("shardctl.kafka")


class KafkaLog:
    """A `logger` for a confluent-kafka client's configuration (it calls `log`)."""

    def __init__(
        self,
        client: str,
        interval_s: float = INTERVAL_S,
        burst: int = BURST,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger = _log,
    ) -> None:
        self.client = client
        self.interval_s = interval_s
        self.burst = burst
        self._clock = clock
        self._logger = logger
        self._lock = threading.Lock()  # clients poll from more than one thread
        # (facility, level) -> [interval start, lines passed, lines left out]
        self._windows: dict[tuple[str, int], list[float]] = {}

    def log(self, level: int, msg: str, *args: object) -> None:
        """What confluent-kafka calls: `log(level, "%s [%s] %s", fac, name, line)`."""
        if len(args) == 3:
            facility, name, line = (str(a) for a in args)
        else:
            facility, name, line = "", "", msg % args if args else msg
        now = self._clock()
        with self._lock:
            window = self._windows.get((facility, level))
            if window is None or now - window[0] >= self.interval_s:
                left_out = 0 if window is None else int(window[2])
                self._windows[(facility, level)] = [now, 1, 0]
            elif window[1] < self.burst:
                window[1] += 1
                left_out = 0
            else:
                window[2] += 1
                return
        more = (
            f" ({left_out} more like it left out in the {self.interval_s:g} s before)"
            if left_out
            else ""
        )
        self._logger.log(
            level,
            "kafka client %s: %s%s",
            self.client,
            line,
            more,
            extra={"kafka_client": self.client, "facility": facility, "rdkafka_name": name},
        )


def kafka_log(client: str) -> KafkaLog:
    """The `logger` setting of one Kafka client, named by what it is for."""
    return KafkaLog(client)
