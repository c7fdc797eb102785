"""The process-wide garbage collector setting of a long-running process."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from shardctl.core.runtime import YOUNG_COLLECTION_EVERY, collect_garbage_less_often


@pytest.fixture
def restored_threshold() -> Iterator[tuple[int, int, int]]:
    before = gc.get_threshold()
    yield before
    gc.set_threshold(*before)


def test_young_collections_run_less_often_and_the_older_ones_keep_their_ratio(
    restored_threshold: tuple[int, int, int],
) -> None:
    collect_garbage_less_often()
    assert gc.get_threshold() == (YOUNG_COLLECTION_EVERY, *restored_threshold[1:])
    assert gc.isenabled()
