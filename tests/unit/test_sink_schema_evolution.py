"""Schema evolution's pure parts: the column kind a value needs, the type each
database makes for it, and the values a type cannot hold exactly."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.sinks.postgres import PostgresDialect, PostgresSinkSettings
from workers.sinks.schema_evolution import (
    BIGINT,
    DECIMAL,
    JSON,
    KEY_TEXT,
    MARIADB_TYPES,
    MYSQL_TYPES,
    POSTGRES_TYPES,
    TEXT,
    UNSIGNED_BIGINT,
    Unmappable,
    fraction_digits,
    integer_digits,
    key_columns,
    mariadb_refusal,
    postgres_refusal,
    value_kind,
)
from workers.sinks.sql import MariaDBDialect, SqlSinkSettings, column_value


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (0, BIGINT),
        (-(2**63), BIGINT),
        (2**63 - 1, BIGINT),
        (2**63, UNSIGNED_BIGINT),  # BIGINT UNSIGNED on the source
        (2**64 - 1, UNSIGNED_BIGINT),
        (2**64, DECIMAL),  # DECIMAL(p,0) values are JSON integers
        (-(2**63) - 1, DECIMAL),
        (Decimal("10.50"), DECIMAL),
        (Decimal("1E+300"), DECIMAL),
        ("text", TEXT),
        ({"a": 1}, JSON),
        ([1, 2], JSON),
        (True, JSON),  # BIT and BOOL columns are numbers in Maxwell's form
    ],
)
def test_each_value_needs_the_kind_that_holds_every_value_like_it(value: object, kind: str) -> None:
    assert value_kind(value) == kind


def test_a_null_needs_no_column_and_a_key_differs_for_text_and_json() -> None:
    assert value_kind(None) is None
    assert value_kind("k", key=True) == KEY_TEXT
    with pytest.raises(Unmappable, match="JSON value cannot be a primary key"):
        value_kind({"a": 1}, key=True)
    with pytest.raises(Unmappable, match="not a finite number"):
        value_kind(Decimal("NaN"))


def test_every_kind_has_a_type_in_each_database() -> None:
    kinds = {BIGINT, UNSIGNED_BIGINT, DECIMAL, TEXT, KEY_TEXT, JSON}
    assert set(MARIADB_TYPES) == set(MYSQL_TYPES) == set(POSTGRES_TYPES) == kinds
    # The explicit mapping between the two databases.
    assert MARIADB_TYPES[UNSIGNED_BIGINT] == "BIGINT UNSIGNED"
    assert POSTGRES_TYPES[UNSIGNED_BIGINT] == "NUMERIC(20,0)"
    assert (MARIADB_TYPES[JSON], POSTGRES_TYPES[JSON]) == ("JSON", "JSONB")
    assert (MARIADB_TYPES[DECIMAL], POSTGRES_TYPES[DECIMAL]) == ("DECIMAL(65,30)", "NUMERIC")
    assert "utf8mb4_nopad_bin" in MARIADB_TYPES[KEY_TEXT]
    assert "utf8mb4_0900_bin" in MYSQL_TYPES[KEY_TEXT]


def test_mysql_8_gets_its_own_binary_key_collation() -> None:
    assert MariaDBDialect(row_alias=False).column_types is MARIADB_TYPES
    assert MariaDBDialect(row_alias=True).column_types is MYSQL_TYPES
    assert PostgresDialect().column_types is POSTGRES_TYPES


def _plain(value: Decimal) -> tuple[str, str]:
    """The digits before and after the point, written out, without padding zeros.
    (copy_abs, not abs(): abs() rounds to the context's 28 digits.)"""
    text = format(value.copy_abs(), "f")
    whole, _, fraction = text.partition(".")
    return whole.lstrip("0"), fraction.rstrip("0")


# Finite decimals of up to 40 digits, with the point anywhere within 60 places.
DECIMALS = st.tuples(
    st.integers(0, 1), st.lists(st.integers(0, 9), min_size=1, max_size=40), st.integers(-60, 60)
).map(lambda t: Decimal((t[0], tuple(t[1]), t[2])))


@given(DECIMALS)
def test_digit_counts_are_those_of_the_number_written_out(value: Decimal) -> None:
    whole, fraction = _plain(value)
    assert fraction_digits(value) == len(fraction)
    assert integer_digits(value) == len(whole)


@given(st.integers())
def test_an_integer_has_its_digits_before_the_point(value: int) -> None:
    assert integer_digits(value) == len(str(abs(value)).lstrip("0"))


@pytest.mark.parametrize(
    ("value", "refused"),
    [
        (Decimal("1E-30"), None),
        (Decimal("1E-31"), "31 digits after the point"),
        (Decimal("1.5000000000000000000000000000000000"), None),  # padding zeros
        (10**35 - 1, None),
        (10**35, "36 digits before the point"),
        (Decimal("1E+300"), "301 digits before the point"),
    ],
)
def test_decimal_65_30_holds_35_digits_before_and_30_after_the_point(
    value: Decimal | int, refused: str | None
) -> None:
    found = mariadb_refusal(DECIMAL, value)
    assert found is None if refused is None else refused in (found or "")
    # PostgreSQL's unconstrained NUMERIC holds all of them.
    assert postgres_refusal(DECIMAL, value) is None


def test_a_mariadb_key_is_at_most_255_characters() -> None:
    assert mariadb_refusal(KEY_TEXT, "k" * 255) is None
    assert "256 characters" in (mariadb_refusal(KEY_TEXT, "k" * 256) or "")
    assert mariadb_refusal(TEXT, "k" * 100_000) is None


@pytest.mark.parametrize("value", ["a\x00b", {"k": "a\x00"}, {"a\x00": 1}, [["\x00"]]])
def test_postgres_cannot_hold_the_nul_character(value: object) -> None:
    kind = value_kind(value)
    assert kind is not None
    assert "U+0000" in (postgres_refusal(kind, value) or "")
    assert mariadb_refusal(kind, value) is None


def test_the_primary_key_comes_from_the_message_else_the_kafka_key() -> None:
    key = b'{"database":"shop","table":"t","pk.id":7,"pk.region":"eu"}'
    assert key_columns({"primary_key_columns": ["a"]}, key) == ["a"]
    assert key_columns({}, key) == ["id", "region"]
    assert key_columns({}, b'{"database":"shop","table":"t"}') == []
    assert key_columns({}, b"not json") == []
    assert key_columns({}, None) == []


def test_true_and_false_go_to_a_json_text_column_as_json() -> None:
    """MariaDB's JSON column is LONGTEXT: `true` must not become `1`."""
    assert column_value(True, "longtext") == "true"
    assert column_value(False, "json") == "false"


def test_schema_evolution_is_none_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    assert SqlSinkSettings().schema_evolution == "none"
    assert PostgresSinkSettings().schema_evolution == "none"
    monkeypatch.setenv("SHARDCTL_SINK_SQL_SCHEMA_EVOLUTION", "basic")
    assert SqlSinkSettings().schema_evolution == "basic"
    with pytest.raises(ValueError, match="schema_evolution"):
        PostgresSinkSettings(schema_evolution="full")  # type: ignore[arg-type]
