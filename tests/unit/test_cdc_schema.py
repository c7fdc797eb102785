"""Table definitions from TABLE_MAP metadata, and the MariaDB JSON-column rule."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from cdc.decoding import DecoderCache, StaticJsonColumns
from cdc.decoding.json_columns import json_column_of_check
from cdc.schema import ColumnType, SchemaError, TableDef, table_def_from_table_map


def _column(type_code: int, **attrs: Any) -> SimpleNamespace:
    return SimpleNamespace(type=type_code, **attrs)


def _table_map(names: list[str] | None = None) -> SimpleNamespace:
    """What mysql-replication's TableMapEvent exposes, for a table of
    (id INT UNSIGNED PK, name VARCHAR(20) latin1, doc LONGTEXT utf8mb4, e ENUM, s SET)."""
    columns = [
        _column(3),
        _column(15, max_length=20),
        _column(252, length_size=4),
        _column(247, size=1),
        _column(248, size=1),
    ]
    meta = SimpleNamespace(
        column_name_list=["id", "name", "doc", "e", "s"] if names is None else names,
        unsigned_column_list=[True, False, False, False, False],
        charset_collation_list=[8, 46],
        enum_and_set_collation_list=[224, 224],
        set_enum_str_value_list=[["a", "b"]],
        set_str_value_list=[["x", "y"]],
        simple_primary_key_list=[0],
        primary_keys_with_prefix={},
    )
    return SimpleNamespace(
        table_id=70,
        schema="shop",
        table="docs",
        dbms="mariadb",
        columns=columns,
        optional_metadata=meta,
        null_bitmask=b"\x1e",
    )


def test_table_def_from_full_row_metadata() -> None:
    table = table_def_from_table_map(_table_map(), json_columns={"doc"}, position="b.1:4")
    assert table.qualified_name == "shop.docs"
    assert [c.name for c in table.columns] == ["id", "name", "doc", "e", "s"]
    assert table.primary_key == ("id",)
    ident, name, doc, enum, set_ = table.columns
    assert ident.type is ColumnType.LONG and ident.unsigned and not ident.nullable
    assert name.charset == "latin1" and name.max_length == 20 and name.nullable
    assert doc.charset == "utf8mb4" and doc.is_json and doc.length_size == 4
    assert enum.enum_values == ("", "a", "b") and enum.charset == "utf8mb4"
    assert set_.set_values == ("x", "y")


def test_missing_column_names_name_the_setting_and_position() -> None:
    with pytest.raises(
        SchemaError, match=r"shop\.docs at binlog\.000001:4.*binlog_row_metadata=FULL"
    ):
        table_def_from_table_map(_table_map(names=[]), position="binlog.000001:4")


def test_unknown_collation_is_an_error_not_a_guess() -> None:
    event = _table_map()
    event.optional_metadata.charset_collation_list = [8, 9999]
    with pytest.raises(SchemaError, match=r"column 'doc'.*collation id 9999"):
        table_def_from_table_map(event, position="b.1:4")


def test_json_rule_only_marks_text_columns() -> None:
    table = table_def_from_table_map(_table_map(), json_columns={"name", "doc", "id"})
    assert [c.name for c in table.columns if c.is_json] == ["doc"]


@pytest.mark.parametrize(
    ("clause", "column"),
    [
        ("json_valid(`doc`)", "doc"),
        ("JSON_VALID(`we``ird`)", "we`ird"),
        ("  json_valid( `a b` ) ", "a b"),
        ("json_valid(`a`) and `b` > 0", None),
        ("`x` > 0", None),
    ],
)
def test_json_valid_check_clause(clause: str, column: str | None) -> None:
    assert json_column_of_check(clause) == column


def test_static_json_columns() -> None:
    source = StaticJsonColumns({"shop.docs": ["doc"]})
    assert source.json_columns("shop", "docs") == frozenset({"doc"})
    assert source.json_columns("shop", "other") == frozenset()


def test_decoder_cache_reuses_compiled_decoders_for_equal_layouts() -> None:
    cache = DecoderCache()
    first = table_def_from_table_map(_table_map(), json_columns={"doc"})
    second = table_def_from_table_map(_table_map(), json_columns={"doc"})
    assert first is not second and first == second
    assert cache.decoder_for(first) is cache.decoder_for(second)
    changed = table_def_from_table_map(_table_map(), json_columns=())
    assert cache.decoder_for(changed) is not cache.decoder_for(first)
    renamed = TableDef(first.table_id, "shop", "docs2", first.columns, first.primary_key)
    assert cache.decoder_for(renamed).table.table == "docs2"
