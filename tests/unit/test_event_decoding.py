"""A worker decodes each message with msgspec (fast), and gets exactly what the
standard library's json with exact decimals gave: the same document for every JSON
text, and for anything json refuses the same refusal (EventDecodeError naming where)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.events import EventDecodeError, decode_message

numbers = st.integers(min_value=-(10**40), max_value=10**40) | st.decimals(
    allow_nan=False, allow_infinity=False, places=None
).map(lambda d: d if d.as_tuple().exponent != 0 else d.scaleb(-1))
scalars = st.none() | st.booleans() | numbers | st.text()
documents = st.dictionaries(
    st.text(),
    st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=20,
    ),
)


def _text(value: Any) -> str:
    """JSON text, writing a Decimal as its digits (a JSON number with a fraction)."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_text(v) for v in value) + "]"
    return json.dumps(value)


def _reference(raw: bytes) -> dict[str, Any] | str:
    try:
        doc = json.loads(raw, parse_float=Decimal)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return "refused"
    return doc if isinstance(doc, dict) else "refused"


def _decoded(raw: bytes) -> dict[str, Any] | str:
    try:
        return decode_message(raw, 3, "orders", 42)
    except EventDecodeError as exc:
        assert str(exc).startswith("shard 3 orders@42: ")
        return "refused"


@settings(max_examples=300)
@given(documents)
def test_every_document_decodes_as_json_decodes_it(doc: dict[str, Any]) -> None:
    raw = _text(doc).encode()
    decoded = _decoded(raw)
    assert decoded == _reference(raw)
    # Same types too: a fraction is a Decimal, never a float; an integer stays an int.
    assert repr(decoded) == repr(_reference(raw))


@settings(max_examples=300)
@given(st.binary(max_size=64) | documents.map(lambda d: _text(d).encode()[:-1]))
def test_anything_else_is_refused_or_read_exactly_as_json_does(raw: bytes) -> None:
    assert repr(_decoded(raw)) == repr(_reference(raw))


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a": NaN}',
        b'\xef\xbb\xbf{"a": 1}',
        b'{"a": "\\ud800"}',
        b'{"a": 1, "a": 2.50}',
        b'{"a": 123456789012345678901234567890}',
        b'{"a": 1e400}',
        b"[1, 2]",
        b'{"a": "\xff"}',
        b'{"a": 1} x',
        b"",
    ],
)
def test_what_msgspec_and_json_tell_apart_is_decided_as_json_does(raw: bytes) -> None:
    assert repr(_decoded(raw)) == repr(_reference(raw))
