"""anchor.backoff.Backoff: growth, cap, reset and the jitter range, with an injected random."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anchor.backoff import Backoff


def test_grows_by_factor_up_to_the_cap_without_jitter() -> None:
    b = Backoff(initial_s=0.5, cap_s=5.0, jitter=0.0)
    assert [b.next_delay() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert b.attempts == 7
    t = Backoff(initial_s=1.0, cap_s=100.0, factor=3.0, jitter=0.0)
    assert [t.next_delay() for _ in range(5)] == [1.0, 3.0, 9.0, 27.0, 81.0]
    flat = Backoff(initial_s=2.0, cap_s=2.0, factor=1.0, jitter=0.0)
    assert [flat.next_delay() for _ in range(3)] == [2.0, 2.0, 2.0]


def test_reset_starts_over() -> None:
    b = Backoff(initial_s=1.0, cap_s=30.0, jitter=0.0)
    for _ in range(4):
        b.next_delay()
    assert b.base_s == 16.0
    b.reset()
    assert (b.base_s, b.attempts) == (1.0, 0)
    assert b.next_delay() == 1.0


def test_lowering_the_cap_applies_to_the_next_delay() -> None:
    # The ingestor caps a retryable failure lower than one that is not.
    b = Backoff(initial_s=1.0, cap_s=30.0, jitter=0.0)
    assert [b.next_delay() for _ in range(4)] == [1.0, 2.0, 4.0, 8.0]
    b.cap_s = 5.0
    assert b.next_delay() == 5.0


def test_jitter_uses_the_injected_random() -> None:
    full = Backoff(initial_s=8.0, cap_s=8.0, rand=lambda: 0.25)  # full jitter by default
    assert full.next_delay() == 6.0
    equal = Backoff(initial_s=8.0, cap_s=8.0, jitter=0.5, rand=lambda: 0.5)
    assert equal.next_delay() == 6.0
    # The extremes of random(): [0, 1).
    assert Backoff(initial_s=4.0, cap_s=4.0, rand=lambda: 0.0).next_delay() == 4.0
    assert Backoff(initial_s=4.0, cap_s=4.0, rand=lambda: 0.999).next_delay() > 0.0


@given(
    initial=st.floats(0.01, 10.0),
    cap_factor=st.floats(1.0, 100.0),
    jitter=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32),
    n=st.integers(1, 40),
)
def test_every_delay_is_within_its_jitter_band(
    initial: float, cap_factor: float, jitter: float, seed: int, n: int
) -> None:
    cap = initial * cap_factor
    b = Backoff(initial_s=initial, cap_s=cap, jitter=jitter, rand=random.Random(seed).random)
    for _ in range(n):
        base = b.base_s
        assert initial <= base <= cap
        delay = b.next_delay()
        assert base * (1 - jitter) - 1e-9 <= delay <= base
        assert delay >= 0.0


def test_jitter_spreads_delays() -> None:
    rng = random.Random(7)
    delays = [Backoff(initial_s=10.0, cap_s=10.0, rand=rng.random).next_delay() for _ in range(500)]
    assert min(delays) < 1.0 and max(delays) > 9.0  # full jitter covers [0, 10)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_s": 0.0},
        {"initial_s": -1.0},
        {"initial_s": 5.0, "cap_s": 1.0},
        {"factor": 0.5},
        {"jitter": -0.1},
        {"jitter": 1.5},
    ],
)
def test_refuses_bad_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)  # type: ignore[arg-type]
