"""The Maxwell formatter: field order, the Kafka key, every output option, DDL
and bootstrap messages, and byte-stable JSON."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc.formatter import FormatError, FormatterOptions, MaxwellFormatter
from cdc.json_text import compile_object_encoder, encode
from cdc.rows import RowImage, TxnContext, event_id
from cdc.schema import ColumnDef, ColumnType, TableDef
from shardctl.core.hashing import shard_of

T = ColumnType
TABLE = TableDef(
    9,
    "shop",
    "orders",
    (
        ColumnDef("id", T.LONG),
        ColumnDef("region", T.VARCHAR, charset="utf8mb4", max_length=40),
        ColumnDef("amount", T.NEWDECIMAL, precision=10, scale=2),
        ColumnDef("day", T.DATE),
        ColumnDef("at", T.DATETIME2),
    ),
    ("id", "region"),
)
CTX = TxnContext(
    server_id=11,
    thread_id=22,
    gtid="0-11-333",
    file="binlog.000004",
    pos=4567,
    ts=1700000001,
    xid=88,
)
ROW = RowImage(
    "insert",
    {
        "id": 7,
        "region": "eu",
        "amount": Decimal("10.50"),
        "day": "0000-00-00",
        "at": "2024-01-01 00:00:00",
    },
)


def _fields(message_value: bytes) -> list[str]:
    return list(json.loads(message_value))


def test_default_row_message_fields_and_order() -> None:
    # Maxwell's RowMap.toJSON with its code defaults (output_commit_info and
    # output_xoffset on): a row that is not its transaction's last has xid and
    # xoffset, and no commit field.
    message = MaxwellFormatter().format(CTX, TABLE, ROW, 0, False)
    assert _fields(message.value) == [
        "database",
        "table",
        "type",
        "ts",
        "xid",
        "xoffset",
        "event_id",
        "source",
        "data",
    ]
    doc = json.loads(message.value)
    assert doc["database"] == "shop" and doc["table"] == "orders" and doc["type"] == "insert"
    assert doc["source"] == "default/11"  # cdc.source / the transaction's server_id
    assert doc["ts"] == 1700000001 and doc["xid"] == 88 and doc["xoffset"] == 0
    assert doc["event_id"] == "0-11-333#0" == message.event_id
    assert doc["data"]["day"] == "0000-00-00"
    # DECIMAL is a JSON number with every digit, never a float.
    assert b'"amount":10.50' in message.value
    assert json.loads(message.value, parse_float=Decimal)["data"]["amount"] == Decimal("10.50")


def test_last_row_of_a_transaction_commits_without_xoffset() -> None:
    # Maxwell: `commit:true` on the transaction's last row, and no xoffset there.
    message = MaxwellFormatter().format(CTX, TABLE, ROW, 5, True)
    assert b'"xid":88,"commit":true,"event_id"' in message.value
    doc = json.loads(message.value)
    assert doc["commit"] is True and "xoffset" not in doc


def test_every_row_form_writes_commit_and_xoffset_on_each_row() -> None:
    # The form of earlier versions: commit false/true and xoffset on every row.
    formatter = MaxwellFormatter(
        FormatterOptions(output_commit_info="every_row", output_xoffset="every_row")
    )
    first = json.loads(formatter.format(CTX, TABLE, ROW, 0, False).value)
    last = json.loads(formatter.format(CTX, TABLE, ROW, 1, True).value)
    assert (first["xoffset"], first["commit"]) == (0, False)
    assert (last["xoffset"], last["commit"]) == (1, True)
    assert list(first)[4:7] == ["xid", "xoffset", "commit"]


@pytest.mark.parametrize(
    ("commit_info", "xoffset", "middle", "last"),
    [
        # Maxwell: xoffset needs output_commit_info; without it, no xid either.
        (False, True, [], []),
        (False, "every_row", [], []),
        (True, False, ["xid"], ["xid", "commit"]),
        (True, True, ["xid", "xoffset"], ["xid", "commit"]),
        (True, "every_row", ["xid", "xoffset"], ["xid", "xoffset", "commit"]),
        ("every_row", False, ["xid", "commit"], ["xid", "commit"]),
        ("every_row", True, ["xid", "xoffset", "commit"], ["xid", "commit"]),
    ],
)
def test_commit_info_options(
    commit_info: Any, xoffset: Any, middle: list[str], last: list[str]
) -> None:
    formatter = MaxwellFormatter(
        FormatterOptions(output_commit_info=commit_info, output_xoffset=xoffset)
    )
    commit_fields = {"xid", "xoffset", "commit"}
    mid_doc = json.loads(formatter.format(CTX, TABLE, ROW, 3, False).value)
    last_doc = json.loads(formatter.format(CTX, TABLE, ROW, 4, True).value)
    assert [f for f in mid_doc if f in commit_fields] == middle
    assert [f for f in last_doc if f in commit_fields] == last
    if "commit" in last_doc:
        assert last_doc["commit"] is True
    if "commit" in mid_doc:
        assert mid_doc["commit"] is False


def test_output_event_id_off_leaves_out_event_id_and_source() -> None:
    formatter = MaxwellFormatter(FormatterOptions(output_event_id=False))
    message = formatter.format(CTX, TABLE, ROW, 0, True)
    doc = json.loads(message.value)
    assert "event_id" not in doc and "source" not in doc
    # The id still travels with the message, for the reader's own bookkeeping.
    assert message.event_id == "0-11-333#0"
    start = formatter.format_bootstrap("bootstrap-start", TABLE, event_id="b#0", ts=5)
    assert "event_id" not in json.loads(start.value)
    ddl = MaxwellFormatter(FormatterOptions(output_ddl=True, output_event_id=False)).format_ddl(
        ddl_type="table-create",
        database="shop",
        table="t",
        sql="CREATE TABLE t (id INT)",
        ts_ms=1000,
        position="binlog.000004:4",
        event_id="0-11-334#0",
    )
    assert ddl is not None and "event_id" not in json.loads(ddl.value)


def test_key_lowercases_primary_key_column_names_like_maxwell() -> None:
    # Maxwell writes `pk.<column>` with the column name lowercased; primary_key_columns
    # keeps the table definition's case.
    table = TableDef(
        3,
        "Shop",
        "Users",
        (ColumnDef("UserId", T.LONG), ColumnDef("Région", T.VARCHAR, charset="utf8mb4")),
        ("UserId", "Région"),
    )
    formatter = MaxwellFormatter(FormatterOptions(output_primary_key_columns=True))
    row = RowImage("insert", {"UserId": 5, "Région": "EU"})
    message = formatter.format(CTX, table, row, 0, True)
    assert (
        message.key == '{"database":"Shop","table":"Users","pk.userid":5,"pk.région":"EU"}'.encode()
    )
    doc = json.loads(message.value)
    assert doc["primary_key_columns"] == ["UserId", "Région"]
    assert doc["data"] == {"UserId": 5, "Région": "EU"}
    bootstrap = formatter.format_bootstrap(
        "bootstrap-insert", table, event_id="b#1", ts=5, data=dict(row.data)
    )
    assert bootstrap.key == message.key


def test_update_carries_old_values_of_changed_columns() -> None:
    row = RowImage("update", {**ROW.data, "region": "us"}, {"region": "eu"})
    doc = json.loads(MaxwellFormatter().format(CTX, TABLE, row, 1, True).value)
    assert doc["type"] == "update"
    assert doc["old"] == {"region": "eu"}
    assert _fields(MaxwellFormatter().format(CTX, TABLE, row, 1, True).value)[-1] == "old"


def test_delete_has_the_deleted_row_and_no_old() -> None:
    doc = json.loads(
        MaxwellFormatter().format(CTX, TABLE, RowImage("delete", ROW.data), 0, True).value
    )
    assert doc["type"] == "delete" and doc["data"]["id"] == 7 and "old" not in doc


def test_kafka_key_is_maxwell_hash_format_and_byte_stable() -> None:
    message = MaxwellFormatter().format(CTX, TABLE, ROW, 0, False)
    assert message.key == b'{"database":"shop","table":"orders","pk.id":7,"pk.region":"eu"}'
    again = MaxwellFormatter(FormatterOptions(output_binlog_position=True)).format(
        CTX, TABLE, RowImage("update", dict(ROW.data), {}), 3, True
    )
    # Same row, other options, other change: same key, same shard.
    assert again.key == message.key
    assert shard_of(again.key, 16) == shard_of(message.key, 16)


def test_key_escapes_and_keeps_unicode() -> None:
    table = TableDef(1, 'd"b', "t\\1", (ColumnDef("k", T.VARCHAR, charset="utf8mb4"),), ("k",))
    message = MaxwellFormatter().format(CTX, table, RowImage("insert", {"k": "ü\n"}), 0, True)
    assert message.key == '{"database":"d\\"b","table":"t\\\\1","pk.k":"ü\\n"}'.encode()
    assert json.loads(message.key) == {"database": 'd"b', "table": "t\\1", "pk.k": "ü\n"}


def test_table_without_primary_key_keys_by_table() -> None:
    table = TableDef(1, "db", "log", (ColumnDef("line", T.LONG),), ())
    message = MaxwellFormatter().format(CTX, table, RowImage("insert", {"line": 1}), 0, True)
    assert message.key == b'{"database":"db","table":"log"}'


def test_event_id_without_gtid_is_file_pos() -> None:
    ctx = TxnContext(11, None, None, "binlog.000004", 4567, 1700000001, 88)
    assert event_id(ctx, 3) == "binlog.000004:4567#3"
    doc = json.loads(MaxwellFormatter().format(ctx, TABLE, ROW, 3, False).value)
    assert doc["event_id"] == "binlog.000004:4567#3"


def test_every_option_on() -> None:
    options = FormatterOptions(
        output_binlog_position=True,
        output_gtid_position=True,
        output_server_id=True,
        output_thread_id=True,
        output_primary_keys=True,
        output_primary_key_columns=True,
        output_null_zerodates=True,
        decimal_as_string=True,
        source="shop-main",
    )
    message = MaxwellFormatter(options).format(CTX, TABLE, ROW, 2, True)
    assert _fields(message.value) == [
        "database",
        "table",
        "type",
        "ts",
        "xid",
        "commit",
        "position",
        "gtid",
        "server_id",
        "thread_id",
        "event_id",
        "source",
        "primary_key",
        "primary_key_columns",
        "data",
    ]
    doc = json.loads(message.value)
    assert doc["position"] == "binlog.000004:4567"
    assert doc["gtid"] == "0-11-333"
    assert doc["server_id"] == 11 and doc["thread_id"] == 22
    assert doc["source"] == "shop-main/11"
    assert doc["primary_key"] == [7, "eu"]
    assert doc["primary_key_columns"] == ["id", "region"]
    assert doc["data"]["day"] is None  # zero date -> null
    assert doc["data"]["at"] == "2024-01-01 00:00:00"
    assert doc["data"]["amount"] == "10.50"  # decimal as string


@pytest.mark.parametrize(
    ("option", "field"),
    [
        ("output_binlog_position", "position"),
        ("output_gtid_position", "gtid"),
        ("output_server_id", "server_id"),
        ("output_thread_id", "thread_id"),
        ("output_primary_keys", "primary_key"),
        ("output_primary_key_columns", "primary_key_columns"),
    ],
)
def test_each_field_option_alone(option: str, field: str) -> None:
    off = json.loads(MaxwellFormatter().format(CTX, TABLE, ROW, 0, True).value)
    on = json.loads(
        MaxwellFormatter(FormatterOptions(**{option: True})).format(CTX, TABLE, ROW, 0, True).value
    )
    assert field not in off and field in on
    assert set(on) - set(off) == {field}


def test_null_zerodates_applies_to_old_values_too() -> None:
    row = RowImage("update", {**ROW.data, "day": "2024-01-01"}, {"day": "0000-00-00"})
    doc = json.loads(
        MaxwellFormatter(FormatterOptions(output_null_zerodates=True))
        .format(CTX, TABLE, row, 0, True)
        .value
    )
    assert doc["old"] == {"day": None}
    kept = json.loads(MaxwellFormatter().format(CTX, TABLE, row, 0, True).value)
    assert kept["old"] == {"day": "0000-00-00"}


def test_missing_primary_key_value_names_table_and_event() -> None:
    with pytest.raises(FormatError, match=r"shop\.orders event 0-11-333#0.*'region'"):
        MaxwellFormatter().format(CTX, TABLE, RowImage("insert", {"id": 1}), 0, True)


def test_non_finite_values_are_refused() -> None:
    with pytest.raises(FormatError, match="NaN"):
        MaxwellFormatter().format(
            CTX, TABLE, RowImage("insert", {**ROW.data, "amount": Decimal("NaN")}), 0, True
        )


def test_lone_surrogate_in_a_json_document_is_escaped() -> None:
    table = TableDef(1, "db", "t", (ColumnDef("j", T.JSON, length_size=4),), ())
    message = MaxwellFormatter().format(
        CTX, table, RowImage("insert", {"j": {"s": "a\ud800"}}), 0, True
    )
    assert json.loads(message.value)["data"]["j"] == {"s": "a\ud800"}


def test_ddl_only_with_output_ddl() -> None:
    args: dict[str, Any] = {
        "ddl_type": "table-alter",
        "database": "shop",
        "table": "orders",
        "sql": "ALTER TABLE orders ADD note TEXT",
        "ts_ms": 1700000001000,
        "position": "binlog.000004:9000",
        "event_id": "0-11-334#0",
    }
    assert MaxwellFormatter().format_ddl(**args) is None
    with_position = FormatterOptions(output_ddl=True, output_binlog_position=True)
    message = MaxwellFormatter(with_position).format_ddl(
        **args, definition={"columns": []}, old_definition={"columns": [1]}
    )
    assert message is not None
    doc = json.loads(message.value)
    assert list(doc) == [
        "type",
        "database",
        "table",
        "old",
        "def",
        "ts",
        "sql",
        "position",
        "event_id",
    ]
    assert doc["ts"] == 1700000001000 and doc["sql"].startswith("ALTER")
    assert message.key == b'{"database":"shop","table":"orders"}'


def test_bootstrap_messages() -> None:
    formatter = MaxwellFormatter()
    start = formatter.format_bootstrap("bootstrap-start", TABLE, event_id="b#0", ts=5)
    insert = formatter.format_bootstrap(
        "bootstrap-insert", TABLE, event_id="b#1", ts=5, data=dict(ROW.data)
    )
    done = formatter.format_bootstrap("bootstrap-complete", TABLE, event_id="b#2", ts=5)
    assert json.loads(start.value) == {
        "database": "shop",
        "table": "orders",
        "type": "bootstrap-start",
        "ts": 5,
        "event_id": "b#0",
        "data": {},
    }
    assert json.loads(insert.value)["data"]["id"] == 7
    assert json.loads(done.value)["type"] == "bootstrap-complete"
    # A bootstrapped row lands where its live changes do.
    assert insert.key == formatter.format(CTX, TABLE, ROW, 0, True).key
    with pytest.raises(FormatError, match="region"):
        formatter.format_bootstrap("bootstrap-insert", TABLE, event_id="b#3", data={"id": 1})


JSON_READY = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
    | st.decimals(allow_nan=False, allow_infinity=False),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=15,
)


@settings(max_examples=200)
@given(JSON_READY)
def test_encode_is_valid_json_of_the_same_value(value: Any) -> None:
    text = encode(value)
    parsed = json.loads(text, parse_float=Decimal, parse_int=int)

    def plain(v: Any) -> Any:
        # Numbers compared as exact decimals (Decimal equality does not round).
        if isinstance(v, bool):
            return v
        if isinstance(v, float):
            return Decimal(repr(v))
        if isinstance(v, int):
            return Decimal(v)
        if isinstance(v, list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    assert plain(parsed) == plain(value)
    assert encode(value) == text  # stable


@settings(max_examples=200)
@given(
    st.dictionaries(
        st.sampled_from(["a", "b", "c"]),
        st.none()
        | st.integers()
        | st.text()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.decimals(allow_nan=False, allow_infinity=False)
        | st.lists(st.integers(), max_size=3),
    )
)
def test_compiled_object_encoder_writes_what_encode_writes(values: dict[str, Any]) -> None:
    encoder = compile_object_encoder([("a", "int"), ("b", "str"), ("c", "any")])
    text = encoder(values)
    if set(values) != {"a", "b", "c"}:
        assert text is None
    else:
        ordered = {k: values[k] for k in ("a", "b", "c")}
        assert text == encode(ordered)
