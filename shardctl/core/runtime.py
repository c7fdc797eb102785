"""Process-wide settings of a long-running shardctl process.

`collect_garbage_less_often`: CPython's cyclic garbage collector runs a young
collection every 700 allocations of container objects by default. A worker holds up
to max_in_flight decoded events per shard (each a few dicts and a list) and makes
thousands more per batch, so at that default the collector spends much of its time
walking objects that are still alive, and frees almost nothing: events hold no
reference cycles, and reference counting frees them when a batch is done. Running it
every 50,000 allocations cut a worker's CPU per 1000 events by about a third with
the MariaDB sink (bench/consume.py, docs/sinks.md). Cycles are still collected, later.
"""

from __future__ import annotations

import gc

YOUNG_COLLECTION_EVERY = 50_000


def collect_garbage_less_often() -> None:
    """Run the cyclic garbage collector's young collection every
    YOUNG_COLLECTION_EVERY container allocations instead of every 700."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, middle, old)
