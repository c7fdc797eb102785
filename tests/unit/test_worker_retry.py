"""Retry, backoff and dead-lettering of handler failures (workers.retry)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.deadletters import DeadLetter, dead_letter_topic
from workers.events import Batch, Event, decode_message
from workers.handlers import Fenced, Handler, batch_handler
from workers.retry import RetryPolicy, Stopped, process_batch


class Letters:
    """Dead letters kept in memory; `fail_first` writes fail before one succeeds."""

    def __init__(self, fail_first: int = 0) -> None:
        self.stored: list[DeadLetter] = []
        self.fail_first = fail_first

    async def write(self, letter: DeadLetter) -> None:
        if self.fail_first:
            self.fail_first -= 1
            raise ConnectionError("broker down")
        self.stored.append(letter)


class Sleeps:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def _event(n: int) -> Event:
    raw = b'{"type":"insert","event_id":"e%d","data":{"id":%d}}' % (n, n)
    return Event(
        shard=2,
        topic="orders",
        position=100 + n,
        key=b"k%d" % n,
        raw=raw,
        message=decode_message(raw, 2, "orders", 100 + n),
        token=5,
    )


def _batch(*ns: int) -> Batch:
    return Batch.of(2, 5, tuple(_event(n) for n in ns))


POLICY = RetryPolicy(attempts=3, initial_delay_s=0.5, max_delay_s=1.5, multiplier=2)


@given(
    attempts=st.integers(1, 30),
    initial=st.floats(0, 5, allow_nan=False),
    cap=st.floats(0, 60, allow_nan=False),
    multiplier=st.floats(1, 10, allow_nan=False),
)
def test_backoff_grows_and_never_passes_the_cap(
    attempts: int, initial: float, cap: float, multiplier: float
) -> None:
    policy = RetryPolicy(attempts, initial, cap, multiplier)
    delays = policy.delays()
    assert len(delays) == attempts - 1
    assert all(0 <= d <= cap for d in delays)
    assert delays == sorted(delays)


def test_backoff_is_exponential_until_capped() -> None:
    assert RetryPolicy(6, 0.1, 1.0, 2).delays() == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0])
    assert RetryPolicy(2, 1.0, 10.0, 3).delay(10**6) == 10.0


@pytest.mark.parametrize(
    "kwargs",
    [{"attempts": 0}, {"initial_delay_s": -1}, {"multiplier": 0.5}, {"jitter": 1.5}],
)
def test_bad_policies_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


def test_a_good_batch_is_handled_once_without_waiting() -> None:
    seen: list[str | None] = []
    handler = Handler("t:ok", lambda e: seen.append(e.event_id))
    letters, sleeps = Letters(), Sleeps()
    outcome = asyncio.run(process_batch(_batch(1, 2, 3), handler, POLICY, letters, sleeps))
    assert (outcome.handled, outcome.dead_lettered) == (3, 0)
    assert seen == ["e1", "e2", "e3"]
    assert letters.stored == [] and sleeps.waits == []


def test_a_transient_failure_is_retried_with_backoff() -> None:
    calls = {"n": 0}

    def flaky(_event: Event) -> None:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise TimeoutError("db busy")

    letters, sleeps = Letters(), Sleeps()
    outcome = asyncio.run(
        process_batch(_batch(1), Handler("t:flaky", flaky), POLICY, letters, sleeps)
    )
    assert (outcome.handled, outcome.dead_lettered) == (1, 0)
    # Jittered: each wait is the backoff, shortened by up to half of it.
    assert len(sleeps.waits) == 2
    assert 0.25 <= sleeps.waits[0] <= 0.5 and 0.5 <= sleeps.waits[1] <= 1.0
    assert letters.stored == []


def test_a_poison_event_is_isolated_and_dead_lettered_with_its_error() -> None:
    handled: list[str | None] = []

    @batch_handler
    def picky(batch: Batch) -> None:
        for event in batch.events:
            if event.data["id"] == 2:
                raise ValueError(f"cannot map id {event.data['id']}")
        handled.extend(e.event_id for e in batch.events)

    letters, sleeps = Letters(), Sleeps()
    outcome = asyncio.run(
        process_batch(_batch(1, 2, 3), Handler("t:picky", picky), POLICY, letters, sleeps)
    )
    assert (outcome.handled, outcome.dead_lettered) == (2, 1)
    # The batch failed 3 times, then every event was tried alone: 1 and 3 pass.
    assert handled == ["e1", "e3"]
    [letter] = letters.stored
    assert letter.event_id == "e2" and letter.position == 102 and letter.shard == 2
    assert letter.error == "cannot map id 2" and letter.error_type == "ValueError"
    assert letter.attempts == 3 and letter.handler == "t:picky"
    doc = letter.document("w1", now=1.0)
    assert json.loads(doc["event"])["event_id"] == "e2"
    assert doc["worker"] == "w1" and doc["token"] == 5 and doc["topic"] == "orders"


def test_the_shard_waits_for_the_dead_letter_topic_rather_than_lose_an_event() -> None:
    def always(_event: Event) -> None:
        raise KeyError("missing column")

    letters, sleeps = Letters(fail_first=4), Sleeps()
    outcome = asyncio.run(
        process_batch(_batch(7), Handler("t:always", always), POLICY, letters, sleeps)
    )
    assert outcome.dead_lettered == 1
    assert [letter.event_id for letter in letters.stored] == ["e7"]
    assert len(sleeps.waits) == 2 + 4  # two handler retries, four dead-letter retries


def test_fenced_is_never_retried_nor_dead_lettered() -> None:
    def fenced(event: Event) -> None:
        raise Fenced("token 5 < 6", event.shard, event.token)

    letters, sleeps = Letters(), Sleeps()
    with pytest.raises(Fenced):
        asyncio.run(
            process_batch(_batch(1, 2), Handler("t:fenced", fenced), POLICY, letters, sleeps)
        )
    assert letters.stored == [] and sleeps.waits == []


def test_retrying_stops_when_the_shard_is_dropped() -> None:
    def failing(_event: Event) -> None:
        raise RuntimeError("down")

    with pytest.raises(Stopped):
        asyncio.run(
            process_batch(
                _batch(1),
                Handler("t:failing", failing),
                POLICY,
                Letters(),
                Sleeps(),
                stopped=lambda: True,
            )
        )


def test_undecodable_letters_keep_the_raw_bytes() -> None:
    letter = DeadLetter.undecodable(3, "orders", 9, b"k", b"\xff\x00", 4, ValueError("bad"))
    doc = letter.document("w2", now=2.0)
    assert doc["event_base64"] == "/wA=" and "event" not in doc
    assert doc["handler"] == "(decoding)" and doc["position"] == 9


def test_dead_letter_topic_template() -> None:
    assert dead_letter_topic("{topic}.dlq", "orders") == "orders.dlq"
    with pytest.raises(ValueError, match=r"only \{topic\}"):
        dead_letter_topic("{shard}.dlq", "orders")
