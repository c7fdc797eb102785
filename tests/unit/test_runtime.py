"""The process-wide garbage collector setting of a long-running process."""

from __future__ import annotations

import gc

import pytest

import shardctl.core.runtime as runtime


def test_young_collections_run_less_often_and_what_is_alive_is_frozen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threshold = gc.get_threshold()
    monkeypatch.setattr(runtime, "_tuned", False)
    try:
        runtime.collect_garbage_less_often(runtime.WORKER_YOUNG_EVERY)
        assert gc.get_threshold() == (runtime.WORKER_YOUNG_EVERY, *threshold[1:])
        frozen = gc.get_freeze_count()
        assert frozen > 0
        assert gc.isenabled()
        # Once per process: a second stage or worker in the same process changes nothing.
        runtime.collect_garbage_less_often(runtime.READ_STAGE_YOUNG_EVERY)
        assert gc.get_freeze_count() == frozen
        assert gc.get_threshold()[0] == runtime.WORKER_YOUNG_EVERY
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
