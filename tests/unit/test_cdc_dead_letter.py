"""The dead-letter record: Maxwell's primary-key skeleton with shardctl's fields beside it."""

from __future__ import annotations

import json

from cdc.producers.base import Outgoing, dead_letter_document


def test_dead_letter_record_is_the_primary_key_skeleton() -> None:
    message = Outgoing(
        key=b'{"database":"shop","table":"orders","pk.id":7,"pk.region":"eu"}',
        value=json.dumps(
            {"database": "shop", "table": "orders", "type": "update", "data": {"body": "x" * 50}}
        ).encode(),
        shard=3,
        event_id="0-1-42#2",
        database="shop",
        table="orders",
    )
    doc = json.loads(dead_letter_document(message, "shop_orders", "Broker: too large", "why"))
    assert doc == {
        "database": "shop",
        "table": "orders",
        "type": "update",
        "reason": "why",
        "data": {"id": 7, "region": "eu"},
        "event_id": "0-1-42#2",
        "position": "0-1-42",
        "shard": 3,
        "error": "Broker: too large",
        "key": message.key.decode(),
        "destination": "shop_orders",
        "size": len(message.value),
    }


def test_a_table_without_primary_key_has_empty_data_and_reason_defaults_to_the_error() -> None:
    message = Outgoing(b'{"database":"d","table":"t"}', b"not json", 0, "f:4#0", "d", "t")
    doc = json.loads(dead_letter_document(message, "d_t", "too large"))
    assert (doc["data"], doc["type"], doc["reason"]) == ({}, None, "too large")
