"""A worker whose Kafka consumer reaches no broker, while the broker is up, replaces
that consumer and loses and repeats nothing.

A chaos run (`make flake-hunt`, seed 7, "restart kafka") showed it: after the
broker came back, all three workers' librdkafka consumers said "All broker
connections are down" for minutes, while the CDC reader's producer went on
delivering to the same broker; the workers applied nothing more. How librdkafka got
there is not known, so this test makes a consumer in the same state: one whose
bootstrap address answers nothing, put in the transport's place at the shard's
position. The consumer notices that the shard got nothing for `fetch_stall_s`;
the transport finds that its client reads no metadata while its topic-id client
does, and replaces the client (`KafkaTransport._replace_consumer`)."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from tests.conftest import StackHandle
from tests.integration.workers_support import handled_across
from workers.transports.kafka import KafkaTransport

pytestmark = pytest.mark.integration


def _closed_port() -> int:
    """A local port nothing listens on: connecting to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_a_consumer_that_reaches_no_broker_is_replaced_at_its_position(
    stack: StackHandle, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    topic = f"{unique}_cut"
    cut_off: list[Any] = []

    async def put_a_client_that_reaches_no_broker_in_place(transport: KafkaTransport) -> None:
        cut_off.append(
            Consumer({**transport._config, "bootstrap.servers": f"127.0.0.1:{_closed_port()}"})
        )

        def swap() -> None:
            live = transport._require()
            transport._consumer = cut_off[0]
            transport._assign_flowing([TopicPartition(topic, 0, 5)])
            live.close()

        await transport._run(swap)

    with caplog.at_level("WARNING", logger="workers.transports.kafka"):
        positions, transport = handled_across(
            stack, unique, topic, put_a_client_that_reaches_no_broker_in_place, "after the cut"
        )
    assert positions == list(range(10))
    assert "the consumer reaches no broker while the topic-id client does" in caplog.text
    assert transport._consumer is not cut_off[0]
