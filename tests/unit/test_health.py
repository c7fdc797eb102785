"""Liveness (`/healthz`) by the process's main-loop ticks: alive within the window
(`--liveness-window`), not alive once a whole window passed without a tick."""

from __future__ import annotations

import pytest

from shardctl.core import health
from shardctl.core.health import ProcessHealth


def test_alive_until_a_window_passes_without_a_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(health.time, "monotonic", lambda: now[0])
    process = ProcessHealth("worker", liveness_window_s=5)
    now[0] += 4.9
    assert process.alive().ok
    now[0] += 0.2
    verdict = process.alive()
    assert not verdict.ok
    assert verdict.detail["problems"] == ["main loop has not ticked for 5.1s"]
    process.beat()
    assert process.alive().ok


def test_configure_sets_the_window_and_starts_the_count_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(health.time, "monotonic", lambda: now[0])
    process = ProcessHealth()
    now[0] += health.DEFAULT_LIVENESS_WINDOW_S + 1
    assert not process.alive().ok
    process.configure("cdc", liveness_window_s=60)
    now[0] += 59
    assert process.alive().ok
    assert process.alive().detail["role"] == "cdc"
