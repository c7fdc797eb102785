"""Handler loading and calling conventions (workers.handlers)."""

from __future__ import annotations

import asyncio
import threading
from decimal import Decimal

import pytest

from tests.unit import handler_samples
from workers.events import Batch, Event, EventDecodeError, decode_message
from workers.handlers import HandlerContext, HandlerError, load_handler


def _event(n: int, shard: int = 1) -> Event:
    raw = b'{"type":"insert","event_id":"e%d","data":{"id":%d}}' % (n, n)
    return Event(
        shard=shard,
        topic="orders",
        position=n,
        key=None,
        raw=raw,
        message=decode_message(raw, shard, "orders", n),
        token=7,
    )


def _batch(*ns: int) -> Batch:
    return Batch.of(1, 7, tuple(_event(n) for n in ns))


@pytest.fixture(autouse=True)
def _clear() -> None:
    handler_samples.seen.clear()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("tests.unit.handler_samples:sync_event", [("sync_event", "e1"), ("sync_event", "e2")]),
        ("tests.unit.handler_samples:async_event", [("async_event", "e1"), ("async_event", "e2")]),
        ("tests.unit.handler_samples:sync_batch", [("sync_batch", ["e1", "e2"])]),
    ],
)
def test_function_handlers_get_events_or_batches(spec: str, expected: list[object]) -> None:
    handler = load_handler(spec)
    asyncio.run(handler.handle(_batch(1, 2)))
    assert handler_samples.seen == expected


def test_batch_marker_decides_the_shape() -> None:
    assert load_handler("tests.unit.handler_samples:sync_batch").takes_batches
    assert not load_handler("tests.unit.handler_samples:sync_event").takes_batches


def test_class_handler_gets_context_and_every_hook() -> None:
    context = HandlerContext(worker_id="w9", options={"table": "t"})
    handler = load_handler("tests.unit.handler_samples:Full", context)

    async def run() -> dict[str, int] | None:
        await handler.assign(3, 11)
        positions = await handler.positions(3)
        await handler.handle(_batch(1, 2))
        await handler.handle_one(_event(3))
        await handler.revoke(3)
        await handler.close()
        return positions

    positions = asyncio.run(run())
    target = handler._target
    assert isinstance(target, handler_samples.Full)
    assert target.context.worker_id == "w9"
    assert positions == {"orders": 43}
    assert target.calls == [
        ("assign", 3, 11),
        ("events", ["e1", "e2"]),
        ("events", ["e3"]),
        ("revoke", 3),
        ("close",),
    ]


def test_class_with_only_on_event_is_called_per_event_and_hooks_are_optional() -> None:
    handler = load_handler("tests.unit.handler_samples:PerEvent")

    async def run() -> None:
        await handler.assign(1, 1)
        assert await handler.positions(1) is None
        await handler.handle(_batch(4, 5, 6))
        await handler.revoke(1)
        await handler.close()

    asyncio.run(run())
    assert handler._target.ids == ["e4", "e5", "e6"]


def test_sync_handlers_run_off_the_event_loop_thread() -> None:
    threads: list[str] = []

    def record(_event: Event) -> None:
        threads.append(threading.current_thread().name)

    from workers.handlers import Handler

    handler = Handler("inline:record", record)

    async def run() -> str:
        await handler.handle(_batch(1))
        return threading.current_thread().name

    loop_thread = asyncio.run(run())
    assert threads and threads[0] != loop_thread


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon_here", "expected 'module:callable'"),
        ("tests.unit.no_such_module:fn", "cannot import"),
        ("tests.unit.handler_samples:missing", "has no attribute 'missing'"),
        ("tests.unit.handler_samples:NotAHandler", "neither callable nor has on_event"),
        ("tests.unit.handler_samples:Broken", "no database configured"),
        ("tests.unit.handler_samples:CONSTANT", "neither callable"),
    ],
)
def test_bad_specs_name_the_spec_and_the_problem(spec: str, message: str) -> None:
    with pytest.raises(HandlerError) as info:
        load_handler(spec)
    assert spec in str(info.value)
    assert message in str(info.value)


def test_decimals_stay_exact_and_bad_messages_name_their_place() -> None:
    doc = decode_message(
        b'{"data":{"price":0.1000000000000000055511151231257827}}', 4, "orders", 99
    )
    assert doc["data"]["price"] == Decimal("0.1000000000000000055511151231257827")
    with pytest.raises(EventDecodeError, match=r"shard 4 orders@99: not JSON"):
        decode_message(b"\xff\xfe", 4, "orders", 99)
    with pytest.raises(EventDecodeError, match="expected a JSON object, got list"):
        decode_message(b"[1]", 4, "orders", 99)


def test_batch_next_positions_are_one_past_the_last_event_per_topic() -> None:
    batch = _batch(5, 6, 9)
    assert batch.next_positions == {"orders": 10}
    assert batch.last_event_id == "e9"
