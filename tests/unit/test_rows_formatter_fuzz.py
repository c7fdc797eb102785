"""Fuzzing what tests/unit/test_decoding_fuzz.py leaves out: update events (before
and after images) with partial columns-present bitmaps, a hard per-example time
limit (a hang fails the example instead of stalling the run), and the Maxwell
formatter on decoded rows and on hostile values.

The decoder must return what the step-by-step reference returns, or raise a
DecodeError naming the binlog position; the formatter must write strict JSON that
reads back to the row, or raise a FormatError naming the event id (binlog
file:pos plus row index).
"""

from __future__ import annotations

import json
import math
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc.decoding import DecodeError, RowDecoder
from cdc.formatter import FormatError, FormatterOptions, MaxwellFormatter
from cdc.json_text import encode
from cdc.rows import RowImage, TxnContext
from cdc.schema import ColumnDef, ColumnType, TableDef
from tests.unit.binlog_encoding import encode_row
from tests.unit.test_decoding_fuzz import CATALOG

POSITION = "binlog.000031:4242"
FUZZ = settings(max_examples=150)
HARD_LIMIT_S = 5.0


@contextmanager
def hard_limit(seconds: float = HARD_LIMIT_S) -> Iterator[None]:
    """Interrupt the block after `seconds`: hypothesis' deadline only measures an
    example once it has finished, so a real hang needs a timer that fires."""

    def expire(_signum: int, _frame: Any) -> None:
        raise TimeoutError(f"decoding did not finish within {seconds}s: a hang")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def bitmap(present: list[int], count: int) -> bytes:
    bits = 0
    for i in present:
        bits |= 1 << i
    return bits.to_bytes((count + 7) // 8, "little")


@st.composite
def update_bodies(draw: st.DrawFn) -> tuple[TableDef, bytes, bytes, bytes, list[int]]:
    """A table, the before and after bitmaps (subsets of its columns), a valid
    update body (before/after image pairs) and the pair boundaries."""
    picks = draw(
        st.lists(st.sampled_from(range(len(CATALOG))), min_size=1, max_size=7, unique=True)
    )
    columns = tuple(CATALOG[i][0] for i in picks)
    n = len(columns)
    before = sorted(draw(st.sets(st.integers(0, n - 1), min_size=1)))
    after = sorted(draw(st.sets(st.integers(0, n - 1), min_size=1)))

    def image(present: list[int]) -> bytes:
        values = [draw(st.none() | CATALOG[picks[i]][1]) for i in present]
        return encode_row([columns[i] for i in present], values)

    body = b""
    boundaries = [0]
    for _ in range(draw(st.integers(1, 3))):
        body += image(before)
        body += image(after)
        boundaries.append(len(body))
    table = TableDef(77, "fuzzdb", "u", columns, ())
    return table, bitmap(before, n), bitmap(after, n), body, boundaries


def _decode_update(
    table: TableDef, before: bytes, after: bytes, body: bytes, reference: bool = False
) -> list[RowImage]:
    with hard_limit():
        return RowDecoder(table).decode_body(
            "update", body, before, after, position=POSITION, reference=reference
        )


def _names_position(exc: DecodeError) -> None:
    assert POSITION in str(exc), str(exc)
    assert "fuzzdb.u" in str(exc), str(exc)


@FUZZ
@given(update_bodies())
def test_update_bodies_decode_like_the_reference(
    case: tuple[TableDef, bytes, bytes, bytes, list[int]],
) -> None:
    table, before, after, body, boundaries = case
    rows = _decode_update(table, before, after, body)
    assert len(rows) == len(boundaries) - 1
    assert [(r.data, r.old) for r in rows] == [
        (r.data, r.old) for r in _decode_update(table, before, after, body, reference=True)
    ]
    for row in rows:
        assert row.old is not None
        assert set(row.old) <= set(row.data)


@FUZZ
@given(update_bodies(), st.data())
def test_truncated_update_bodies_raise_decode_error(
    case: tuple[TableDef, bytes, bytes, bytes, list[int]], data: st.DataObject
) -> None:
    table, before, after, body, boundaries = case
    cuts = [k for k in range(1, len(body)) if k not in boundaries]
    if not cuts:
        return
    cut = data.draw(st.sampled_from(cuts))
    with pytest.raises(DecodeError) as info:
        _decode_update(table, before, after, body[:cut])
    _names_position(info.value)


@FUZZ
@given(update_bodies(), st.data())
def test_corrupted_update_bodies_give_the_reference_result_or_decode_error(
    case: tuple[TableDef, bytes, bytes, bytes, list[int]], data: st.DataObject
) -> None:
    table, before, after, body, _ = case
    mutated = bytearray(body)
    for _ in range(data.draw(st.integers(1, 4))):
        mutated[data.draw(st.integers(0, len(mutated) - 1))] = data.draw(st.integers(0, 255))
    try:
        fast = _decode_update(table, before, after, bytes(mutated))
    except DecodeError as exc:
        _names_position(exc)
        with pytest.raises(DecodeError):
            _decode_update(table, before, after, bytes(mutated), reference=True)
        return
    reference = _decode_update(table, before, after, bytes(mutated), reference=True)
    assert [(r.data, r.old) for r in fast] == [(r.data, r.old) for r in reference]


@FUZZ
@given(update_bodies(), st.binary(max_size=3))
def test_bitmaps_of_the_wrong_size_raise_decode_error(
    case: tuple[TableDef, bytes, bytes, bytes, list[int]], wrong: bytes
) -> None:
    table, before, after, body, _ = case
    if len(wrong) == len(after):
        wrong += b"\x00"
    with pytest.raises(DecodeError) as info:
        _decode_update(table, before, wrong, body)
    _names_position(info.value)


# --- the formatter -------------------------------------------------------------------

CTX = TxnContext(
    server_id=1, thread_id=9, gtid=None, file="binlog.000031", pos=4242, ts=1700000000, xid=5
)


def _reject_constant(name: str) -> Any:
    raise AssertionError(f"formatter wrote the non-JSON constant {name}")


def _strict(text: bytes) -> Any:
    return json.loads(text, parse_float=Decimal, parse_constant=_reject_constant)


def _same_values(written: Any, row_value: Any) -> bool:
    if isinstance(row_value, float):
        return isinstance(written, (Decimal, int)) and float(written) == row_value
    if isinstance(row_value, dict):
        return (
            isinstance(written, dict)
            and written.keys() == row_value.keys()
            and all(_same_values(written[k], row_value[k]) for k in row_value)
        )
    if isinstance(row_value, list):
        return (
            isinstance(written, list)
            and len(written) == len(row_value)
            and all(_same_values(w, r) for w, r in zip(written, row_value, strict=True))
        )
    return bool(written == row_value and type(written) is type(row_value))


@FUZZ
@given(update_bodies(), st.booleans(), st.integers(0, 10_000))
def test_decoded_rows_format_as_strict_json_that_reads_back(
    case: tuple[TableDef, bytes, bytes, bytes, list[int]], last: bool, index: int
) -> None:
    table, before, after, body, _ = case
    formatter = MaxwellFormatter(FormatterOptions(output_binlog_position=True))
    for row in _decode_update(table, before, after, body):
        message = formatter.format(CTX, table, row, index, last)
        doc = _strict(message.value)
        assert doc["database"] == "fuzzdb" and doc["table"] == "u" and doc["type"] == "update"
        assert doc["event_id"] == f"binlog.000031:4242#{index}" == message.event_id
        assert doc["position"] == "binlog.000031:4242"
        # Maxwell: `commit:true` on the last row only, `xoffset` on the others.
        assert doc.get("commit", False) is last
        assert doc.get("xoffset") == (None if last else index)
        # The compiled per-table encoder agrees with the generic one, value by value.
        generic = _strict(encode(row.data).encode("utf-8", "backslashreplace"))
        assert doc["data"] == generic
        for name, value in row.data.items():
            assert _same_values(doc["data"][name], value), (name, value, doc["data"][name])
        assert doc["old"] == _strict(encode(row.old).encode("utf-8", "backslashreplace"))
        _strict(message.key)


HOSTILE = st.one_of(
    st.none(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),  # NaN and infinities included
    st.decimals(allow_nan=True, allow_infinity=True),
    st.text(),  # lone surrogates included
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.floats(), max_size=2),
)


