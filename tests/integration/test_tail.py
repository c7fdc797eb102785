"""`shardctl tail` prints a topic's events without owning or committing anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import StackHandle
from tests.integration.workers_support import create_topic, delete_topics, maxwell, produce

pytestmark = pytest.mark.integration


def _tail(stack: StackHandle, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardctl.cli.main", "tail", *args],
        env={**os.environ, **stack.env()},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_tail_prints_one_shard_or_all_of_them(stack: StackHandle, unique: str) -> None:
    topic = f"tail-{unique}"
    create_topic(stack.kafka_bootstrap, topic, 2)
    produce(
        stack.kafka_bootstrap, topic, [(s, None, maxwell(n, s)) for s in (0, 1) for n in range(3)]
    )
    try:
        one = _tail(stack, topic, "--shard", "1", "--from-beginning", "--limit", "3")
        assert one.returncode == 0, one.stderr
        lines = one.stdout.splitlines()
        assert [line.split(" ", 2)[:2] for line in lines] == [
            ["1", f"{topic}@{n}"] for n in range(3)
        ]
        assert json.loads(lines[0].split(" ", 2)[2])["event_id"] == "ev-1-0"

        every = _tail(stack, topic, "--from-beginning", "--limit", "6", "--bare")
        assert every.returncode == 0, every.stderr
        ids = sorted(json.loads(line)["event_id"] for line in every.stdout.splitlines())
        assert ids == sorted(f"ev-{s}-{n}" for s in (0, 1) for n in range(3))
    finally:
        delete_topics(stack.kafka_bootstrap, [topic])


def test_tail_names_what_is_wrong(stack: StackHandle, unique: str) -> None:
    missing = _tail(stack, f"absent-{unique}", "--limit", "1")
    assert missing.returncode == 1 and f"absent-{unique}" in missing.stderr
    nsq = _tail(stack, "orders", "--transport", "nsq", "--limit", "1")
    assert nsq.returncode == 2 and "--shard: required" in nsq.stderr
