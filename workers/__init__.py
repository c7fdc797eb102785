"""Shard workers: membership, ownership and handoff, transports, handlers and sinks."""
