"""The SQL sink's source streams: remembered transactions sort as their order keys
do, the recovery command, and a halted shard bypasses retries and dead letters."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.deadletters import DeadLetter
from workers.events import Batch, Event, decode_message
from workers.handlers import Handler, ShardHalted
from workers.retry import RetryPolicy, process_batch
from workers.sinks.sql import _txn_text, forget_command

gtid_keys = st.tuples(st.integers(0, 2**63), st.integers(0, 10**6))
binlog_keys = st.tuples(st.integers(0, 2**31), st.integers(0, 2**63), st.integers(0, 10**6))


@given(gtid_keys, gtid_keys)
def test_gtid_transaction_text_sorts_like_the_key(a: tuple[int, int], b: tuple[int, int]) -> None:
    assert (_txn_text(a) < _txn_text(b)) == (a[:-1] < b[:-1])


@given(binlog_keys, binlog_keys)
def test_binlog_transaction_text_sorts_like_the_key(
    a: tuple[int, int, int], b: tuple[int, int, int]
) -> None:
    assert (_txn_text(a) < _txn_text(b)) == (a[:-1] < b[:-1])
    assert len(_txn_text(a)) <= 64


def test_rows_of_one_transaction_share_its_text() -> None:
    assert _txn_text((57, 0)) == _txn_text((57, 9))
    assert _txn_text((2, 4, 0)) != _txn_text((2, 5, 0))


def test_the_recovery_command_names_everything() -> None:
    assert forget_command("prod", 3, "shop", "eu/7|gtid:0") == (
        "shardctl worker forget-stream --handler-option scope=prod --shard 3 "
        "--topic shop --stream 'eu/7|gtid:0'"
    )
    assert forget_command("prod", 3, "shop", "eu/7|gtid:0", "replica") == (
        "shardctl worker forget-stream --handler-option scope=prod --handler-option "
        "database=replica --shard 3 --topic shop --stream 'eu/7|gtid:0'"
    )
    assert forget_command("prod", 3, "shop", "eu/7|gtid:0", "app", "postgres") == (
        "shardctl worker forget-stream --handler postgres --handler-option scope=prod "
        "--handler-option database=app --shard 3 --topic shop --stream 'eu/7|gtid:0'"
    )


def test_a_halted_shard_is_neither_retried_nor_dead_lettered() -> None:
    """The sink's ShardHalted (a source that went backwards) stops the shard: the
    event is not retried and never reaches the dead-letter topic."""
    raw = b'{"type":"insert","event_id":"0-1-5#0","data":{"id":1}}'
    event = Event(2, "orders", 7, b"k", raw, decode_message(raw, 2, "orders", 7), 5)
    written: list[DeadLetter] = []
    waits: list[float] = []

    class Letters:
        async def write(self, letter: DeadLetter) -> None:
            written.append(letter)

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    def halted(_event: Event) -> None:
        raise ShardHalted("shard 2 topic orders: the source position went backwards")

    with pytest.raises(ShardHalted):
        asyncio.run(
            process_batch(
                Batch.of(2, 5, (event, event)),
                Handler("t:halted", halted),
                RetryPolicy(attempts=3, initial_delay_s=0.5, max_delay_s=1.5, multiplier=2),
                Letters(),
                sleep,
            )
        )
    assert written == [] and waits == []
