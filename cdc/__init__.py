"""The binlog reader: source, row decoding, Maxwell formatter, partitioner, producers."""
