"""Which events a watch accepts as its own: anything else makes it list again."""

from __future__ import annotations

from shardctl.core.etcd.watch import _watched


def test_a_prefix_watch_accepts_only_keys_under_its_prefix() -> None:
    assert _watched("/s/c/workers/w1", "/s/c/workers/", prefix=True)
    assert not _watched("/s/c/coordinator/leader", "/s/c/workers/", prefix=True)
    assert not _watched("/s/c/workers", "/s/c/workers/", prefix=True)


def test_a_key_watch_accepts_only_its_key() -> None:
    assert _watched("/s/c/coordinator/leader", "/s/c/coordinator/leader", prefix=False)
    assert not _watched("/s/c/coordinator/leader2", "/s/c/coordinator/leader", prefix=False)
