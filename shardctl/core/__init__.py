"""The ground floor: what every role and the CLI stand on.

Settings (`config`), the etcd primitives (`etcd`), the key layout (`keyspace`) and
the JSON records stored at those keys (`records`), event ids, shard hashing, the
cluster read model (`status`), health, metrics and logging. The core imports
nothing above it: no role (`coordinator`, `workers`, `cdc`) and not the CLI
(`tests/unit/test_layout.py` holds it to that).
"""
