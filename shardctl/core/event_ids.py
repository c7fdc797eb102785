"""Event ids and source identities: the stable name of one row change, and its place
in the source's order.

    <gtid>#<row>                 the transaction has a GTID: MariaDB `domain-server-seq`,
                                 MySQL `uuid:n`
    <binlog file>:<pos>#<row>    no GTID: the file and position of the transaction's
                                 first event
    bootstrap:<request>#<n>      a bootstrap row

`row` counts the transaction's rows from 0, so a transaction the reader publishes
again after a restart carries the same ids.

An event id is unique within one source server only: two sources (or two servers of
one source) both have a `0-1-57#0`. Row messages therefore carry, beside the id, the
source identity `<source name>/<server_id>` (`format_source`): the reader's
`cdc.source` and the server_id of the server that wrote the transaction. Source names
cannot contain `/`, so the identity reads back unambiguously.

`order_key(id, source)` places an id in the source's commit order: within one `stream`
(the source identity plus a GTID domain, a MySQL server uuid, or a binlog file
sequence), a later commit has a larger key. MariaDB's sequence numbers grow within a
domain (`gtid_strict_mode` enforces it). A key that is not larger than one already
seen in its stream is either the same change published again (a replay) or a source
whose position went backwards (RESET MASTER, a restore, binlog renumbering). Bootstrap
ids and anything unrecognised have no order key.
"""

from __future__ import annotations

import re

_MYSQL_GTID = re.compile(r"^([0-9a-fA-F-]{36}):(\d+)$")
_BINLOG_POS = re.compile(r"^(.*)\.(\d+):(\d+)$")

OrderKey = tuple[str, tuple[int, ...]]


def format_event_id(gtid: str | None, file: str, pos: int, row: int) -> str:
    """The id of row `row` of the transaction with this GTID, or starting at file:pos."""
    return f"{gtid}#{row}" if gtid else f"{file}:{pos}#{row}"


def format_source(name: str, server_id: int) -> str:
    """The source identity of a row message: `<source name>/<server_id>`."""
    return f"{name}/{int(server_id)}"


def order_key(event_id: str, source: str | None = None) -> OrderKey | None:
    """(stream, key): within a stream, keys grow in commit order. None: no known order.

    `source` is the message's source identity; without it (messages written before
    it existed) the stream is the id's own stream only."""
    base, sep, row_text = event_id.rpartition("#")
    if not sep or not row_text.isdecimal():
        return None
    row = int(row_text)
    prefix = f"{source}|" if source else ""
    # MariaDB's `domain-server-seq`, the common case, without a regular expression:
    # this runs once per row change a sink applies. (isdecimal is what \d matches.)
    parts = base.split("-")
    if len(parts) == 3 and parts[0].isdecimal() and parts[1].isdecimal() and parts[2].isdecimal():
        return f"{prefix}gtid:{parts[0]}", (int(parts[2]), row)
    if m := _MYSQL_GTID.match(base):
        return f"{prefix}gtid:{m.group(1).lower()}", (int(m.group(2)), row)
    if m := _BINLOG_POS.match(base):
        return f"{prefix}binlog:{m.group(1)}", (int(m.group(2)), int(m.group(3)), row)
    return None


def describe_key(key: tuple[int, ...]) -> str:
    """An order key as the position it stands for: `seq 57 row 3`, `file 4 pos 120 row 0`."""
    if len(key) == 2:
        return f"seq {key[0]} row {key[1]}"
    if len(key) == 3:
        return f"file {key[0]} pos {key[1]} row {key[2]}"
    return ",".join(map(str, key))
