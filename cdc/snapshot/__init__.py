"""Incremental snapshots: a table's rows published while the stream keeps flowing.

`shardctl cdc bootstrap db.table` (without `--blocking`) runs the DBLog
watermark algorithm, read-only (the CDC user needs no write grant):

    for each chunk of `snapshot_chunk_size` rows, in primary-key order:
        L = server position (watermark.py)         -- low watermark
        rows = SELECT ... WHERE pk > last ORDER BY pk LIMIT n   (chunks.py)
        H = server position                        -- high watermark
        while the stream goes from L to H:          (window.py)
            a streamed change to a buffered key, committed after L, drops the key
        when the stream reaches H:
            the rest are published as bootstrap-insert, on each row's shard
        progress (last key, rows done) stored in etcd (progress.py)

Messages are Maxwell's: `bootstrap-start` (to every shard), the inserts,
`bootstrap-complete` (to every shard). Other tables, and the table's own
changes, are published as they stream, between chunks.

Why it ends with the table's state: a chunk row's value is the one current at
some instant between L and H. A streamed change committed after L may be newer,
and its key is dropped from the buffer, so the chunk never overwrites it. Every
change streamed after H is newer than the read and is applied after the chunk.
A change committed before L was published before the chunk and is older than it.

How the stream "reaches" H: the reader gives the end (file:pos and GTID state)
of each transaction it has published; H is reached when that end is at or past
H's position, or its GTID state contains H's (on MariaDB the GTID state also
covers binlog events that are not transactions). An idle source adds no
transactions: when the chunk is read, the stream usually already stands at H
and the chunk is released at once; otherwise two heartbeats from the server
after H (it had nothing more to send) release it. Released early, a chunk may
be followed by changes older than its read: a consumer briefly sees a row step
back to a value it then moves past, and still ends with the table's state.

Steps L, SELECT and H run on the snapshot's own thread (background.py) while
the stream goes on; the changes streamed meanwhile are noted and applied to the
chunk's buffer when its rows come in (window.py). Tables that come into the
filter are snapshotted with `snapshot_new_tables` (new_tables.py).

The state machine is in state.py, the reader hook in runner.py.
"""
