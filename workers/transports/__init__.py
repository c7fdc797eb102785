"""Transports: where a worker's owned shards come from (Kafka partitions, NSQ topics)."""
