"""Transient failures are waited out, never dead-lettered; only the event's own
failures count as attempts (workers.retry.classify, the sinks' error mapping)."""

from __future__ import annotations

import asyncio

import pymysql
import pytest
from confluent_kafka import KafkaError
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.test_worker_retry import POLICY, Letters, Sleeps, _batch
from workers.events import Event
from workers.handlers import Handler, TransientError
from workers.retry import RetryPolicy, Stopped, classify, process_batch
from workers.sinks.kafka import kafka_error_is_transient
from workers.sinks.sql import mysql_error_is_transient


@given(retry=st.integers(1, 200), rand=st.floats(0, 1, exclude_max=True))
def test_a_jittered_wait_is_the_backoff_shortened_by_at_most_the_jitter(
    retry: int, rand: float
) -> None:
    policy = RetryPolicy(initial_delay_s=0.2, max_delay_s=10.0, jitter=0.5)
    wait = policy.jittered(retry, lambda: rand)
    assert policy.delay(retry) * 0.5 <= wait <= policy.delay(retry)


def test_classification_of_errors() -> None:
    assert classify(TransientError("sink away")) == "transient"
    assert classify(ConnectionResetError("reset")) == "transient"
    assert classify(TimeoutError("slow")) == "transient"
    assert classify(ValueError("bad row")) == "deterministic"
    assert classify(KeyError("column")) == "deterministic"


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (pymysql.err.OperationalError(2003, "Can't connect"), True),
        (pymysql.err.OperationalError(2006, "MySQL server has gone away"), True),
        (pymysql.err.OperationalError(2013, "Lost connection"), True),
        (pymysql.err.OperationalError(1205, "Lock wait timeout exceeded"), True),
        (pymysql.err.OperationalError(1213, "Deadlock found"), True),
        (pymysql.err.InterfaceError(0, ""), True),
        (ConnectionRefusedError(111, "refused"), True),
        (pymysql.err.IntegrityError(1062, "Duplicate entry"), False),
        (pymysql.err.IntegrityError(1452, "foreign key constraint fails"), False),
        (pymysql.err.DataError(1406, "Data too long"), False),
        (pymysql.err.OperationalError(1054, "Unknown column"), False),
        (pymysql.err.ProgrammingError(1146, "Table doesn't exist"), False),
        (ValueError("not a database error"), False),
    ],
)
def test_mysql_errors_by_code(error: BaseException, transient: bool) -> None:
    assert mysql_error_is_transient(error) is transient


@pytest.mark.parametrize(
    ("code", "transient"),
    [
        (KafkaError._TRANSPORT, True),
        (KafkaError._ALL_BROKERS_DOWN, True),
        (KafkaError._MSG_TIMED_OUT, True),
        (KafkaError.NOT_ENOUGH_REPLICAS, True),
        (KafkaError.COORDINATOR_NOT_AVAILABLE, True),
        (KafkaError.MSG_SIZE_TOO_LARGE, False),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, False),
        (KafkaError.PRODUCER_FENCED, False),
    ],
)
def test_kafka_errors_by_code(code: int, transient: bool) -> None:
    assert kafka_error_is_transient(KafkaError(code)) is transient


def test_a_long_transient_failure_is_waited_out_and_never_dead_lettered() -> None:
    """Far more transient failures than `attempts`: the event is handled in the end."""
    calls = {"n": 0}
    reports: list[str | None] = []

    def away(_event: Event) -> None:
        calls["n"] += 1
        if calls["n"] <= 50:
            raise TransientError("sink away")

    letters, sleeps = Letters(), Sleeps()
    outcome = asyncio.run(
        process_batch(
            _batch(1, 2),
            Handler("t:away", away),
            POLICY,
            letters,
            sleeps,
            on_transient=lambda e: reports.append(None if e is None else str(e)),
        )
    )
    assert (outcome.handled, outcome.dead_lettered) == (2, 0)
    assert letters.stored == []
    assert len(sleeps.waits) == 50 and max(sleeps.waits) <= POLICY.max_delay_s
    assert reports == ["sink away"] * 50 + [None]


def test_transient_failures_do_not_use_up_the_attempts_of_a_poison_event() -> None:
    """A poison event still goes to the DLQ after `attempts` failures of its own, however
    many transient failures came between them."""
    calls = {"n": 0}

    def mixed(_event: Event) -> None:
        calls["n"] += 1
        if calls["n"] % 2:
            raise TransientError("lock wait")
        raise ValueError("cannot map this row")

    letters, sleeps = Letters(), Sleeps()
    outcome = asyncio.run(
        process_batch(_batch(7), Handler("t:mixed", mixed), POLICY, letters, sleeps)
    )
    assert outcome.dead_lettered == 1
    assert [(x.event_id, x.error_type, x.attempts) for x in letters.stored] == [
        ("e7", "ValueError", POLICY.attempts)
    ]
    assert calls["n"] == 2 * POLICY.attempts


def test_a_transient_wait_ends_when_the_shard_stops() -> None:
    def away(_event: Event) -> None:
        raise TransientError("sink away")

    letters = Letters()
    with pytest.raises(Stopped):
        asyncio.run(
            process_batch(
                _batch(1), Handler("t:away", away), POLICY, letters, Sleeps(), stopped=lambda: True
            )
        )
    assert letters.stored == []