@FUZZ
@given(st.lists(HOSTILE, min_size=2, max_size=2), st.integers(0, 50))
def test_hostile_values_give_strict_json_or_a_format_error_naming_the_event(
    values: list[Any], index: int
) -> None:
    columns = (
        ColumnDef("id", ColumnType.LONGLONG),
        ColumnDef("v", ColumnType.VARCHAR, charset="utf8mb4", max_length=64),
    )
    table = TableDef(5, "fuzzdb", "h", columns, ("id",))
    row = RowImage("insert", {"id": values[0], "v": values[1]}, None)
    try:
        with hard_limit():
            message = MaxwellFormatter().format(CTX, table, row, index, True)
    except FormatError as exc:
        assert f"binlog.000031:4242#{index}" in str(exc), str(exc)
        assert "fuzzdb.h" in str(exc), str(exc)
        return
    doc = _strict(message.value)
    for name in ("id", "v"):
        value = row.data[name]
        written = doc["data"][name]
        if isinstance(value, float):
            assert math.isfinite(value) and float(written) == value
        elif isinstance(value, Decimal):
            assert value.is_finite() and Decimal(written) == value
        elif isinstance(value, (str, int, type(None))):
            assert written == value
    assert _strict(message.key)["pk.id"] == doc["data"]["id"]
