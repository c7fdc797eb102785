"""Process-wide settings of a long-running shardctl process.

`collect_garbage_less_often`: CPython's cyclic garbage collector runs a young
collection every 700 allocations of container objects by default. The CDC read
stage makes several short-lived objects per row; a worker holds up to max_in_flight
decoded events per shard (each a few dicts and a list) and makes thousands more per
batch. Neither makes reference cycles, so reference counting frees what they make,
and at the default the collector spends its time walking objects that are still
alive: about a third of the read stage's per-row cost of making messages
(docs/cdc-reader.md), and about a third of a worker's CPU per event with the
MariaDB sink (docs/sinks.md). Cycles are still collected, later.
"""

from __future__ import annotations

import gc

# Container allocations between two young collections, per kind of process.
READ_STAGE_YOUNG_EVERY = 20_000
WORKER_YOUNG_EVERY = 50_000

_tuned = False


def collect_garbage_less_often(young_every: int) -> None:
    """Run the young collection every `young_every` container allocations instead of
    700, and move every object alive now (modules, settings, clients) out of the
    collector's sight (`gc.freeze`), so the collections that do run scan only what
    the process made since. Once per process: a second call changes nothing."""
    global _tuned
    if _tuned:
        return
    _tuned = True
    gc.collect()  # nothing collectable gets frozen
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young_every, middle, old)
