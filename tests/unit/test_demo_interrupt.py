"""Ctrl-C stops the demo even while its live view waits in an asyncio runner."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator

import pytest

from shardctl.cli.demo import raise_on_interrupt


async def absorbs_a_cancellation() -> str:
    """A coroutine that, like a client call racing its own timeout, swallows the
    cancellation it gets while the signal arrives."""
    os.kill(os.getpid(), signal.SIGINT)
    try:
        await asyncio.sleep(5)
    except asyncio.CancelledError:
        return "absorbed"
    return "slept"


@pytest.fixture
def default_sigint() -> Iterator[None]:
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_python_default_lets_a_runner_absorb_ctrl_c(default_sigint: None) -> None:
    # What the demo ran into: the interrupt became a cancellation, and it was lost.
    with asyncio.Runner() as runner:
        assert runner.run(absorbs_a_cancellation()) == "absorbed"


def test_the_demo_handler_raises_inside_the_runner(default_sigint: None) -> None:
    raise_on_interrupt()
    with asyncio.Runner() as runner, pytest.raises(KeyboardInterrupt):
        runner.run(absorbs_a_cancellation())


def test_the_demo_handler_raises_between_two_steps_of_the_loop_not_inside_one(
    default_sigint: None,
) -> None:
    raise_on_interrupt()
    reached: list[str] = []

    async def step() -> None:
        os.kill(os.getpid(), signal.SIGINT)  # the handler runs before the next line
        reached.append("the rest of the step")
        await asyncio.sleep(5)
        reached.append("after the next step")

    with asyncio.Runner() as runner, pytest.raises(KeyboardInterrupt):
        runner.run(step())
    assert reached == ["the rest of the step"]


def test_the_demo_handler_raises_at_once_outside_an_event_loop(default_sigint: None) -> None:
    raise_on_interrupt()
    reached: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        reached.append("after the signal")
    assert reached == []
