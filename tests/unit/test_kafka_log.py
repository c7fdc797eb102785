"""librdkafka's lines go through the structured log, a few per interval: the rest
are counted and said once the next interval lets a line through."""

from __future__ import annotations

import logging

import pytest

from shardctl.core.kafka_log import KafkaLog

REFUSED = "[thrd:127.0.0.1:1/bootstrap]: Connect to ipv4#127.0.0.1:1 failed: Connection refused"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_outage_gives_a_few_lines_per_interval_and_counts_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    log = KafkaLog("worker consumer", interval_s=10.0, burst=2, clock=clock)
    with caplog.at_level(logging.DEBUG, logger="shardctl.kafka"):
        for _ in range(50):  # what librdkafka gives in a second of an outage
            log.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#consumer-1", REFUSED)
        log.log(logging.WARNING, "%s [%s] %s", "REQTMOUT", "rdkafka#consumer-1", "timed out")
        clock.now += 10.0
        log.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#consumer-1", REFUSED)
    lines = [(r.levelno, r.getMessage(), getattr(r, "facility", None)) for r in caplog.records]
    assert lines == [
        (logging.ERROR, f"kafka client worker consumer: {REFUSED}", "FAIL"),
        (logging.ERROR, f"kafka client worker consumer: {REFUSED}", "FAIL"),
        (logging.WARNING, "kafka client worker consumer: timed out", "REQTMOUT"),
        (
            logging.ERROR,
            f"kafka client worker consumer: {REFUSED} (48 more like it left out in the "
            "10 s before)",
            "FAIL",
        ),
    ]
    assert caplog.records[0].kafka_client == "worker consumer"  # type: ignore[attr-defined]
    assert caplog.records[0].rdkafka_name == "rdkafka#consumer-1"  # type: ignore[attr-defined]


def test_a_line_not_in_librdkafkas_form_is_logged_as_given(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="shardctl.kafka"):
        KafkaLog("cdc producer").log(logging.INFO, "plain %d", 7)
    assert [r.getMessage() for r in caplog.records] == ["kafka client cdc producer: plain 7"]
