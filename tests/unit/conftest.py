"""Unit tests see no SHARDCTL_* settings from the shell that runs them.

`eval "$(shardctl dev env)"` exports the local stack's endpoints; a unit test that
loads settings must get the same answer with or without them."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _no_shardctl_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("SHARDCTL_")]:
        monkeypatch.delenv(name)
