"""The native decoder against the Python reference: the same message bytes for every
supported type, random values, NULLs, charsets, message-form options and updates
with old images; and what it refuses, the Python path refuses too."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc.decoding import DecodeError, RowDecoder
from cdc.decoding.native import NativeOptions, native_available
from cdc.filtering import Filter
from cdc.formatter import FormatterOptions, MaxwellFormatter
from cdc.partitioner import Partitioner
from cdc.producers.base import Outgoing
from cdc.publisher import Publisher
from cdc.replication.position import Checkpoint
from cdc.replication.transaction import RowChange, SpilledRows, Transaction
from cdc.rows import EncodedRow, RowImage, TxnContext
from cdc.schema import ColumnDef, ColumnType, TableDef
from tests.unit.binlog_encoding import all_present, encode_row

T = ColumnType
DIFF = settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
CTX = TxnContext(
    server_id=7, thread_id=3, gtid="0-7-99", file="binlog.000002", pos=4, ts=1_700_000_000, xid=5
)
POSITION = "binlog.000002:1234"


def _fsp_micros(fsp: int) -> st.SearchStrategy[int]:
    return st.integers(0, 10**fsp - 1).map(lambda n: n * 10 ** (6 - fsp))


def _decimals(precision: int, scale: int) -> st.SearchStrategy[Decimal]:
    top = 10**precision - 1
    # Exact at any precision (Decimal arithmetic would round to 28 digits).
    return st.integers(-top, top).map(lambda n: Decimal(f"{n}E-{scale}")) | st.just(
        Decimal(f"-0E-{scale}")
    )


def _datetime(fsp: int) -> st.SearchStrategy[tuple[int, ...]]:
    return st.tuples(
        st.integers(0, 9999),
        st.integers(0, 12),
        st.integers(0, 31),
        st.integers(0, 23),
        st.integers(0, 59),
        st.integers(0, 59),
        _fsp_micros(fsp),
    )


def _time(fsp: int) -> st.SearchStrategy[tuple[Any, ...]]:
    return st.tuples(
        st.booleans(),
        st.integers(0, 838),
        st.integers(0, 59),
        st.integers(0, 59),
        _fsp_micros(fsp),
    ).filter(lambda t: any(t[1:]) or not t[0])


ENUM_MEMBERS = ("", "new", 'q"uote', "café", "back\\slash", "tab\t")
SET_MEMBERS = ("x", 'y"', "ü", "z\n")
WIDE_SET = tuple(f"m{i}" for i in range(64))

# Every column kind the native decoder reads, with raw values for the test encoder.
CATALOG: list[tuple[ColumnDef, st.SearchStrategy[Any]]] = [
    (ColumnDef("i8", T.TINY), st.integers(-128, 127)),
    (ColumnDef("u8", T.TINY, unsigned=True), st.integers(0, 255)),
    (ColumnDef("i16", T.SHORT), st.integers(-(2**15), 2**15 - 1)),
    (ColumnDef("u16", T.SHORT, unsigned=True), st.integers(0, 2**16 - 1)),
    (ColumnDef("i24", T.INT24), st.integers(-(2**23), 2**23 - 1)),
    (ColumnDef("u24", T.INT24, unsigned=True), st.integers(0, 2**24 - 1)),
    (ColumnDef("i32", T.LONG), st.integers(-(2**31), 2**31 - 1)),
    (ColumnDef("u32", T.LONG, unsigned=True), st.integers(0, 2**32 - 1)),
    (ColumnDef("i64", T.LONGLONG), st.integers(-(2**63), 2**63 - 1)),
    (ColumnDef("u64", T.LONGLONG, unsigned=True), st.integers(0, 2**64 - 1)),
    (ColumnDef("yr", T.YEAR), st.sampled_from([0, 1901, 2024, 2155])),
    (ColumnDef("b1", T.BIT, bits=1), st.integers(0, 1)),
    (ColumnDef("b64", T.BIT, bits=64), st.integers(0, 2**64 - 1)),
    (
        ColumnDef("dbl", T.DOUBLE),
        st.floats(allow_nan=False, allow_infinity=False)
        | st.sampled_from([0.0, -0.0, 1e16, 1e-5, 1e-4, 123456789.125, 5e-324]),
    ),
    (ColumnDef("dec", T.NEWDECIMAL, precision=12, scale=2), _decimals(12, 2)),
    (ColumnDef("dec0", T.NEWDECIMAL, precision=10, scale=0), _decimals(10, 0)),
    (ColumnDef("dfrac", T.NEWDECIMAL, precision=9, scale=9), _decimals(9, 9)),
    (ColumnDef("dwide", T.NEWDECIMAL, precision=65, scale=30), _decimals(65, 30)),
    (ColumnDef("dmid", T.NEWDECIMAL, precision=30, scale=10), _decimals(30, 10)),
    (
        ColumnDef("d", T.DATE),
        st.tuples(st.integers(0, 9999), st.integers(0, 12), st.integers(0, 31)),
    ),
    *[(ColumnDef(f"dt{f}", T.DATETIME2, fsp=f), _datetime(f)) for f in range(7)],
    *[
        (
            ColumnDef(f"ts{f}", T.TIMESTAMP2, fsp=f),
            st.tuples(st.integers(0, 2**32 - 1), _fsp_micros(f)),
        )
        for f in range(7)
    ],
    *[(ColumnDef(f"tm{f}", T.TIME2, fsp=f), _time(f)) for f in range(7)],
    (
        ColumnDef("e", T.ENUM, enum_values=ENUM_MEMBERS, size=1),
        st.integers(0, len(ENUM_MEMBERS) - 1),
    ),
    (
        ColumnDef("e2", T.ENUM, enum_values=("", *(f"v{i}" for i in range(300))), size=2),
        st.integers(0, 300),
    ),
    (ColumnDef("s", T.SET, set_values=SET_MEMBERS, size=1), st.integers(0, 15)),
    (ColumnDef("s64", T.SET, set_values=WIDE_SET, size=8), st.integers(0, 2**64 - 1)),
    (
        ColumnDef("vc", T.VARCHAR, charset="utf8mb4", max_length=400),
        st.text(max_size=30).map(str.encode),
    ),
    (
        ColumnDef("ch3", T.STRING, charset="utf8mb3", max_length=60),
        st.text(st.characters(max_codepoint=0xFFFF, exclude_categories=["Cs"]), max_size=20).map(
            str.encode
        ),
    ),
    (
        ColumnDef("txt", T.BLOB, charset="utf8mb4", length_size=2),
        st.text(max_size=30).map(str.encode),
    ),
    (ColumnDef("lat", T.VARCHAR, charset="latin1", max_length=40), st.binary(max_size=30)),
    (
        ColumnDef("cyr", T.VARCHAR, charset="cp1251", max_length=300),
        # 0x98 is not a character in cp1251 (test_cp1251_hole_is_refused_both_ways).
        st.binary(max_size=30).map(lambda b: b.replace(b"\x98", b"?")),
    ),
    (
        ColumnDef("asc", T.VARCHAR, charset="ascii", max_length=30),
        st.binary(max_size=20).map(lambda b: bytes(x & 0x7F for x in b)),
    ),
    (ColumnDef("bin8", T.STRING, charset="binary", max_length=8), st.binary(max_size=8)),
    (ColumnDef("vbin", T.VARCHAR, charset="binary", max_length=300), st.binary(max_size=40)),
    (ColumnDef("blob", T.BLOB, charset="binary", length_size=3), st.binary(max_size=40)),
]

OPTIONS = st.builds(
    FormatterOptions,
    output_null_zerodates=st.booleans(),
    decimal_as_string=st.booleans(),
    output_primary_keys=st.booleans(),
    primary_key_change=st.sampled_from(["split", "update"]),
)


@st.composite
def tables(draw: st.DrawFn) -> tuple[TableDef, list[st.SearchStrategy[Any]]]:
    picks = draw(
        st.lists(st.sampled_from(range(len(CATALOG))), min_size=1, max_size=10, unique=True)
    )
    columns = tuple(CATALOG[i][0] for i in picks)
    names = [c.name for c in columns]
    pk = draw(st.lists(st.sampled_from(names), max_size=2, unique=True))
    return TableDef(42, "diff_db", "t", columns, tuple(pk)), [CATALOG[i][1] for i in picks]


@st.composite
def cases(draw: st.DrawFn) -> tuple[TableDef, str, bytes]:
    """A table, a rows-event kind and a valid body with 1-4 rows (updates: before
    and after images, some columns unchanged)."""
    table, values = draw(tables())
    kind = draw(st.sampled_from(["insert", "update", "delete"]))
    row = st.tuples(*(st.none() | v for v in values))
    body = b""
    for _ in range(draw(st.integers(1, 4))):
        before = draw(row)
        body += encode_row(table.columns, list(before))
        if kind == "update":
            after = [
                draw(st.none() | v) if draw(st.booleans()) else old
                for old, v in zip(before, values, strict=True)
            ]
            body += encode_row(table.columns, after)
    return table, kind, body


def _native_options(options: FormatterOptions) -> NativeOptions:
    return NativeOptions(options.output_null_zerodates, options.decimal_as_string)


def _messages(
    table: TableDef, rows: list[RowImage] | list[EncodedRow], options: FormatterOptions
) -> list[tuple[bytes, bytes]]:
    formatter = MaxwellFormatter(options)
    changes = formatter.split_key_changes([RowChange(table, row) for row in rows])
    out = []
    for index, change in enumerate(changes):
        message = formatter.format(CTX, table, change.row, index, index == len(changes) - 1)
        out.append((message.key, message.value))
    return out


def _both_ways(
    table: TableDef, kind: Any, body: bytes, options: FormatterOptions
) -> tuple[list[EncodedRow] | None, list[RowImage] | DecodeError]:
    bitmap = all_present(len(table.columns))
    after = bitmap if kind == "update" else None
    native = RowDecoder(table, _native_options(options))
    assert native.path == "native", native.path_reason
    encoded = native.encode_body(kind, body, bitmap, after)
    try:
        reference = RowDecoder(table).decode_body(
            kind, body, bitmap, after, POSITION, reference=True
        )
    except DecodeError as exc:
        return encoded, exc
    assert all(type(r) is RowImage for r in reference)
    return encoded, reference  # type: ignore[return-value]


def test_the_native_module_is_installed() -> None:
    # `make venv` builds it; without it every table silently takes the Python path.
    assert native_available()


@DIFF
@given(cases(), OPTIONS)
def test_native_messages_equal_the_python_messages(
    case: tuple[TableDef, str, bytes], options: FormatterOptions
) -> None:
    table, kind, body = case
    encoded, reference = _both_ways(table, kind, body, options)
    assert not isinstance(reference, DecodeError), reference
    assert encoded is not None, "the native decoder refused a valid body"
    assert all(type(r) is EncodedRow for r in encoded)
    assert _messages(table, encoded, options) == _messages(table, reference, options)


@DIFF
@given(cases(), OPTIONS, st.data())
def test_corrupted_bodies_are_refused_by_both_or_read_alike(
    case: tuple[TableDef, str, bytes], options: FormatterOptions, data: st.DataObject
) -> None:
    table, kind, body = case
    mutated = bytearray(body)
    for _ in range(data.draw(st.integers(1, 4))):
        mutated[data.draw(st.integers(0, len(mutated) - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        mutated = mutated[: data.draw(st.integers(0, len(mutated)))]
    encoded, reference = _both_ways(table, kind, bytes(mutated), options)
    if isinstance(reference, DecodeError):
        assert encoded is None
        assert reference.position == POSITION and reference.table == "diff_db.t"
    else:
        assert encoded is not None
        assert _messages(table, encoded, options) == _messages(table, reference, options)


COLS = (
    ColumnDef("id", T.LONG),
    ColumnDef("name", T.VARCHAR, charset="cp1251", max_length=40),
)
TABLE = TableDef(9, "db", "people", COLS, ("id",))


def test_cp1251_hole_is_refused_both_ways_and_names_the_column() -> None:
    body = encode_row(COLS, [1, b"\xc0\x98"])
    decoder = RowDecoder(TABLE, NativeOptions())
    assert decoder.encode_body("insert", body, all_present(2)) is None
    with pytest.raises(DecodeError) as info:
        decoder.decode_body("insert", body, all_present(2), position=POSITION, encoded=True)
    assert (info.value.position, info.value.table, info.value.column) == (
        POSITION,
        "db.people",
        "name",
    )


def test_valid_rows_take_the_native_path() -> None:
    body = encode_row(COLS, [1, "Привет".encode("cp1251")])
    rows = RowDecoder(TABLE, NativeOptions()).decode_body(
        "insert", body, all_present(2), encoded=True
    )
    assert rows == [EncodedRow("insert", '{"id":1,"name":"Привет"}', ("1",))]


@pytest.mark.parametrize(
    ("column", "reason"),
    [
        (ColumnDef("f", T.FLOAT), "column 'f': type FLOAT"),
        (ColumnDef("j", T.BLOB, charset="utf8mb4", length_size=4, is_json=True), "JSON values"),
        (ColumnDef("g", T.VARCHAR, charset="gbk", max_length=10), "character set 'gbk'"),
        (ColumnDef("old", T.DATETIME), "type DATETIME"),
    ],
)
def test_a_table_with_an_unsupported_column_takes_the_python_path(
    column: ColumnDef, reason: str
) -> None:
    table = TableDef(9, "db", "t", (ColumnDef("id", T.LONG), column), ("id",))
    decoder = RowDecoder(table, NativeOptions())
    assert decoder.path == "python"
    assert reason in decoder.path_reason
    body = encode_row(table.columns, [1, None])
    rows = decoder.decode_body("insert", body, all_present(2), encoded=True)
    assert [type(r) for r in rows] == [RowImage]


def test_a_partial_row_image_takes_the_python_path(caplog: pytest.LogCaptureFixture) -> None:
    decoder = RowDecoder(TABLE, NativeOptions())
    body = encode_row(COLS[:1], [5])
    assert not decoder.takes_native("delete", b"\x01", None)
    assert decoder.encode_body("delete", body, b"\x01") is None
    assert decoder.decode_body("delete", body, b"\x01", encoded=True) == [
        RowImage("delete", {"id": 5})
    ]
    # Not a refusal: nothing to warn about.
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_spilled_encoded_rows_read_back_the_same() -> None:
    spilled = SpilledRows()
    rows = [
        EncodedRow("insert", '{"id":1}', ("1",)),
        EncodedRow("update", '{"id":3}', ("3",), '{"id":2}', '{"id":2}', ("2",)),
        RowImage("delete", {"id": 4}),
    ]
    for row in rows:
        spilled.append(RowChange(TABLE, row))
    try:
        assert [(c.table, c.row) for c in spilled] == [(TABLE, r) for r in rows]
    finally:
        spilled.close()


# Every message-form option the row writer reads.
WRITER_OPTIONS = st.builds(
    FormatterOptions,
    output_binlog_position=st.booleans(),
    output_gtid_position=st.booleans(),
    output_server_id=st.booleans(),
    output_thread_id=st.booleans(),
    output_primary_keys=st.booleans(),
    output_primary_key_columns=st.booleans(),
    output_null_zerodates=st.booleans(),
    output_row_query=st.booleans(),
    output_commit_info=st.sampled_from([True, False, "every_row"]),
    output_xoffset=st.sampled_from([True, False, "every_row"]),
    output_event_id=st.booleans(),
    decimal_as_string=st.booleans(),
    source=st.sampled_from(["default", 'odd "source"\\', "ü"]),
    primary_key_change=st.sampled_from(["split", "update"]),
)
CONTEXTS = st.builds(
    TxnContext,
    server_id=st.integers(1, 2**32 - 1),
    thread_id=st.none() | st.integers(0, 2**32),
    gtid=st.none() | st.sampled_from(["0-7-99", "3e11fa47-71ca-11e1-9e33-c80aa9429562:23"]),
    file=st.sampled_from(["binlog.000002", 'odd"name\\.000001', "bïnlog.000009"]),
    pos=st.integers(4, 2**40),
    ts=st.integers(0, 2**32),
    xid=st.none() | st.integers(0, 2**64 - 1),
)


@DIFF
@given(cases(), WRITER_OPTIONS, CONTEXTS, st.none() | st.text(max_size=20), st.integers(0, 3))
def test_the_encoded_row_writer_writes_what_format_writes(
    case: tuple[TableDef, str, bytes],
    options: FormatterOptions,
    ctx: TxnContext,
    query: str | None,
    first_index: int,
) -> None:
    table, kind, body = case
    encoded, _ = _both_ways(table, kind, body, options)
    assert encoded is not None, "the native decoder refused a valid body"
    formatter = MaxwellFormatter(options)
    changes = formatter.split_key_changes([RowChange(table, row) for row in encoded])
    write = formatter.encoded_row_writer(ctx, table, query)
    for offset, change in enumerate(changes):
        index, last = first_index + offset, offset == len(changes) - 1
        assert isinstance(change.row, EncodedRow)
        message = formatter.format(ctx, table, change.row, index, last, query)
        assert write(change.row, index, last) == (message.key, message.value, message.event_id)


@DIFF
@given(cases(), WRITER_OPTIONS, CONTEXTS)
def test_a_transaction_of_encoded_rows_publishes_what_the_reference_rows_publish(
    case: tuple[TableDef, str, bytes], options: FormatterOptions, ctx: TxnContext
) -> None:
    table, kind, body = case
    encoded, reference = _both_ways(table, kind, body, options)
    assert encoded is not None and not isinstance(reference, DecodeError)

    def published(rows: list[EncodedRow] | list[RowImage]) -> list[Outgoing]:
        publisher = Publisher(MaxwellFormatter(options), Partitioner(4), Filter(None))
        end = Checkpoint(ctx.file, ctx.pos + 100, ctx.gtid, 0, ctx.server_id)
        txn = Transaction(ctx=ctx, end=end, changes=[RowChange(table, row) for row in rows])
        return list(publisher.messages(txn))

    assert published(encoded) == published(reference)
