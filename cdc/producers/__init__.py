"""Producers: Kafka, NSQ and stdout behind one interface (`cdc.producers.base.Producer`)."""

from __future__ import annotations

from cdc.options import CdcOptions
from cdc.producers.base import DeliveryError, FanOutProducer, Outgoing, Producer
from shardctl.core.config import Settings


def build_producer(settings: Settings, options: CdcOptions, num_shards: int) -> Producer:
    """The producer(s) named by `cdc.producer`; several are combined with a fan-out."""
    producers: list[Producer] = []
    for name in options.producers:
        if name == "kafka":
            from cdc.producers.kafka import KafkaProducer

            producers.append(
                KafkaProducer(
                    settings.kafka,
                    num_shards,
                    options.kafka_topic,
                    options.dead_letter_topic,
                    replication_factor=options.kafka_replication_factor,
                    options=options.kafka_options,
                    topic_config_refresh_s=options.kafka_topic_config_refresh_s,
                )
            )
        elif name == "nsq":
            from cdc.producers.nsq import NsqProducer

            producers.append(
                NsqProducer(
                    settings.nsq.nsqd_http_address,
                    options.nsq_topic,
                    options.dead_letter_topic,
                    max_message_bytes=options.nsq_max_message_bytes,
                )
            )
        else:
            from cdc.producers.stdout import StdoutProducer

            producers.append(StdoutProducer())
    return producers[0] if len(producers) == 1 else FanOutProducer(producers)


__all__ = ["DeliveryError", "FanOutProducer", "Outgoing", "Producer", "build_producer"]
