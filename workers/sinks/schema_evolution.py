"""Schema evolution for the SQL sinks (`schema_evolution = basic`): what column a
message value needs, and in which database type it is kept.

The reader's row messages carry values, not column types (Maxwell's form), and its
DDL messages carry no column definitions, so a missing table or column is made
from the first non-null values the sink sees, conservatively, in a type that keeps
every value of its kind exactly:

    value (as workers.events decodes it)    kind         MariaDB/MySQL     PostgreSQL
    integer in the signed 64-bit range      bigint       BIGINT            BIGINT
    integer in 2**63 .. 2**64 - 1           ubigint      BIGINT UNSIGNED   NUMERIC(20,0)
    other integer, number with a fraction   decimal      DECIMAL(65,30)    NUMERIC
    string (text, dates, base64 binary)     text         LONGTEXT          TEXT
      ... in a primary key column           key_text     VARCHAR(255) (1)  TEXT
    object, array, true/false (JSON)        json         JSON              JSONB
    null                                    none: the column is made once a value comes

    (1) with a binary, no-pad collation (utf8mb4_nopad_bin; utf8mb4_0900_bin on
        MySQL 8), so keys that differ only in case or trailing spaces stay apart.

A value no type of the target holds exactly is refused (`Unmappable`, the event is
dead-lettered with the reason); it is never rounded or cut: DECIMAL(65,30) keeps 35
digits before the point and 30 after, PostgreSQL's text cannot hold U+0000, a JSON
value cannot be a primary key. Nothing is ever dropped or narrowed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Literal

SchemaEvolution = Literal["none", "basic"]

BIGINT = "bigint"
UNSIGNED_BIGINT = "ubigint"
DECIMAL = "decimal"
TEXT = "text"
KEY_TEXT = "key_text"
JSON = "json"

# The database type each kind is made with (see the module docstring).
MARIADB_TYPES: Mapping[str, str] = {
    BIGINT: "BIGINT",
    UNSIGNED_BIGINT: "BIGINT UNSIGNED",
    DECIMAL: "DECIMAL(65,30)",
    TEXT: "LONGTEXT",
    # Binary and without padding, as PostgreSQL compares text: keys that differ only
    # in case or trailing spaces stay two rows.
    KEY_TEXT: "VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin",
    JSON: "JSON",
}
# MySQL 8 names its binary no-pad collation differently.
MYSQL_TYPES: Mapping[str, str] = {
    **MARIADB_TYPES,
    KEY_TEXT: "VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_0900_bin",
}
POSTGRES_TYPES: Mapping[str, str] = {
    BIGINT: "BIGINT",
    UNSIGNED_BIGINT: "NUMERIC(20,0)",
    DECIMAL: "NUMERIC",
    TEXT: "TEXT",
    KEY_TEXT: "TEXT",
    JSON: "JSONB",
}

# DECIMAL(65,30): MariaDB's and MySQL's widest DECIMAL, and its largest scale.
MARIADB_DECIMAL_SCALE = 30
MARIADB_DECIMAL_INTEGER_DIGITS = 65 - MARIADB_DECIMAL_SCALE
MARIADB_KEY_CHARS = 255


class Unmappable(ValueError):
    """A value that no column type of the target holds exactly; the message says why."""


def value_kind(value: Any, key: bool = False) -> str | None:
    """The kind of column `value` needs (None for null: nothing to infer from).
    `key`: the column is part of the primary key."""
    if value is None:
        return None
    if isinstance(value, bool | dict | list):
        # Maxwell writes BIT and BOOL columns as numbers: true/false come from JSON.
        if key:
            raise Unmappable("a JSON value cannot be a primary key column")
        return JSON
    if isinstance(value, int):
        if -(2**63) <= value < 2**63:
            return BIGINT
        if 2**63 <= value < 2**64:
            return UNSIGNED_BIGINT
        return DECIMAL
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise Unmappable(f"{value} is not a finite number")
        return DECIMAL
    if isinstance(value, str):
        return KEY_TEXT if key else TEXT
    raise Unmappable(f"a {type(value).__name__} value has no column type")


def _significant(value: Decimal) -> tuple[tuple[int, ...], int]:
    """The digits of `value` without leading or trailing zeros, and the exponent of
    the last one ((), 0 for zero)."""
    _sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int), "a finite Decimal"
    nonzero = [n for n, d in enumerate(digits) if d]
    if not nonzero:
        return (), 0
    last = nonzero[-1]
    return tuple(digits[nonzero[0] : last + 1]), exponent + len(digits) - 1 - last


def fraction_digits(value: Decimal) -> int:
    """Significant digits after the point (10.50 -> 1, 3 -> 0, 1E-40 -> 40)."""
    _digits, exponent = _significant(value)
    return max(0, -exponent)


def integer_digits(value: Decimal | int) -> int:
    """Digits before the point (0.5 -> 0, 123.4 -> 3, 1E+40 -> 41)."""
    if isinstance(value, int):
        return len(str(abs(value))) if value else 0
    digits, exponent = _significant(value)
    return max(0, len(digits) + exponent)


def mariadb_refusal(kind: str, value: Any) -> str | None:
    """Why MariaDB/MySQL's type for `kind` cannot hold `value` exactly; None if it can."""
    if kind == DECIMAL:
        number = value if isinstance(value, Decimal | int) else Decimal(str(value))
        places = fraction_digits(number) if isinstance(number, Decimal) else 0
        if places > MARIADB_DECIMAL_SCALE:
            return (
                f"{value} has {places} digits after the point; DECIMAL(65,30) keeps "
                f"{MARIADB_DECIMAL_SCALE}"
            )
        whole = integer_digits(number)
        if whole > MARIADB_DECIMAL_INTEGER_DIGITS:
            return (
                f"{value} has {whole} digits before the point; DECIMAL(65,30) keeps "
                f"{MARIADB_DECIMAL_INTEGER_DIGITS}"
            )
    if kind == KEY_TEXT and len(value) > MARIADB_KEY_CHARS:
        return f"a key of {len(value)} characters; VARCHAR({MARIADB_KEY_CHARS}) keeps fewer"
    return None


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(v) for v in value)
    return False


def postgres_refusal(kind: str, value: Any) -> str | None:
    """Why PostgreSQL's type for `kind` cannot hold `value` exactly; None if it can."""
    if kind in (TEXT, KEY_TEXT, JSON) and _holds_nul(value):
        return "PostgreSQL text and jsonb cannot hold the character U+0000"
    return None


def key_columns(message: Mapping[str, Any], key: bytes | None) -> list[str]:
    """The source table's primary key columns as the event tells them: the message's
    `primary_key_columns` (the reader's output_primary_key_columns), else the
    `pk.<column>` fields of the Kafka key (Maxwell's hash key format). Empty if
    neither names one."""
    declared = message.get("primary_key_columns")
    if isinstance(declared, list) and declared:
        return [str(c) for c in declared]
    if not key:
        return []
    try:
        parsed = json.loads(key)
    except ValueError:
        return []
    if not isinstance(parsed, dict):
        return []
    return [name[3:] for name in parsed if isinstance(name, str) and name.startswith("pk.")]
