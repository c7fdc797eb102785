"""Pure parts of the sinks and the event model: value conversion, quoting, positions."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.events import Batch, Event
from workers.sinks.sql import column_value, quote
from workers.sinks.stdout import Stdout


def test_maxwell_values_convert_back_by_column_type() -> None:
    assert column_value("AAEC", "varbinary") == b"\x00\x01\x02"
    assert column_value({"a": [1, Decimal("2.5")]}, "json") == '{"a": [1, 2.5]}'
    assert column_value(["a", "c"], "set") == "a,c"
    assert column_value(Decimal("12.30"), "decimal") == Decimal("12.30")
    assert column_value(None, "blob") is None
    with pytest.raises(ValueError):
        column_value("not base64!", "blob")  # never stored mangled


@given(st.text(min_size=1, max_size=30))
def test_quoted_identifiers_cannot_break_out(name: str) -> None:
    quoted = quote(name)
    assert quoted.startswith("`") and quoted.endswith("`")
    inner = quoted[1:-1]
    assert inner.replace("``", "").count("`") == 0
    assert inner.replace("``", "`") == name


@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 10**6)), max_size=30))
def test_batch_positions_are_one_past_the_last_event_of_each_topic(
    events: list[tuple[str, int]],
) -> None:
    batch = Batch.of(
        0,
        1,
        tuple(
            Event(shard=0, topic=t, position=p, key=None, raw=b"{}", message={}, token=1)
            for t, p in events
        ),
    )
    last: dict[str, int] = {}
    for topic, position in events:
        last[topic] = position + 1
    assert batch.next_positions == last


def test_stdout_lines_name_shard_topic_and_offset() -> None:
    printer = Stdout()
    assert printer.line(3, "orders", 41, b'{"a":1}') == '3 orders@41 {"a":1}'
    assert printer.line(3, "orders", None, b"\xff") == "3 orders \\xff"
