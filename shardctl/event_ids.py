"""Event ids: the stable name of one row change, and its place in the source's order.

    <gtid>#<row>                 the transaction has a GTID: MariaDB `domain-server-seq`,
                                 MySQL `uuid:n`
    <binlog file>:<pos>#<row>    no GTID: the file and position of the transaction's
                                 first event
    bootstrap:<request>#<n>      a bootstrap row

`row` counts the transaction's rows from 0, so a transaction the reader publishes
again after a restart carries the same ids.

`order_key(id)` places an id in the source's commit order: within one `stream`
(a GTID domain, a MySQL server uuid, or a binlog file sequence), a later commit has
a larger key. MariaDB's sequence numbers grow within a domain (`gtid_strict_mode`
enforces it). Bootstrap ids and anything unrecognised have no order key.
"""

from __future__ import annotations

import re

_MARIADB_GTID = re.compile(r"^(\d+)-(\d+)-(\d+)$")
_MYSQL_GTID = re.compile(r"^([0-9a-fA-F-]{36}):(\d+)$")
_BINLOG_POS = re.compile(r"^(.*)\.(\d+):(\d+)$")

OrderKey = tuple[str, tuple[int, ...]]


def format_event_id(gtid: str | None, file: str, pos: int, row: int) -> str:
    """The id of row `row` of the transaction with this GTID, or starting at file:pos."""
    return f"{gtid}#{row}" if gtid else f"{file}:{pos}#{row}"


def order_key(event_id: str) -> OrderKey | None:
    """(stream, key): within a stream, keys grow in commit order. None: no known order."""
    base, sep, row_text = event_id.rpartition("#")
    if not sep or not row_text.isdigit():
        return None
    row = int(row_text)
    if m := _MARIADB_GTID.match(base):
        return f"gtid:{m.group(1)}", (int(m.group(3)), row)
    if m := _MYSQL_GTID.match(base):
        return f"gtid:{m.group(1).lower()}", (int(m.group(2)), row)
    if m := _BINLOG_POS.match(base):
        return f"binlog:{m.group(1)}", (int(m.group(2)), int(m.group(3)), row)
    return None
