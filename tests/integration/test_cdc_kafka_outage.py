"""A reader rides out a Kafka outage: its topic metadata reads wait for the broker.

The producer itself retries deliveries through an outage (up to message.timeout.ms),
but the reader also reads metadata: a topic's partitions and max.message.bytes when it
first writes to it. A broker restart used to end the reader there, with "cannot read
metadata", and with both readers of a source gone nothing resumed until someone
restarted them. Here Kafka is stopped, a row for a new topic is written, and Kafka is
started again: the reader must still be running, and the row must arrive.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.cdc_support import (
    ReaderProcess,
    TopicReader,
    binlog_end,
    reader_env,
    stored_checkpoint,
    wait_for,
)

pytestmark = pytest.mark.integration

SHARDS = 2


def test_the_reader_waits_for_a_restarted_broker_instead_of_exiting(
    stack: Any, settings: Any, unique: str, mysql_db: str, tmp_path: Path
) -> None:
    conn = stack.mysql_root(mysql_db)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE before_outage (id INT PRIMARY KEY)")
        cur.execute("CREATE TABLE during_outage (id INT PRIMARY KEY)")
    with stack.mysql_root() as root:
        start = binlog_end(root)
    env = reader_env(
        stack,
        unique,
        "main",
        num_shards=SHARDS,
        kafka_topic=f"{unique}_%{{table}}",
        dead_letter_topic=f"{unique}_dlq",
        filter=f"exclude: *.*, include: {mysql_db}.*",
        start_position=start,
    )
    reader = ReaderProcess(env, tmp_path, "reader")
    before = TopicReader(stack.kafka_bootstrap, f"{unique}_before_outage", SHARDS)
    try:
        wait_for("initial checkpoint", lambda: stored_checkpoint(settings, "main"))
        with conn.cursor() as cur:
            cur.execute("INSERT INTO before_outage VALUES (1)")
        before.read_until(lambda rs: len(rs) >= 1)
        stack.stop("kafka")
        try:
            with conn.cursor() as cur:
                # A new table: its topic is new, so the reader must read its metadata.
                cur.execute("INSERT INTO during_outage VALUES (2)")
            wait_for(
                "the reader to find the broker gone",
                lambda: "broker unavailable" in reader.stderr() or reader.proc.poll() is not None,
            )
            assert reader.proc.poll() is None, (
                f"the reader exited while Kafka was down: {reader.stderr()[-800:]}"
            )
        finally:
            stack.start("kafka")
        during = TopicReader(stack.kafka_bootstrap, f"{unique}_during_outage", SHARDS)
        try:
            rows = during.read_until(lambda rs: len(rs) >= 1, timeout=120)
        finally:
            during.close()
        assert [r.value["data"]["id"] for r in rows] == [2]
        assert reader.proc.poll() is None, reader.stderr()[-800:]
        # librdkafka's own lines come through the structured log, not raw to stderr.
        assert "|rdkafka#" not in reader.stderr(), reader.stderr()[-1500:]
    finally:
        before.close()
        reader.terminate()
