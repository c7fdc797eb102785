"""`cdc.snapshot_new_tables`: which statements rename a table into the filter, which
tables a changed filter newly includes, and the setting's validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdc.ddl import renamed_tables
from cdc.filtering import Filter
from cdc.options import load_cdc_options
from cdc.replication.transaction import Statement
from cdc.snapshot.new_tables import newly_included, renamed_into
from shardctl.core.config import ConfigError


def test_renamed_tables_of_rename_and_alter_statements() -> None:
    assert renamed_tables("RENAME TABLE a.x TO b.y, z TO `w``w`", "d") == [
        (("a", "x"), ("b", "y")),
        (("d", "z"), ("d", "w`w")),
    ]
    assert renamed_tables("ALTER TABLE x.t ADD COLUMN c INT, RENAME TO y.t2", "d") == [
        (("x", "t"), ("y", "t2"))
    ]
    assert renamed_tables("alter table t rename as t3", "d") == [(("d", "t"), ("d", "t3"))]
    assert renamed_tables("/* moved */ ALTER TABLE t RENAME u", "d") == [(("d", "t"), ("d", "u"))]
    for sql in (
        "ALTER TABLE t RENAME COLUMN a TO b",
        "ALTER TABLE t RENAME INDEX a TO b",
        "ALTER TABLE t ADD COLUMN renamed INT",
        "CREATE TABLE t AS SELECT * FROM u",
        "DROP TABLE t",
    ):
        assert renamed_tables(sql, "d") == [], sql


def test_only_renames_from_outside_the_filter_into_it_count() -> None:
    row_filter = Filter("exclude: *.*, include: app.*")
    statement = Statement(
        "app", "RENAME TABLE staging.orders TO app.orders, app.a TO app.b, app.c TO staging.c"
    )
    assert renamed_into(statement, row_filter) == [("app", "orders")]
    assert renamed_into(Statement("staging", "ALTER TABLE t RENAME app.t"), row_filter) == [
        ("app", "t")
    ]


def test_newly_included_tables_of_a_changed_filter() -> None:
    tables = [("app", "a"), ("app", "b"), ("staging", "c"), ("other", "d")]
    old = Filter("exclude: *.*, include: app.*")
    new = Filter("exclude: *.*, include: app.*, include: staging.*, exclude: app.b")
    assert newly_included(tables, old, new) == [("staging", "c")]
    assert newly_included(tables, Filter(None), new) == []


def test_the_setting_is_a_boolean_named_in_its_error(tmp_path: Path) -> None:
    config = tmp_path / "shardctl.toml"
    config.write_text("[cdc]\n")
    assert not load_cdc_options(config).snapshot_new_tables
    assert load_cdc_options(config, {"snapshot_new_tables": "true"}).snapshot_new_tables
    with pytest.raises(ConfigError, match=r"cdc\.snapshot_new_tables"):
        load_cdc_options(config, {"snapshot_new_tables": "sometimes"})
