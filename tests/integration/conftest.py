"""Fixtures shared by the integration tests: a coordination cluster of real processes,
and the end of the log of each CDC reader a failed test started."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shardctl.core.config import Settings
from tests.integration.cdc_support import ReaderProcess
from tests.integration.coordination_harness import Cluster


@pytest.fixture
def cluster(stack: Any, settings: Settings, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(stack.env(), settings, tmp_path)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(autouse=True)
def _readers_of_this_test() -> Iterator[None]:
    ReaderProcess.STARTED.clear()
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed test's report ends with the end of each reader's log it started: a
    reader that stalled says why, where the assertion only says how long."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for reader in ReaderProcess.STARTED:
            report.sections.append((f"the end of reader {reader.name}'s log", reader.log_tail()))
