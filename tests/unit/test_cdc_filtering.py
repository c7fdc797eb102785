"""Maxwell's filter syntax and its last-match-wins semantics."""

from __future__ import annotations

import pytest

from cdc.filtering import Filter, FilterSyntaxError


def test_default_includes_everything() -> None:
    f = Filter(None)
    assert f.includes_row("a", "b", {"x": 1})
    assert f.may_include_table("a", "b")


def test_last_matching_rule_wins() -> None:
    f = Filter("exclude: shop.*, include: shop.orders")
    assert f.includes_table("shop", "orders")
    assert not f.includes_table("shop", "users")
    assert f.includes_table("other", "users")
    assert not f.may_include_table("shop", "users")


def test_regex_names_use_search() -> None:
    f = Filter("exclude: *.*, include: /^app_\\d+$/./log/")
    assert f.includes_table("app_12", "audit_log")
    assert not f.includes_table("app_x", "audit_log")
    assert not f.includes_table("app_1", "orders")


def test_column_value_rules_decide_per_row() -> None:
    f = Filter("exclude: shop.orders.status=cancelled, include: shop.orders.status=/^vip/")
    assert f.may_include_table("shop", "orders")
    assert not f.includes_row("shop", "orders", {"status": "cancelled"})
    assert f.includes_row("shop", "orders", {"status": "open"})
    assert f.includes_row("shop", "orders", {"status": "vip-cancelled"})
    # A row without the column is decided by table rules only.
    assert f.includes_row("shop", "orders", {"id": 1})


def test_column_rule_can_include_rows_of_an_excluded_table() -> None:
    f = Filter("exclude: *.*, include: shop.orders.region=eu")
    assert f.may_include_table("shop", "orders")
    assert not f.includes_table("shop", "orders")
    assert f.includes_row("shop", "orders", {"region": "eu"})
    assert not f.includes_row("shop", "orders", {"region": "us"})
    assert not f.may_include_table("shop", "users")


def test_null_and_numeric_values() -> None:
    f = Filter("exclude: d.t.deleted_at=null, exclude: d.t.n=5")
    assert not f.includes_row("d", "t", {"deleted_at": None})
    assert f.includes_row("d", "t", {"deleted_at": "2024-01-01"})
    assert not f.includes_row("d", "t", {"n": 5})
    assert f.includes_row("d", "t", {"n": 55})


def test_blacklist_cannot_be_undone() -> None:
    f = Filter("blacklist: secret.*, include: secret.ok")
    assert f.is_blacklisted("secret", "ok")
    assert not f.includes_table("secret", "ok")
    assert not f.includes_row("secret", "ok", {})


def test_quoted_names_and_commas_inside_regex() -> None:
    f = Filter("exclude: `my.db`.*, include: x./a{1,2}/")
    assert not f.includes_table("my.db", "t")
    assert f.includes_table("x", "aa")


@pytest.mark.parametrize(
    "text",
    ["include shop.orders", "drop: a.b", "include: shop", "include: a./[/", "blacklist: a.b.c=1"],
)
def test_syntax_errors_name_the_setting(text: str) -> None:
    with pytest.raises(FilterSyntaxError, match=r"cdc\.filter"):
        Filter(text)
