"""The SQL sink writes JSON column values with their numbers exactly as published."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.events import decode_message
from workers.sinks.sql import column_value


def _json_column(message: bytes) -> str:
    doc = decode_message(message, shard=0, topic="t", position=0)
    text = column_value(doc["data"]["c"], "json")
    assert isinstance(text, str)
    return text


@pytest.mark.parametrize(
    "number",
    ["12345678901234567.89", "0.1", "-0.000000000000000000012", "1.10", "1e400", "2.5E-3"],
)
def test_a_decimal_in_a_json_column_keeps_every_digit(number: str) -> None:
    message = f'{{"type":"insert","data":{{"c":{{"amount":{number},"n":[{number}]}}}}}}'
    text = _json_column(message.encode())
    assert text == f'{{"amount": {Decimal(number)}, "n": [{Decimal(number)}]}}'
    assert json.loads(text, parse_float=Decimal)["amount"] == Decimal(number)


def test_a_json_scalar_column_keeps_its_digits() -> None:
    assert _json_column(b'{"data":{"c":12345678901234567.89}}') == "12345678901234567.89"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.decimals(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(json_values.filter(lambda v: v is not None))  # a null column is SQL NULL
def test_json_column_text_reads_back_equal(value: object) -> None:
    text = column_value(value, "json")
    assert json.loads(text, parse_float=Decimal) == value
