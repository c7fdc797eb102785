"""Golden files: one per type, the exact Maxwell JSON of binlog values of that type.

Each golden under tests/unit/golden/ holds, per line, the message value of one
row: values written in MySQL's binary row format, decoded, formatted. A change
to any byte of the output is a change to the public message format, so it has
to show up here. To rewrite the files after a deliberate change, run with
SHARDCTL_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from cdc.decoding import RowDecoder
from cdc.formatter import FormatterOptions, MaxwellFormatter
from cdc.rows import RowImage, TxnContext
from cdc.schema import ColumnDef, ColumnType, TableDef
from tests.unit.binlog_encoding import all_present, encode_mysql_json, encode_row

GOLDEN = Path(__file__).parent / "golden"
T = ColumnType

# name -> (column, raw values for the encoder, formatter options)
CASES: dict[str, tuple[ColumnDef, list[Any], dict[str, bool]]] = {
    "tinyint": (ColumnDef("v", T.TINY), [-128, 0, 127], {}),
    "tinyint_unsigned": (ColumnDef("v", T.TINY, unsigned=True), [0, 255], {}),
    "smallint": (ColumnDef("v", T.SHORT), [-32768, 32767], {}),
    "smallint_unsigned": (ColumnDef("v", T.SHORT, unsigned=True), [65535], {}),
    "mediumint": (ColumnDef("v", T.INT24), [-8388608, 8388607], {}),
    "mediumint_unsigned": (ColumnDef("v", T.INT24, unsigned=True), [16777215], {}),
    "int": (ColumnDef("v", T.LONG), [-2147483648, 2147483647], {}),
    "int_unsigned": (ColumnDef("v", T.LONG, unsigned=True), [4294967295], {}),
    "bigint": (ColumnDef("v", T.LONGLONG), [-9223372036854775808, 9223372036854775807], {}),
    "bigint_unsigned": (ColumnDef("v", T.LONGLONG, unsigned=True), [18446744073709551615], {}),
    "decimal": (
        ColumnDef("v", T.NEWDECIMAL, precision=40, scale=20),
        [
            Decimal("12345678901234567890.12345678901234567890"),
            Decimal("-0.00000000000000000001"),
            Decimal("1.50000000000000000000"),
        ],
        {},
    ),
    "decimal_as_string": (
        ColumnDef("v", T.NEWDECIMAL, precision=10, scale=2),
        [Decimal("-12345678.90"), Decimal("0.00")],
        {"decimal_as_string": True},
    ),
    "float": (ColumnDef("v", T.FLOAT), [1.1, -3.4028234663852886e38, 1e-45], {}),
    "double": (ColumnDef("v", T.DOUBLE), [0.1, -2.5e-300, 1e300], {}),
    "char_utf8mb4": (
        ColumnDef("v", T.STRING, charset="utf8mb4", max_length=40),
        ["héllo".encode(), b"", "😀".encode()],
        {},
    ),
    "varchar_utf8mb4": (
        ColumnDef("v", T.VARCHAR, charset="utf8mb4", max_length=1200),
        [b'quote " backslash \\ tab \t newline \n', "日本語".encode()],
        {},
    ),
    "text_utf8mb4": (
        ColumnDef("v", T.BLOB, charset="utf8mb4", length_size=2),
        ["long text ✓".encode()],
        {},
    ),
    "varchar_latin1": (
        ColumnDef("v", T.VARCHAR, charset="latin1", max_length=20),
        [b"caf\xe9 \x80", b"\x81"],
        {},
    ),
    "text_latin1": (
        ColumnDef("v", T.BLOB, charset="latin1", length_size=2),
        [b"na\xefve \xff"],
        {},
    ),
    "binary": (ColumnDef("v", T.STRING, charset="binary", max_length=4), [b"ab", b""], {}),
    "varbinary": (
        ColumnDef("v", T.VARCHAR, charset="binary", max_length=20),
        [b"\x00\xff\x10", b""],
        {},
    ),
    "blob": (ColumnDef("v", T.BLOB, charset="binary", length_size=2), [bytes(range(32))], {}),
    "date": (ColumnDef("v", T.DATE), [(2024, 2, 29), (1000, 1, 1), (9999, 12, 31)], {}),
    "time": (ColumnDef("v", T.TIME2), [(True, 838, 59, 59, 0), (False, 0, 0, 0, 0)], {}),
    "time_fsp": (
        ColumnDef("v", T.TIME2, fsp=6),
        [(True, 1, 2, 3, 500000), (False, 12, 34, 56, 1)],
        {},
    ),
    "datetime": (ColumnDef("v", T.DATETIME2), [(2024, 1, 2, 3, 4, 5, 0)], {}),
    "datetime_fsp": (
        ColumnDef("v", T.DATETIME2, fsp=3),
        [(2024, 1, 2, 3, 4, 5, 120000), (1000, 1, 1, 0, 0, 0, 0)],
        {},
    ),
    "timestamp": (ColumnDef("v", T.TIMESTAMP2), [(2147483647, 0), (1, 0)], {}),
    "timestamp_fsp": (ColumnDef("v", T.TIMESTAMP2, fsp=6), [(1700000000, 123456)], {}),
    "year": (ColumnDef("v", T.YEAR), [1901, 2155, 0], {}),
    "bit": (ColumnDef("v", T.BIT, bits=10), [682, 0, 1023], {}),
    "enum": (
        ColumnDef("v", T.ENUM, enum_values=("", "small", "large"), size=1),
        [1, 2, 0],
        {},
    ),
    "set": (
        ColumnDef("v", T.SET, set_values=("x", "y", "z"), size=1),
        [0b101, 0, 0b111],
        {},
    ),
    "json_mysql": (
        ColumnDef("v", T.JSON, length_size=4),
        [encode_mysql_json({"a": [1, 2.5, None, True], "b": {"c": "ü"}}), encode_mysql_json("s")],
        {},
    ),
    "json_mariadb": (
        ColumnDef("v", T.BLOB, charset="utf8mb4", length_size=4, is_json=True),
        [b'{"a": [1, 2.5, null, true], "b": {"c": "\\u00fc"}}', b"[]", b"12345678901234567890"],
        {},
    ),
    "zero_dates": (
        ColumnDef("v", T.DATETIME2, fsp=2),
        [(0, 0, 0, 0, 0, 0, 0), (2024, 0, 0, 0, 0, 0, 0)],
        {},
    ),
    "zero_dates_as_null": (
        ColumnDef("v", T.DATE),
        [(0, 0, 0), (2024, 1, 1)],
        {"output_null_zerodates": True},
    ),
}

CTX = TxnContext(
    server_id=1,
    thread_id=77,
    gtid="0-1-4242",
    file="binlog.000003",
    pos=1234,
    ts=1700000000,
    xid=991,
)


def _messages(name: str) -> list[str]:
    col, raws, options = CASES[name]
    columns = (ColumnDef("id", T.LONG), col)
    table = TableDef(5, "shop", name, columns, ("id",))
    rows = [[i + 1, raw] for i, raw in enumerate(raws)] + [[len(raws) + 1, None]]
    body = b"".join(encode_row(columns, row) for row in rows)
    images = RowDecoder(table).decode_body("insert", body, all_present(2), position="f:1")
    formatter = MaxwellFormatter(FormatterOptions(**options))
    last = len(images) - 1
    lines = [
        formatter.format(CTX, table, image, i, i == last).value.decode("utf-8")
        for i, image in enumerate(images)
    ]
    # An update of the first row to the second value (or to NULL) shows `old`.
    update = RowImage("update", {**images[-1].data, "id": 1}, {"v": images[0].data["v"]})
    lines.append(formatter.format(CTX, table, update, len(images), True).value.decode("utf-8"))
    return lines


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name: str) -> None:
    path = GOLDEN / f"{name}.jsonl"
    produced = "\n".join(_messages(name)) + "\n"
    if os.environ.get("SHARDCTL_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(produced, encoding="utf-8")
    assert path.exists(), f"missing golden file {path}; write it with SHARDCTL_UPDATE_GOLDEN=1"
    assert produced == path.read_text(encoding="utf-8")


def test_every_golden_file_has_a_case() -> None:
    assert sorted(p.stem for p in GOLDEN.glob("*.jsonl")) == sorted(CASES)
