"""Reading topic limits through a broker outage.

The first read of a topic's `max.message.bytes` waits the outage out (the reader
cannot write the topic without it); the periodic refresh makes one attempt, so a
broker restart does not hold the reader for message.timeout.ms. A stand-in admin
client answers the way librdkafka does while no broker is up.
"""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from cdc.producers.base import DeliveryError
from cdc.producers.kafka import TopicManager


class AdminWithoutController:
    def __init__(self) -> None:
        self.calls = 0

    def poll(self, timeout: float) -> int:
        return 0

    def describe_configs(self, resources: list[Any], request_timeout: float) -> dict[Any, Any]:
        self.calls += 1
        error = KafkaError(KafkaError._TIMED_OUT, "Failed while waiting for controller")
        raise KafkaException(error)


def test_the_periodic_refresh_makes_one_attempt() -> None:
    admin = AdminWithoutController()
    topics = TopicManager(admin, num_shards=4, outage_s=0.5)
    with pytest.raises(DeliveryError, match=r"shop: cannot read max\.message\.bytes"):
        topics.max_message_bytes(["shop"], wait_out_outage=False)
    assert admin.calls == 1


def test_the_first_read_waits_the_outage_out() -> None:
    admin = AdminWithoutController()
    # Long enough that a stalled machine still retries once before the deadline.
    topics = TopicManager(admin, num_shards=4, outage_s=2.0)
    with pytest.raises(DeliveryError, match=r"shop: cannot read max\.message\.bytes"):
        topics.max_message_bytes(["shop"])
    assert admin.calls > 1
