"""Fixtures shared by the integration tests: a coordination cluster of real processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shardctl.core.config import Settings
from tests.integration.coordination_harness import Cluster


@pytest.fixture
def cluster(stack: Any, settings: Settings, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(stack.env(), settings, tmp_path)
    try:
        yield c
    finally:
        c.close()
