"""Binlog positions, GTID state and the checkpoint document.

A checkpoint names a transaction boundary: the binlog file and the log position
just after a transaction's last event (its XID, COMMIT or DDL), plus the GTID
state that includes that transaction when the server gives GTIDs. Resuming from
it never starts inside a transaction.

The document stored in etcd is JSON:

    {"file": "mysql-bin.000003", "pos": 1234, "gtid": "0-1-57", "ts": 1700000000,
     "server_id": 1, "event_id": "0-1-57#3",
     "json_columns": [["shop", "docs", ["attrs"]]]}

`json_columns` is the schema model's part the binlog does not carry: which
MariaDB LONGTEXT columns hold JSON (a CHECK json_valid constraint), as of this
boundary (see `cdc.decoding.json_columns.JsonSchemaModel`). It is absent in
documents written before the model existed.

`gtid` is MariaDB's `gtid_binlog_pos` form (`domain-server-seq`, one per domain,
comma separated) or MySQL's executed GTID set (`uuid:1-57`); it is null when the
server gives no GTIDs.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any

_MARIADB_GTID = re.compile(r"^(\d+)-(\d+)-(\d+)$")


class CheckpointFormatError(ValueError):
    """A stored checkpoint document cannot be read."""


@dataclass(frozen=True, slots=True)
class BinlogPosition:
    file: str
    pos: int

    def __str__(self) -> str:
        return f"{self.file}:{self.pos}"

    @classmethod
    def parse(cls, text: str) -> BinlogPosition:
        """`file:pos`, for example `mysql-bin.000003:1234`."""
        file, sep, pos = text.rpartition(":")
        if not sep or not file or not pos.isdigit() or int(pos) < 4:
            raise ValueError(f"{text!r} is not a binlog position of the form file:pos (pos >= 4)")
        return cls(file, int(pos))

    def sort_key(self) -> tuple[str, int, int]:
        # Binlog files are <basename>.<zero-padded number>; compare the number as an int
        # so that .999999 < .1000000 still holds after the padding overflows.
        base, _, num = self.file.rpartition(".")
        return (base, int(num) if num.isdigit() else 0, self.pos)


class MariadbGtidState:
    """The last GTID seen per replication domain, as in `@@gtid_binlog_pos`."""

    def __init__(self, text: str | None = None) -> None:
        self._by_domain: dict[int, tuple[int, int]] = {}
        for part in (text or "").split(","):
            part = part.strip()
            if not part:
                continue
            match = _MARIADB_GTID.match(part)
            if match is None:
                raise ValueError(f"{part!r} is not a MariaDB GTID (domain-server-seq)")
            domain, server, seq = (int(g) for g in match.groups())
            self._by_domain[domain] = (server, seq)

    def advance(self, gtid: str) -> None:
        match = _MARIADB_GTID.match(gtid)
        if match is None:
            raise ValueError(f"{gtid!r} is not a MariaDB GTID (domain-server-seq)")
        domain, server, seq = (int(g) for g in match.groups())
        self._by_domain[domain] = (server, seq)

    def seq_of(self, domain: int) -> int | None:
        entry = self._by_domain.get(domain)
        return None if entry is None else entry[1]

    def copy(self) -> MariadbGtidState:
        out = MariadbGtidState()
        out._by_domain = dict(self._by_domain)
        return out

    def __str__(self) -> str:
        return ",".join(f"{d}-{s}-{n}" for d, (s, n) in sorted(self._by_domain.items()))

    def __bool__(self) -> bool:
        return bool(self._by_domain)


def parse_mariadb_gtid(gtid: str) -> tuple[int, int, int]:
    """(domain, server_id, seq) of a `domain-server-seq` GTID."""
    match = _MARIADB_GTID.match(gtid)
    if match is None:
        raise ValueError(f"{gtid!r} is not a MariaDB GTID (domain-server-seq)")
    domain, server, seq = (int(g) for g in match.groups())
    return domain, server, seq


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A transaction boundary the reader can resume from."""

    file: str
    pos: int
    gtid: str | None
    ts: int
    server_id: int
    event_id: str | None = None
    # (database, table, JSON columns) of every table with one, as of this boundary.
    json_columns: tuple[tuple[str, str, tuple[str, ...]], ...] | None = None

    @property
    def position(self) -> BinlogPosition:
        return BinlogPosition(self.file, self.pos)

    def describe(self) -> str:
        """Human-readable position for errors and logs."""
        text = f"{self.file}:{self.pos}"
        return f"{text} (gtid {self.gtid})" if self.gtid else text

    def to_json(self) -> bytes:
        doc = asdict(self)
        if self.json_columns is None:
            del doc["json_columns"]
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> Checkpoint:
        try:
            doc: Any = json.loads(raw)
            if not isinstance(doc, dict):
                raise TypeError("not an object")
            file, pos = doc["file"], doc["pos"]
            gtid = doc.get("gtid")
            if not isinstance(file, str) or not isinstance(pos, int):
                raise TypeError("file must be a string and pos an integer")
            if gtid is not None and not isinstance(gtid, str):
                raise TypeError("gtid must be a string or null")
            event = doc.get("event_id")
            model = doc.get("json_columns")
            json_columns = (
                None
                if model is None
                else tuple(
                    (str(db), str(table), tuple(str(c) for c in cols)) for db, table, cols in model
                )
            )
            return cls(
                file=file,
                pos=pos,
                gtid=gtid,
                ts=int(doc.get("ts", 0)),
                server_id=int(doc.get("server_id", 0)),
                event_id=event if isinstance(event, str) else None,
                json_columns=json_columns,
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise CheckpointFormatError(f"checkpoint document is invalid: {exc}") from exc
