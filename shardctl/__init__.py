"""shardctl: shard ownership on etcd, and a Maxwell-compatible MySQL/MariaDB CDC pipeline."""

__version__ = "0.1.0"
