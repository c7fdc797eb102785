"""Read-only watermarks: the server's binlog position, taken before and after a chunk.

A watermark is what the server reports, without writing anything:

- MariaDB: `@@gtid_binlog_pos` (the last GTID per replication domain) and the
  binlog file:pos (`SHOW BINARY LOG STATUS`).
- MySQL: `@@gtid_executed` (a GTID set: `uuid[:tag]:interval[:interval...]`, sets
  separated by commas, with newlines after the commas) and the binlog file:pos.
- GTIDs off: the binlog file:pos alone.

Two questions are asked of a watermark W about a streamed transaction:

- `is_after(end)`: did the transaction (whose end the stream reports as `end`)
  commit after W? Used with the low watermark: only such transactions fall in
  a chunk's window.
- `reached_by(end)`: has the stream read everything the server had written at W?
  Used with the high watermark: the chunk is released then.

With GTIDs both are set relations (the stream's GTID state after the transaction
against W's); file:pos is compared otherwise, and also counts as reached (it
never says so wrongly: positions only grow on one server).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from cdc.replication.position import BinlogPosition, Checkpoint, parse_mariadb_gtid
from cdc.replication.server_check import Flavor, ServerInfo, current_position

_UUID = re.compile(r"^[0-9a-f]{8}(-?[0-9a-f]{4}){3}-?[0-9a-f]{12}$", re.IGNORECASE)
_TAG = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]{0,31}$")
_INTERVAL = re.compile(r"^(\d+)(?:-(\d+))?$")


class WatermarkFormatError(ValueError):
    """A GTID text the server reported cannot be read."""


class MysqlGtidSet:
    """MySQL's GTID set text (`@@gtid_executed`), as documented for MySQL 8.4:

        gtid_set: uuid_set [, uuid_set] ... | ''
        uuid_set: uuid:[tag:]interval[:interval]... [:tag:interval[:interval]...]...
        interval: n[-n]   (n >= 1)

    Kept as closed intervals per (uuid, tag), merged, for subset tests."""

    def __init__(self, text: str | None = None) -> None:
        self._sets: dict[tuple[str, str], list[tuple[int, int]]] = {}
        for raw_part in (text or "").replace("\n", "").split(","):
            part = raw_part.strip()
            if part:
                self._add_uuid_set(part)

    def _add_uuid_set(self, part: str) -> None:
        uuid, *rest = part.split(":")
        if not _UUID.match(uuid):
            raise WatermarkFormatError(f"{part!r}: {uuid!r} is not a server uuid")
        if not rest:
            raise WatermarkFormatError(f"{part!r}: a uuid without intervals")
        uuid = uuid.replace("-", "").lower()
        tag = ""
        tagged_without_interval = False
        for item in rest:
            item = item.strip()
            interval = _INTERVAL.match(item)
            if interval is None:
                if not _TAG.match(item) or tagged_without_interval:
                    raise WatermarkFormatError(f"{part!r}: {item!r} is neither a tag nor n[-m]")
                tag, tagged_without_interval = item.lower(), True
                continue
            low = int(interval.group(1))
            high = int(interval.group(2) or low)
            if low < 1 or high < low:
                raise WatermarkFormatError(f"{part!r}: interval {item!r} is empty or starts at 0")
            self._add((uuid, tag), low, high)
            tagged_without_interval = False
        if tagged_without_interval:
            raise WatermarkFormatError(f"{part!r}: tag {tag!r} without an interval")

    def _add(self, sid: tuple[str, str], low: int, high: int) -> None:
        merged: list[tuple[int, int]] = []
        for a, b in sorted([*self._sets.get(sid, []), (low, high)]):
            if merged and a <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        self._sets[sid] = merged

    def contains(self, other: MysqlGtidSet) -> bool:
        """Every GTID of `other` is in this set."""
        for sid, intervals in other._sets.items():
            mine = self._sets.get(sid, [])
            for low, high in intervals:
                if not any(a <= low and high <= b for a, b in mine):
                    return False
        return True

    def __bool__(self) -> bool:
        return bool(self._sets)


def mariadb_contains(state: str, other: str) -> bool:
    """MariaDB GTID positions (`domain-server-seq,...`): has `state` reached `other`
    in every domain of `other`? Sequence numbers grow within a domain."""
    mine: dict[int, int] = {}
    for part in _parts(state):
        domain, _, seq = parse_mariadb_gtid(part)
        mine[domain] = seq
    for part in _parts(other):
        domain, _, seq = parse_mariadb_gtid(part)
        if mine.get(domain, -1) < seq:
            return False
    return True


def _parts(text: str) -> list[str]:
    return [p.strip() for p in text.replace("\n", "").split(",") if p.strip()]


def gtid_contains(flavor: Flavor, state: str, other: str) -> bool:
    if flavor == "mariadb":
        return mariadb_contains(state, other)
    return MysqlGtidSet(state).contains(MysqlGtidSet(other))


@dataclass(frozen=True, slots=True)
class Watermark:
    """The server's position at one instant; see the module docstring."""

    flavor: Flavor
    position: BinlogPosition
    gtid: str | None  # None when the server gives no GTIDs (or none was logged yet)

    def __str__(self) -> str:
        return f"{self.position} (gtid {self.gtid})" if self.gtid else str(self.position)

    def to_json(self) -> dict[str, Any]:
        return {"file": self.position.file, "pos": self.position.pos, "gtid": self.gtid}

    def reached_by(self, end: Checkpoint) -> bool:
        """Has a stream whose last transaction ends at `end` read all of this watermark?"""
        if end.position.sort_key() >= self.position.sort_key():
            return True
        return bool(self.gtid and end.gtid and gtid_contains(self.flavor, end.gtid, self.gtid))

    def is_after(self, end: Checkpoint) -> bool:
        """Did the transaction that ends at `end` commit after this watermark?"""
        if self.gtid and end.gtid:
            return not gtid_contains(self.flavor, self.gtid, end.gtid)
        return end.position.sort_key() > self.position.sort_key()


def read_watermark(connection: Any, info: ServerInfo) -> Watermark:
    """The server's current position: a read, never a write."""
    position, gtid = current_position(connection, info)
    return Watermark(info.flavor, position, gtid or None)
