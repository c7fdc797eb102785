"""An incremental snapshot's progress in etcd: `<root>cdc/<source>/snapshot/<id>`.

Written by the leading reader after each released chunk (once its rows were
delivered), fenced by the reader's leadership like the checkpoint, so a deposed
reader cannot move it. A new leader resumes after `last_key`: only the chunk in
flight at a crash is read and published again.

    {"id": "...", "table": "db.t", "state": "running", "last_key": [41, "b"],
     "rows_done": 42, "rows_estimated": 100000, "chunks": 1, "error": null,
     "updated": 1700000000.0}
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from cdc.snapshot.state import SnapshotState


@dataclass(frozen=True, slots=True)
class Progress:
    id: str
    table: str  # database.table
    state: SnapshotState
    last_key: list[Any] | None = None  # `chunks.encode_key` form; None before the first chunk
    rows_done: int = 0  # rows read so far (published, or dropped for a newer streamed change)
    rows_estimated: int = 0  # information_schema TABLE_ROWS when the snapshot started
    chunks: int = 0
    error: str | None = None
    updated: float = 0.0

    def to_json(self) -> bytes:
        doc = asdict(self)
        doc["state"] = self.state.value
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Progress:
        doc = json.loads(raw)
        return cls(
            id=str(doc["id"]),
            table=str(doc["table"]),
            state=SnapshotState(doc["state"]),
            last_key=doc.get("last_key"),
            rows_done=int(doc.get("rows_done", 0)),
            rows_estimated=int(doc.get("rows_estimated", 0)),
            chunks=int(doc.get("chunks", 0)),
            error=doc.get("error"),
            updated=float(doc.get("updated", 0.0)),
        )

    def describe(self) -> str:
        """`rows done / estimated (percent)`, for `status` and logs."""
        if self.rows_estimated > 0:
            share = min(100.0, 100.0 * self.rows_done / self.rows_estimated)
            return f"{self.rows_done}/~{self.rows_estimated} rows ({share:.0f}%)"
        return f"{self.rows_done} rows"
