"""The binlog source: server checks, the replication stream, transaction assembly.

`BinlogSource` (source.py) follows the server and yields whole `Transaction`s
(transaction.py) from a `Checkpoint` (position.py); `check_server`
(server_check.py) refuses servers whose binlog cannot be read faithfully.
"""
