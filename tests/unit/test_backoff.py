"""The one backoff schedule (`shardctl.core.backoff`)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardctl.core.backoff import ETCD_RETRY, Backoff, Exponential


def test_the_etcd_schedule_doubles_from_0_2_to_2_seconds() -> None:
    assert [ETCD_RETRY.delay(n) for n in range(1, 7)] == pytest.approx(
        [0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    )


@given(
    initial=st.floats(0.001, 10),
    cap_factor=st.floats(1, 1000),
    multiplier=st.floats(1, 5),
    jitter=st.floats(0, 1),
    n=st.integers(1, 10**6),
    rand=st.floats(0, 1, exclude_max=True),
)
def test_a_jittered_wait_is_within_the_jitter_below_the_capped_delay(
    initial: float, cap_factor: float, multiplier: float, jitter: float, n: int, rand: float
) -> None:
    schedule = Exponential(initial, initial * cap_factor, multiplier, jitter)
    delay = schedule.delay(n)
    assert initial <= delay <= schedule.max_s
    assert delay * (1 - jitter) <= schedule.jittered(n, lambda: rand) <= delay


@given(st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=20))
def test_a_backoff_lengthens_with_each_failure_and_starts_over_after_reset(
    draws: list[float],
) -> None:
    backoff = Backoff(ETCD_RETRY, rand=iter(draws + draws).__next__)
    first = [backoff.next() for _ in draws]
    backoff.reset()
    again = [backoff.next() for _ in draws]
    assert first == again
    for n, (wait, rand) in enumerate(zip(first, draws, strict=True), start=1):
        assert wait == pytest.approx(ETCD_RETRY.delay(n) * (1 - ETCD_RETRY.jitter * rand))


def test_processes_that_fail_together_do_not_retry_together() -> None:
    waits = {round(Backoff().next(), 6) for _ in range(50)}
    assert len(waits) > 1  # 50 identical draws from U[0, 1) do not happen


@pytest.mark.parametrize(
    ("args", "setting"),
    [
        ((1.0, 0.5), "initial_s <= max_s"),
        ((-1.0, 1.0), "initial_s <= max_s"),
        ((0.1, 1.0, 0.5), "multiplier"),
        ((0.1, 1.0, 2.0, 1.5), "jitter"),
    ],
)
def test_a_bad_schedule_is_refused_naming_what_is_wrong(
    args: tuple[float, ...], setting: str
) -> None:
    with pytest.raises(ValueError, match=setting):
        Exponential(*args)
