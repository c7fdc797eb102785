"""The backoff before a failed shard is acquired again."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from workers.ownership import FailureBackoff


def test_failure_backoff_doubles_up_to_its_cap() -> None:
    backoff = FailureBackoff(initial_s=1.0, max_s=10.0)
    assert [backoff.delay(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


@given(
    initial=st.floats(min_value=0.01, max_value=10),
    cap=st.floats(min_value=10, max_value=600),
    failures=st.integers(min_value=1, max_value=10_000),
)
def test_failure_backoff_never_shrinks_and_never_passes_its_cap(
    initial: float, cap: float, failures: int
) -> None:
    backoff = FailureBackoff(initial_s=initial, max_s=cap)
    assert initial <= backoff.delay(failures) <= cap
    assert backoff.delay(failures) <= backoff.delay(failures + 1)
